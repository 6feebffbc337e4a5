"""The analysis modes of main.py: restore a trained VAE and analyse its factors.

Each mode takes the experiment config and a run directory written by
`--mode=train` (`training.train.train_and_evaluate`) and writes into it:

  --mode=encode    factors/factors_<split>.npz  mu, sd, ids (+ true factors
                                                and labels of simulated data)
                   factors/factors_<split>.csv  the same as a flat table
                   factors/summary.json         KL per dim, active factors
                   factors/kl_per_dim.png       KL bar chart
  --mode=traverse  traversals/factor_<d>.png    12-lead traversal per active
                                                factor (population mean)
                   traversals/all_active_factors.png
                   traversals/record_<id>_factors.png  one record's factors
                   traversals/traversals.npz, summary.json
  --mode=evaluate  disentanglement/...          metrics (disentanglement_report)

Inputs are normalised as in training (the run's config.json keeps the
normaliser) and decoded beats are mapped back to mV before plotting. The
knobs are `config.analysis` (see configs/factorecg_paper.py). These modes run
in one process, data-parallel over its devices.
"""

import functools
import json
import os
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from factorecg_jax import console
from factorecg_jax.analysis import disentanglement_report
from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.analysis import interventions
from factorecg_jax.analysis import ranking
from factorecg_jax.data import input_pipeline
from factorecg_jax.data import simulator
from factorecg_jax.training import checkpoints
from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import train
from factorecg_jax.viz import ecg_plot

FACTORS_DIR = 'factors'
TRAVERSALS_DIR = 'traversals'
# Record fields kept with the factors when the source has them (simulated
# and synthetic_ecg data have all three).
EXTRA_FIELDS = ('id', 'factors', 'labels')
TRAVERSAL_SCALES = ('population', 'prior')


def _check_single_process(mode: str) -> None:
  if jax.process_count() > 1:
    raise NotImplementedError(
        f'--mode={mode} runs in one process (it uses every device of that '
        f'process); got {jax.process_count()} processes.'
    )


def read_run_config(workdir: str) -> dict[str, Any] | None:
  """The run's `config.json` (written by training), or None if absent."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _json_normal(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples become lists, ...)."""
  return json.loads(json.dumps(value, default=str))


def _check_model_matches(
    config: ml_collections.ConfigDict, saved: dict[str, Any] | None,
    workdir: str
) -> None:
  """Raises if `config`'s model differs from the one the run trained."""
  if not saved or 'model' not in saved:
    return
  ours = _json_normal(config.model.to_dict())
  theirs = saved['model']
  diffs = [
      f'{k}: {theirs.get(k)!r} (run) vs {ours.get(k)!r} (config)'
      for k in sorted(set(ours) | set(theirs))
      if ours.get(k) != theirs.get(k)
  ]
  if config.get('model_name') != saved.get('model_name'):
    diffs.insert(0, f"model_name: {saved.get('model_name')!r} (run) vs "
                 f"{config.get('model_name')!r} (config)")
  if diffs:
    raise ValueError(
        f'config.model differs from the model trained in {workdir} '
        f'(config.json): {"; ".join(diffs)}. Pass the config the run was '
        'trained with.'
    )


def _restore(
    config: ml_collections.ConfigDict, workdir: str,
    step: int | None = None
) -> tuple[Any, Any, int]:
  """(model, params, step) of a checkpoint in `workdir` (default latest)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory) or not any(
      name.isdigit() for name in os.listdir(directory)
  ):
    raise FileNotFoundError(
        f'No checkpoint in {directory}: train first with --mode=train '
        f'--workdir={workdir}.'
    )
  saved = read_run_config(workdir)
  _check_model_matches(config, saved, workdir)
  model = train._build_model(config)  # pylint: disable=protected-access
  # The restore target is the train state the run saved: its optimizer
  # state's structure follows the run's own optim settings.
  optim = ml_collections.ConfigDict(
      saved['optim'] if saved and 'optim' in saved else config.optim.to_dict()
  )
  # The run's resolved step count (epoch-based configs say 0 here).
  num_steps = int((saved or {}).get('train', {}).get('num_steps', 0)
                  or config.train.num_steps or 1)
  tx = state_lib.create_optimizer(
      optim, state_lib.create_learning_rate_fn(optim, num_steps)
  )
  input_shape = (
      1, getattr(model, 'length', simulator.BEAT_LEN),
      getattr(model, 'leads', len(simulator.LEADS)),
  )
  mesh = sharding.make_mesh()
  # Only the shapes of the train state are needed: tracing its creation
  # abstractly compiles and allocates nothing.
  abstract_state = jax.eval_shape(
      lambda rng: state_lib.create_train_state(
          rng, model, tx, input_shape, mesh
      )[0],
      jax.random.key(0),
  )
  replicated = sharding.replicated(mesh)
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      abstract_state,
  )
  manager = checkpoints.create_manager(workdir)
  try:
    step = manager.latest_step() if step is None else step
    state = checkpoints.restore(manager, abstract_state, step)
  finally:
    manager.close()
  logging.info('Restored %s at step %d.', directory, step)
  return model, state.params, int(step)


def restore_model(
    config: ml_collections.ConfigDict, workdir: str,
    step: int | None = None
) -> tuple[Any, Any]:
  """Restores a trained model's parameters from a run directory.

  Args:
    config: the experiment config the run was trained with (its `model`
      must match the run's config.json).
    workdir: run directory with `checkpoints/`.
    step: checkpoint to restore (default the latest).

  Returns:
    `(model, params)`: the Linen module (`MODELS[config.model_name]`) and
    its parameters, replicated over all devices; call as
    `model.apply({'params': params}, x, method='encode')`.

  Raises:
    FileNotFoundError: if the run has no checkpoint.
    ValueError: if `config.model` differs from the run's.
  """
  model, params, _ = _restore(config, workdir, step)
  return model, params


def load_normalizer(workdir: str) -> input_pipeline.Normalizer | None:
  """The input normaliser training used (config.json), or None if unknown."""
  saved = read_run_config(workdir) or {}
  spec = saved.get('run_info', {}).get('data', {}).get('normalizer')
  if not spec:
    return None
  return input_pipeline.Normalizer(
      spec['kind'], np.asarray(spec['mean'], np.float32),
      np.asarray(spec['std'], np.float32),
  )


def training_normalizer(
    config: ml_collections.ConfigDict, workdir: str
) -> input_pipeline.Normalizer:
  """The normaliser of the run's inputs (identity if it used none).

  Raises:
    ValueError: if config.json lacks it but `config.data` normalises.
  """
  normalizer = load_normalizer(workdir)
  if normalizer is not None:
    return normalizer
  if config.data.get('normalization', 'per_lead') != 'none':
    raise ValueError(
        f'{workdir}/config.json records no input normaliser, but '
        f'config.data.normalization={config.data.normalization!r}: the '
        'inputs cannot be normalised as in training.'
    )
  return input_pipeline.identity_normalizer()


def _batch_size(config: ml_collections.ConfigDict) -> int:
  return int(
      config.analysis.get('batch_size', 0)
      or config.train.get('eval_batch_size', 0)
      or config.train.batch_size
  )


def _analysis_source(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[Any, input_pipeline.Normalizer, str, tuple[str, ...]]:
  """The split to analyse, the training normaliser, input key and fields.

  Returns:
    (source, normalizer, input_key, extra_keys): `config.analysis.split`
    (its first `analysis.num_records` records; 0 or less: all) with the
    record fields of `EXTRA_FIELDS` the source has.
  """
  analysis = config.analysis
  split = analysis.get('split', 'validation')
  num_records = int(analysis.get('num_records', 0))
  normalizer = training_normalizer(config, workdir)
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.eval_split = split
  data.prefetch = 0  # the training iterator built alongside is never read
  data.normalization = 'none'  # the run's own statistics are used instead
  if data.source == 'simulated':
    if num_records > 0:
      data.num_eval = num_records
    elif split == 'train':
      data.num_eval = data.num_train
  else:
    data.num_eval = max(num_records, 0)  # 0 reads the whole split
  base = tuple(k for k in tuple(data.get('extra_keys', ()) or ())
               if k not in EXTRA_FIELDS)
  # Non-synthetic TFDS data sets may lack the simulator's fields.
  candidates = [EXTRA_FIELDS, ('id',), ()]
  for extras in candidates:
    data.extra_keys = base + extras
    try:
      _, _, info = input_pipeline.get_datasets(
          data, global_batch_size=_batch_size(config), seed=config.seed
      )
      break
    except KeyError as e:
      if extras == candidates[-1]:
        raise
      logging.info('Record fields %s not available (%s).', extras, e)
  return info['eval_source'], normalizer, info['input_key'], extras + base


def _denormalizing_decode_fn(model, params, normalizer):
  """`z [m, D] -> beats [m, T, L]` in mV, jitted once per batch size."""
  mean = jnp.asarray(normalizer.mean)
  std = jnp.asarray(normalizer.std)

  @jax.jit
  def decode(p, z):
    out = model.apply({'params': p}, z, method='decode')
    if isinstance(out, (tuple, list)):
      out = out[0]
    return out * std + mean

  # Parameters stay an argument of the compiled function, not a constant.
  return functools.partial(decode, params)


def _encode_apply(model):
  def encode(params, x):
    return model.apply({'params': params}, x, method='encode')
  return encode


def _factors_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, FACTORS_DIR, f'factors_{split}.npz')


def _plot_kl(kl: np.ndarray, threshold: float, path: str) -> str:
  """Bar chart of the mean KL per latent, active ones highlighted."""
  # pylint: disable-next=g-import-not-at-top
  from matplotlib import figure as mfigure

  num_latents = len(kl)
  active = kl > threshold
  fig = mfigure.Figure(figsize=(max(4.0, 1.5 + 0.22 * num_latents), 3.2))
  ax = fig.add_subplot()
  floor = max(threshold * 1e-2, 1e-6)  # log axis: show ~0 KL as a stub
  ax.bar(np.arange(num_latents), np.maximum(kl, floor),
         color=np.where(active, 'tab:blue', '0.7'))
  ax.axhline(threshold, color='tab:red', linestyle='--', linewidth=1,
             label=f'threshold {threshold:g} nats')
  ax.set_yscale('log')
  ax.set_xticks(np.arange(num_latents))
  ax.tick_params(axis='x', labelsize=6)
  ax.set_xlabel('latent dimension')
  ax.set_ylabel('mean KL to N(0, 1) (nats)')
  ax.set_title(f'{int(active.sum())} of {num_latents} factors active')
  ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  return str(ecg_plot.save_figure(fig, path))


def _encode_and_save(
    config: ml_collections.ConfigDict, workdir: str, model, params,
    step: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Encodes the analysis split and writes the factors files."""
  analysis = config.analysis
  split = analysis.get('split', 'validation')
  threshold = float(analysis.kl_threshold)
  source, normalizer, input_key, extras = _analysis_source(config, workdir)
  batch_size = _batch_size(config)
  mesh = sharding.make_mesh()
  # Data-parallel over the devices when the batch splits evenly.
  rows = (sharding.rows(mesh) if batch_size % mesh.devices.size == 0
          else None)
  batches = input_pipeline.eval_iterator(
      source, global_batch_size=batch_size, keys=('ecg',) + extras,
      process_index=0, process_count=1, normalizer=normalizer,
      input_key=input_key,
      prefetch_size=int(config.data.get('prefetch', 0)),
  )
  with console.Progress(-(-len(source) // batch_size), '  encode',
                        unit='batches', rate_scale=batch_size,
                        rate_unit='ECGs') as progress:
    out = factors_lib.encode_dataset(
        _encode_apply(model), batches, params=params, sharding=rows,
        progress=progress,
    )
  kl = factors_lib.kl_per_dim(out['mu'], out['sd'])
  active = factors_lib.active_factors(kl, threshold)
  num_latents = out['mu'].shape[1]

  saved = dict(mu=out['mu'], sd=out['sd'], index=out['index'],
               ids=out.get('id', out['index']), kl_per_dim=kl,
               active_factors=active, kl_threshold=threshold, step=step,
               split=split)
  factor_names = label_names = None
  if 'factors' in out:
    saved['factors'] = out['factors']
    if out['factors'].shape[1] == len(simulator.FACTOR_NAMES):
      factor_names = list(simulator.FACTOR_NAMES)
      saved['factor_names'] = np.asarray(factor_names)
  if 'labels' in out:
    saved['labels'] = out['labels']
    if out['labels'].shape[1] == len(simulator.LABEL_NAMES):
      label_names = list(simulator.LABEL_NAMES)
      saved['label_names'] = np.asarray(label_names)
  npz_path = factors_lib.save_factors(_factors_path(workdir, split), saved)
  csv_path = factors_lib.write_csv(
      npz_path[:-len('.npz')] + '.csv',
      factors_lib.factors_table(saved, factor_names=factor_names,
                                label_names=label_names),
  )
  folder = os.path.join(workdir, FACTORS_DIR)
  kl_path = _plot_kl(kl, threshold, os.path.join(folder, 'kl_per_dim.png'))
  summary = dict(
      split=split, num_records=int(len(out['mu'])), latents=num_latents,
      checkpoint_step=step, kl_threshold=threshold,
      num_active=int(len(active)), active_factors=active.tolist(),
      kl_per_dim=kl.tolist(), normalization=normalizer.kind,
      fields=sorted(saved),
      files=dict(factors=npz_path, table=csv_path, kl_plot=kl_path),
  )
  with open(os.path.join(folder, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  console.info(f'  {len(active)} of {num_latents} factors active '
               f'(KL > {threshold:g} nats) on {len(out["mu"])} {split} '
               'records.')
  return saved, summary


def encode_mode(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """--mode=encode: factors of `config.analysis.split`, with KL selection.

  Encodes the split's first `analysis.num_records` records with the latest
  checkpoint (inputs normalised as in training) and writes
  `<workdir>/factors/`: `factors_<split>.npz` (mu, sd [n, D] float32, ids,
  index [n], kl_per_dim [D], active_factors, and for simulated data the true
  factors [n, 14] and labels [n, 16] with their names), the same as a CSV,
  `summary.json` and `kl_per_dim.png`. Prints how many factors are active.

  Args:
    config: experiment config (the run's; see `config.analysis`).
    workdir: run directory written by --mode=train.

  Returns:
    The summary written to summary.json.
  """
  _check_single_process('encode')
  model, params, step = _restore(config, workdir)
  _, summary = _encode_and_save(config, workdir, model, params, step)
  return summary


def _load_or_encode(config, workdir, model, params, step):
  """The factors of the analysis split, re-encoded if missing or stale."""
  analysis = config.analysis
  path = _factors_path(workdir, analysis.get('split', 'validation'))
  if os.path.exists(path):
    saved = factors_lib.load_factors(path)
    want = int(analysis.get('num_records', 0))
    if int(saved['step']) == step and (want <= 0 or len(saved['mu']) == want):
      return saved
    logging.info('Factors in %s are stale; encoding again.', path)
  saved, _ = _encode_and_save(config, workdir, model, params, step)
  return saved


def traverse_mode(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """--mode=traverse: traversal figures of the active factors.

  Model level: the population mean of the factors (of the encoded split)
  with one active factor set to `analysis.traversal_sds` population SDs
  (`analysis.traversal_scale='prior'`: prior SDs) and decoded, one 12-lead
  overlay per factor and a grid of all active factors over
  `analysis.traversal_leads`. Individual level: the same for the record
  `analysis.record_index` of the split (its factors as the start). Uses the
  split's factors file if it is up to date, else encodes first.

  Args:
    config: experiment config (the run's).
    workdir: run directory written by --mode=train.

  Returns:
    The summary written to `<workdir>/traversals/summary.json`.

  Raises:
    ValueError: if the record is not among the encoded records.
  """
  _check_single_process('traverse')
  analysis = config.analysis
  model, params, step = _restore(config, workdir)
  saved = _load_or_encode(config, workdir, model, params, step)
  mu = saved['mu']
  threshold = float(analysis.kl_threshold)
  kl = factors_lib.kl_per_dim(mu, saved['sd'])
  dims = factors_lib.active_factors(kl, threshold)
  if not len(dims):
    logging.warning('No factor has KL > %g nats; traversing all %d.',
                    threshold, len(kl))
    dims = ranking.argsort_descending(kl)
  sds = np.asarray(tuple(analysis.traversal_sds), np.float64)
  leads = tuple(analysis.traversal_leads)
  kind = analysis.get('traversal_scale', 'population')
  if kind not in TRAVERSAL_SCALES:
    raise ValueError(f'analysis.traversal_scale={kind!r}; use one of '
                     f'{TRAVERSAL_SCALES}.')
  scale = (factors_lib.population_sd(mu) if kind == 'population'
           else np.ones(mu.shape[1]))
  record = int(analysis.record_index)
  where = np.flatnonzero(saved['index'] == record)
  if not len(where):
    raise ValueError(
        f'analysis.record_index={record} is not among the {len(mu)} encoded '
        f"records of split {saved['split']!s} (indices "
        f"{saved['index'].min()}..{saved['index'].max()})."
    )
  record_id = saved['ids'][where[0]]
  normalizer = training_normalizer(config, workdir)
  decode_fn = _denormalizing_decode_fn(model, params, normalizer)
  population = factors_lib.population_traversal(
      decode_fn, mu, dims, sds, scale=scale
  )
  individual = factors_lib.individual_traversal(
      decode_fn, mu[where[0]], dims, sds, scale
  )

  folder = os.path.join(workdir, TRAVERSALS_DIR)
  unit = f'{kind} SD'
  paths = {}
  progress = console.Progress(len(dims) + 2, '  traversal figures',
                              unit='figures')
  for i, d in enumerate(dims):
    progress.update(1)
    fig = ecg_plot.plot_traversal(
        population[i], sds, factor_name=f'factor {d}', value_label=unit,
        title=(f'Factor {d} (KL {kl[d]:.3g} nats): population mean, '
               f'factor moved by {sds.min():g}..{sds.max():g} {unit}'),
    )
    paths[f'factor_{d:02d}'] = str(ecg_plot.save_figure(
        fig, os.path.join(folder, f'factor_{d:02d}.png'), dpi=100))
  rows = {f'factor {d}': population[i] for i, d in enumerate(dims)}
  fig = ecg_plot.plot_traversal_grid(
      rows, sds, leads=leads, value_label=unit,
      title=f'{len(dims)} factors: population mean, one factor moved')
  paths['all_active_factors'] = str(ecg_plot.save_figure(
      fig, os.path.join(folder, 'all_active_factors.png'), dpi=100))
  progress.update(1)
  rows = {f'factor {d}': individual[i] for i, d in enumerate(dims)}
  fig = ecg_plot.plot_traversal_grid(
      rows, sds, leads=leads, value_label=unit,
      title=f'Record {record_id}: its factors, one factor moved')
  # Record ids of real data sets may hold characters unfit for file names.
  name = 'record_' + re.sub(r'[^A-Za-z0-9_.-]', '_', str(record_id))
  name += '_factors'
  paths[name] = str(ecg_plot.save_figure(
      fig, os.path.join(folder, f'{name}.png'), dpi=100))
  progress.update(1)
  progress.close()

  paths['arrays'] = factors_lib.save_factors(
      os.path.join(folder, 'traversals.npz'),
      dict(population=population, individual=individual, dims=dims,
           sds=sds, scale=scale, center=mu.mean(axis=0),
           record_factors=mu[where[0]], record_index=record,
           record_id=record_id, kl_per_dim=kl, step=step),
  )
  summary = dict(
      checkpoint_step=step, split=str(saved['split']),
      num_records=int(len(mu)), kl_threshold=threshold,
      dims=[int(d) for d in dims], num_active=int(np.sum(kl > threshold)),
      sds=sds.tolist(), traversal_scale=kind, record_index=record,
      record_id=np.asarray(record_id).item(), leads=list(leads),
      files=paths,
  )
  with open(os.path.join(folder, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  console.info(f'  traversed {len(dims)} factors; figures in {folder}.')
  return summary


def evaluate_mode(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """--mode=evaluate: disentanglement metrics of the trained encoder.

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
    `evaluate_run`'s result ('scores', 'names', 'best', 'paths').
  """
  _check_single_process('evaluate')
  analysis = config.analysis
  model, params, _ = _restore(config, workdir)
  normalizer = training_normalizer(config, workdir)
  # evaluate_run feeds beats in mV: normalise inside the jitted encoder.
  mean, std = jnp.asarray(normalizer.mean), jnp.asarray(normalizer.std)
  encode_fn = disentanglement_report.make_encode_fn(
      model.apply, {'params': params}, batch_size=_batch_size(config),
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
  return result
