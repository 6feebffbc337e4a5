"""Stage `evaluate`: disentanglement metrics of the trained encoder.

MIG, DCI, SAP, modularity, explicitness, BetaVAE/FactorVAE scores and the
factor names (analysis/disentanglement_report.py), written to
`<workdir>/disentanglement/`.
"""

from typing import Any

from absl import logging
import jax.numpy as jnp
import ml_collections

from factorecg_jax import stages
from factorecg_jax.analysis import disentanglement_report
from factorecg_jax.analysis import interventions
from factorecg_jax.stages import _common
from factorecg_jax.stages import encode


@stages.register('evaluate', requires=(stages.TRAIN,), order=40,
                 folder='disentanglement', applies=encode.is_vae,
                 description='disentanglement metrics and factor names')
def run(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Stage evaluate: disentanglement metrics of the trained encoder.

  Encodes simulated records (ground-truth factors known; simulator mode and
  seed of `config.data`, so the metric's training records are the VAE's own
  first training records and its test records the first validation ones),
  `analysis.metrics_num_train` / `metrics_num_test` of them, and runs
  `disentanglement_report.evaluate_run` with the simulator as the generator
  of the intervention scores (`analysis.interventions`,
  `analysis.intervention_*` sizes). Writes `<workdir>/disentanglement/`.

  Args:
    config: experiment config (the run's).
    workdir: run directory written by --mode=train.

  Returns:
    The stage summary: scalars are `evaluate_run`'s scores, the table
    `factor_names` its best association per active factor, `encoded` the
    held-out R^2 of each true factor from the active factors (linear and
    boosted: what the factors carry at all, however entangled).
  """
  _common.check_single_process('evaluate')
  analysis = config.analysis
  model, params, _ = _common.restore(config, workdir)
  normalizer = _common.training_normalizer(config, workdir)
  # evaluate_run feeds beats in mV: normalise inside the jitted encoder.
  mean, std = jnp.asarray(normalizer.mean), jnp.asarray(normalizer.std)
  encode_fn = disentanglement_report.make_encode_fn(
      model.apply, {'params': params}, batch_size=_common.batch_size(config),
      preprocess=(None if normalizer.kind == 'none'
                  else lambda x: (x - mean) / std),
  )
  mode = config.data.get('mode', 'uniform')
  if config.data.source != 'simulated':
    logging.info('Disentanglement needs true factors: evaluating on '
                 'simulated records (mode %r).', mode)
  intervention_kwargs = {
      k[len('intervention_'):]: analysis[k] for k in analysis
      if k.startswith('intervention_')
  }
  result = disentanglement_report.evaluate_run(
      workdir, encode_fn=encode_fn,
      num_train=int(analysis.metrics_num_train),
      num_test=int(analysis.metrics_num_test), mode=mode,
      seed=int(config.data.get('seed', 0)),
      interventions_enabled=bool(analysis.get('interventions', True)),
      generator=interventions.simulator_generator(mode),
      intervention_kwargs=intervention_kwargs,
  )
  scores = result['scores']
  names = [b['label'] for b in result['best']]
  headline = {label: float(scores[key]) for key, label in (
      ('mig', 'MIG'), ('dci_disentanglement', 'DCI disentanglement'),
      ('sap', 'SAP'), ('beta_vae_eval_accuracy', 'BetaVAE accuracy'),
      ('factor_vae_eval_accuracy', 'FactorVAE accuracy')) if key in scores}
  headline['factor names'] = (f'{len(set(names))} distinct over '
                              f'{len(names)} factors')
  paths = result['paths']
  return stages.summary(
      scalars=scores, headline=headline,
      tables=dict(factor_names=[
          dict(code=b['code'], column=b['column'], label=b['label'],
               rho=b['rho']) for b in result['best']],
                  encoded=result['encoded']),
      figures={k: paths[k] for k in ('spearman', 'importance', 'mutual_info',
                                     'encoded') if k in paths},
      files={k: paths[k] for k in ('json', 'markdown', 'matrices')
             if k in paths},
      details=dict(names=result['names']))
