"""Helpers shared by the VAE factor stages (encode, traverse, evaluate).

Restoring the trained VAE of a run, the analysis split read as training read
it (inputs normalised with the run's own normaliser), batched encoding to the
factors file `<workdir>/factors/factors_<split>.npz`, and a decoder that maps
outputs back to mV. Stages run in one process, data-parallel over its
devices. Not a stage itself (the leading underscore keeps `discover` away).
"""

import functools
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from factorecg_jax import console
from factorecg_jax import models
from factorecg_jax import stages
from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.data import input_pipeline
from factorecg_jax.data import simulator
from factorecg_jax.training import restore as restore_lib
from factorecg_jax.training import sharding
from factorecg_jax.viz import ecg_plot

FACTORS_DIR = 'factors'
TRAVERSALS_DIR = 'traversals'
# Record fields kept with the factors when the source has them (simulated
# and synthetic_ecg data have all three).
EXTRA_FIELDS = ('id', 'factors', 'labels')
TRAVERSAL_SCALES = ('population', 'prior')


def check_single_process(mode: str) -> None:
  if jax.process_count() > 1:
    raise NotImplementedError(
        f'--mode={mode} runs in one process (it uses every device of that '
        f'process); got {jax.process_count()} processes.'
    )


read_run_config = stages.read_run_config


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
  name = config.get('model_name')
  # A setting a newer config names at the model's own default (e.g.
  # `dropout_bits=32`) matches a run trained before the key existed.
  diffs = [
      f'{k}: {theirs.get(k)!r} (run) vs {ours.get(k)!r} (config)'
      for k in sorted(set(ours) | set(theirs))
      if ours.get(k) != theirs.get(k)
      and not (k not in theirs and models.is_default(name, k, ours[k]))
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


def restore(
    config: ml_collections.ConfigDict, workdir: str,
    step: int | None = None
) -> tuple[Any, Any, int]:
  """(model, params, step) of a checkpoint in `workdir` (default latest).

  `training.restore.restore` reads the model, optimizer and input shape
  from the run; this adds the check that `config` describes that model.
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory) or not any(
      name.isdigit() for name in os.listdir(directory)
  ):
    raise FileNotFoundError(
        f'No checkpoint in {directory}: train first with --mode=train '
        f'--workdir={workdir}.'
    )
  _check_model_matches(config, read_run_config(workdir), workdir)
  restored = restore_lib.restore(workdir, step=step)
  logging.info('Restored %s at step %d.', directory, restored.step)
  return restored.model, restored.variables['params'], int(restored.step)


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
  model, params, _ = restore(config, workdir, step)
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


def batch_size(config: ml_collections.ConfigDict) -> int:
  return int(
      config.analysis.get('batch_size', 0)
      or config.train.get('eval_batch_size', 0)
      or config.train.batch_size
  )


def analysis_source(
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
          data, global_batch_size=batch_size(config), seed=config.seed
      )
      break
    except KeyError as e:
      if extras == candidates[-1]:
        raise
      logging.info('Record fields %s not available (%s).', extras, e)
  return info['eval_source'], normalizer, info['input_key'], extras + base


def denormalizing_decode_fn(model, params, normalizer):
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


def encode_apply(model):
  def encode(params, x):
    return model.apply({'params': params}, x, method='encode')
  return encode


def factors_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, FACTORS_DIR, f'factors_{split}.npz')


def plot_kl(kl: np.ndarray, threshold: float, path: str) -> str:
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


def encode_and_save(
    config: ml_collections.ConfigDict, workdir: str, model, params,
    step: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Encodes the analysis split and writes the factors files."""
  analysis = config.analysis
  split = analysis.get('split', 'validation')
  threshold = float(analysis.kl_threshold)
  source, normalizer, input_key, extras = analysis_source(config, workdir)
  rows_per_batch = batch_size(config)
  mesh = sharding.make_mesh()
  # Data-parallel over the devices when the batch splits evenly.
  rows = (sharding.rows(mesh) if rows_per_batch % mesh.devices.size == 0
          else None)
  batches = input_pipeline.eval_iterator(
      source, global_batch_size=rows_per_batch, keys=('ecg',) + extras,
      process_index=0, process_count=1, normalizer=normalizer,
      input_key=input_key,
      prefetch_size=int(config.data.get('prefetch', 0)),
  )
  with console.Progress(-(-len(source) // rows_per_batch), '  encode',
                        unit='batches', rate_scale=rows_per_batch,
                        rate_unit='ECGs') as progress:
    out = factors_lib.encode_dataset(
        encode_apply(model), batches, params=params, sharding=rows,
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
  npz_path = factors_lib.save_factors(factors_path(workdir, split), saved)
  csv_path = factors_lib.write_csv(
      npz_path[:-len('.npz')] + '.csv',
      factors_lib.factors_table(saved, factor_names=factor_names,
                                label_names=label_names),
  )
  folder = os.path.join(workdir, FACTORS_DIR)
  kl_path = plot_kl(kl, threshold, os.path.join(folder, 'kl_per_dim.png'))
  summary = stages.summary(
      scalars=dict(num_active=int(len(active)), latents=num_latents,
                   num_records=int(len(out['mu'])), kl_threshold=threshold),
      headline={'active factors': f'{len(active)} of {num_latents} (KL > '
                                  f'{threshold:g} nats)',
                'records encoded': int(len(out['mu']))},
      tables=dict(kl_per_dim=[
          dict(dim=d, kl=float(kl[d]), active=bool(d in set(active)))
          for d in range(num_latents)]),
      figures=dict(kl_per_dim=kl_path),
      files=dict(factors=npz_path, table=csv_path),
      details=dict(split=split, active_factors=active.tolist(),
                   kl_per_dim=kl.tolist(), normalization=normalizer.kind,
                   fields=sorted(saved)),
  )
  console.info(f'  {len(active)} of {num_latents} factors active '
               f'(KL > {threshold:g} nats) on {len(out["mu"])} {split} '
               'records.')
  return saved, summary


def load_or_encode(config, workdir, model, params, step):
  """The factors of the analysis split, re-encoded if missing or stale."""
  analysis = config.analysis
  path = factors_path(workdir, analysis.get('split', 'validation'))
  if os.path.exists(path):
    saved = factors_lib.load_factors(path)
    want = int(analysis.get('num_records', 0))
    if int(saved['step']) == step and (want <= 0 or len(saved['mu']) == want):
      return saved
    logging.info('Factors in %s are stale; encoding again.', path)
  saved, _ = encode_and_save(config, workdir, model, params, step)
  return saved


