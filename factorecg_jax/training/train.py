"""The one training loop: any model, any task loss, 1 CPU to many hosts.

`train_and_evaluate(config, workdir)` reads top to bottom in big_vision's
order: mesh -> data -> model and optimizer -> sharded init -> jitted steps ->
restore -> loop -> final eval and checkpoint. A task (`losses.TASKS`) supplies
the loss and the evaluation; the loop knows no model. Models with mutable
state (BatchNorm) train in the same loop: the state's `batch_stats` go into
the task's loss and come back updated. A task may ask for per-example arrays
of the whole eval split (`Task.collect`); the final eval's are saved to
`<workdir>/eval_predictions.npz`. The same workdir
resumes a killed run from its latest checkpoint, and because the data
iterator restarts at that step and step keys are `fold_in(rng, step)`, a
resumed run is bit-identical to an uninterrupted one.
"""

import dataclasses
import datetime
import functools
import importlib.metadata
import inspect
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from factorecg_jax import console
from factorecg_jax import models
from factorecg_jax.data import input_pipeline
from factorecg_jax.training import checkpoints
from factorecg_jax.training import losses
from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import writer as writer_lib

TrainState = state_lib.TrainState
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

# Metrics whose non-finite value stops training (the rest are only logged).
GUARDED_METRICS = ('loss', 'l2_grads', 'l2_params')
# Eval metrics shown on the console (all of them go to metrics.jsonl).
EVAL_HEADLINE = ('loss', 'r2', 'mse', 'kl', 'active_units', 'auroc',
                 'c_index', 'auroc_1y', 'mae')
# The collected arrays of the final evaluation (process 0 writes it).
PREDICTIONS_FILE = 'eval_predictions.npz'


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    loss_fn: Callable[..., tuple[jax.Array, tuple[Mapping[str, jax.Array],
                                                  Mapping[str, Any]]]],
    learning_rate_fn: optax.Schedule | None = None,
    pass_step: bool = False,
) -> tuple[TrainState, Metrics]:
  """One optimizer step on a global batch; pure, jitted once by the caller.

  Args:
    state: current train state (replicated).
    batch: dict of global arrays `[batch, ...]` sharded by rows, e.g. `ecg`
      `[batch, 600, 12]` float32 mV and `mask` `[batch]` float32.
    rng: base PRNG key of the run; the step number is folded in, so every
      step draws fresh randomness that is reproducible after a restore.
    loss_fn: `loss_fn(params, batch, rng, *, model_state) -> (loss,
      (metrics, new_model_state))`, the task loss with the model and loss
      settings bound; a mask-weighted mean over the batch, hence already
      global (no cross-device reduction needed). `new_model_state`'s
      'batch_stats' (if any) replace the state's.
    learning_rate_fn: optional schedule, logged as `learning_rate`.
    pass_step: call `loss_fn(..., step=state.step)` (losses with a
      schedule, e.g. the VAE's KL warm-up).

  Returns:
    `(new_state, metrics)`; metrics is a flat dict of scalars: the task's
    metrics, `loss`, and the global L2 norms `l2_grads`, `l2_updates` and
    `l2_params` (of the updated parameters, i.e. of what a checkpoint would
    save) which flag divergence early.
  """
  step_rng = jax.random.fold_in(rng, state.step)

  extra = dict(step=state.step) if pass_step else {}

  def objective(params):
    return loss_fn(params, batch, step_rng, model_state=state.model_state,
                   **extra)

  (loss, (aux, new_model_state)), grads = jax.value_and_grad(
      objective, has_aux=True
  )(state.params)
  new_state = state.apply_gradients(
      grads=grads,
      batch_stats=new_model_state.get('batch_stats', state.batch_stats),
  )
  updates = jax.tree.map(jnp.subtract, new_state.params, state.params)
  metrics = dict(aux)
  metrics.update(
      loss=loss,
      l2_grads=optax.tree.norm(grads),
      l2_updates=optax.tree.norm(updates),
      l2_params=optax.tree.norm(new_state.params),
  )
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    eval_fn: Callable[..., Mapping[str, jax.Array]],
    collect: tuple[str, ...] = (),
) -> tuple[Metrics, dict[str, jax.Array]]:
  """Masked sums of the task's per-example eval outputs over one batch.

  Padded rows (`mask == 0`, the filler of the last eval batch) contribute
  nothing, not even a NaN; the caller divides the summed sums by the summed
  `num_examples`, so every real example weighs the same. Outputs named in
  `collect` are returned per example instead (with the batch's `mask`, so
  that the caller can drop the padding).

  Args:
    state: train state.
    batch: global eval batch with `mask` `[batch]` float32 (1 = real row).
    eval_fn: `eval_fn(params, batch, *, model_state) -> {name: [batch,
      ...]}`.
    collect: names of `eval_fn` outputs or batch keys to return per example.

  Returns:
    `(sums, rows)`: `{name: sum over real rows, shape [...]}` plus
    `num_examples` (scalar); `{name: [batch, ...]}` for the `collect`
    names plus 'mask' (empty if nothing is collected).

  Raises:
    KeyError: if a `collect` name is neither an output nor a batch key.
  """
  outputs = eval_fn(state.params, batch, model_state=state.model_state)
  rows = {}
  for name in collect:
    if name in outputs:
      rows[name] = outputs[name]
    elif name in batch:
      rows[name] = batch[name]
    else:
      raise KeyError(
          f'Cannot collect {name!r}: not an eval output '
          f'({sorted(outputs)}) nor a batch key ({sorted(batch)}).'
      )
  if rows:
    rows['mask'] = batch['mask']
  real = batch['mask'] > 0
  sums = {}
  for name, value in outputs.items():
    if name in collect:
      continue
    value = jnp.asarray(value, jnp.float32)
    keep = real.reshape(real.shape + (1,) * (value.ndim - 1))
    sums[name] = jnp.sum(jnp.where(keep, value, 0.0), axis=0)
  sums['num_examples'] = jnp.sum(real.astype(jnp.float32))
  return sums, rows


def _gather_rows(rows: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """Global row-sharded arrays as host numpy arrays, on every process."""
  if jax.process_count() > 1:
    # Rows of other processes' devices are not addressable here.
    # pylint: disable-next=g-import-not-at-top
    from jax.experimental import multihost_utils
    return {k: np.asarray(v) for k, v in
            multihost_utils.process_allgather(dict(rows), tiled=True).items()}
  return {k: np.asarray(v) for k, v in jax.device_get(dict(rows)).items()}


def evaluate(
    jit_eval_step: Callable[
        [TrainState, Batch], tuple[Metrics, dict[str, jax.Array]]],
    state: TrainState,
    eval_batches: Iterator[Mapping[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
    summarize_fn: Callable[..., Mapping[str, Any]] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs a full pass over the eval set; returns scalars and collected rows.

  Args:
    jit_eval_step: jitted `eval_step` (its `collect` bound).
    state: train state.
    eval_batches: this process's local eval batches (finite, padded, masked).
    mesh: mesh the global batches are built on.
    summarize_fn: `summarize_fn(means, collected)` maps the means `{name:
      [...]}` and the collected arrays to scalars (e.g. active units from
      E[mu] and E[mu^2], AUROC from logits and labels); its outputs are
      added to the scalar means.

  Returns:
    `(scalars, collected)`: `{name: float}`, the means that are scalars,
    the summaries and `num_examples`; `{name: [num_real, ...]}`, the
    collected arrays of every real row of the split (all devices and
    processes; the order of the eval stream, i.e. record order), identical
    on every process.
  """
  totals: dict[str, np.ndarray] = {}
  pieces: dict[str, list[np.ndarray]] = {}
  for local_batch in eval_batches:
    batch = sharding.make_global_batch(local_batch, mesh)
    sums, rows = jit_eval_step(state, batch)
    sums = jax.device_get(sums)
    if rows:
      rows = _gather_rows(rows)
      real = rows.pop('mask') > 0
      for name, value in rows.items():
        pieces.setdefault(name, []).append(value[real])
    for name, value in sums.items():
      # float64 on the host keeps the sum exact over many batches.
      value = np.asarray(value, np.float64)
      totals[name] = totals[name] + value if name in totals else value
  count = float(totals.pop('num_examples', 0.0))
  if count == 0:
    raise ValueError('The eval set is empty.')
  means = {name: total / count for name, total in totals.items()}
  collected = {name: np.concatenate(v) for name, v in pieces.items()}
  scalars = {k: float(v) for k, v in means.items() if np.ndim(v) == 0}
  if summarize_fn is not None:
    scalars.update(
        {k: float(v)
         for k, v in summarize_fn(dict(means), dict(collected)).items()}
    )
  scalars['num_examples'] = count
  return scalars, collected


def save_predictions(workdir: str, collected: Mapping[str, np.ndarray]):
  """Writes `<workdir>/eval_predictions.npz` (process 0; atomic rename)."""
  if jax.process_index() != 0 or not collected:
    return
  path = os.path.join(workdir, PREDICTIONS_FILE)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **collected)
  os.replace(tmp, path)


def _check_finite(
    step: int, metrics: Mapping[str, Any], last_checkpoint: int | None,
    workdir: str
) -> None:
  """Raises FloatingPointError if a guarded metric is NaN or Inf."""
  bad = {
      k: float(np.max(np.abs(metrics[k])))
      for k in GUARDED_METRICS
      if k in metrics and not np.all(np.isfinite(metrics[k]))
  }
  if bad:
    where = (
        f'the last good checkpoint is step {last_checkpoint} in '
        f'{os.path.join(workdir, "checkpoints")}'
        if last_checkpoint is not None else 'no checkpoint was written yet'
    )
    raise FloatingPointError(
        f'Non-finite training metrics at step {step}: {bad}. Training '
        f'stopped without saving this state; {where}. Check the inputs of '
        'this step, lower optim.lr or set optim.grad_clip_norm.'
    )


def _code_version() -> str:
  """`git describe` of the source tree, or 'unknown' outside a repository."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for cmd in (['git', 'describe', '--always', '--dirty', '--tags'],
              ['git', 'rev-parse', 'HEAD']):
    try:
      out = subprocess.run(
          cmd, cwd=root, capture_output=True, text=True, timeout=10,
          check=True,
      )
      return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
      continue
  return 'unknown'


# Config entries a resumed run must share with the run that wrote its
# checkpoints: they decide the parameters' shapes or what the data mean.
RESUME_FIXED = ('task', 'model_name', 'model', 'seed', 'data.source',
                'data.name', 'data.mode', 'data.seed', 'data.num_train',
                'data.survival_model',
                'data.input_key', 'data.normalization', 'train.batch_size')


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def _new_model_key_at_default(key: str, old: dict[str, Any],
                              new: dict[str, Any]) -> bool:
  """A `model.` key the stored run lacks, set to the model's own default."""
  return (key.startswith('model.') and key not in old
          and '.' not in key[6:]
          and models.is_default(new.get('model_name'), key[6:], new[key]))


def check_resume_config(config: ml_collections.ConfigDict, workdir: str):
  """Compares `config` with the config.json of the run being resumed.

  Raises:
    ValueError: if an entry of `RESUME_FIXED` differs (e.g. a workdir trained
      with another model): the message lists the differences and asks for a
      new --workdir. Other differences (num_steps, lr, ...) are logged.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    stored = json.load(f)
  stored.pop('run_info', None)
  now = json.loads(json.dumps(writer_lib._to_python(config.to_dict())))  # pylint: disable=protected-access
  old, new = _flatten(stored), _flatten(now)
  changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                   and not _new_model_key_at_default(k, old, new))
  if not changed:
    return
  lines = [f'  {k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
           for k in changed]
  fixed = [k for k in changed
           if any(k == p or k.startswith(p + '.') for p in RESUME_FIXED)]
  if fixed:
    raise ValueError(
        f'{workdir} holds checkpoints of a different run; resuming it with '
        'this config would mix models or data. Differences:\n'
        + '\n'.join(lines) + '\nUse a new --workdir (or delete this one).'
    )
  logging.warning('Resuming %s with a changed config:\n%s', workdir,
                  '\n'.join(lines))


# Distributions whose versions a run records besides the JAX stack.
RECORDED_PACKAGES = ('tensorflow-datasets', 'array-record', 'ml-collections',
                     'scipy', 'scikit-learn', 'lifelines', 'scikit-survival',
                     'statsmodels', 'xgboost-cpu', 'xgboost', 'matplotlib',
                     'optuna', 'tensorboardX')


def package_versions(names=RECORDED_PACKAGES) -> dict[str, str]:
  """Installed versions of `names` (absent ones are left out)."""
  out = {}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def _run_info(config: ml_collections.ConfigDict, mesh, start_step) -> dict:
  """What, besides the config, is needed to reproduce the run."""
  device = jax.devices()[0]
  return {
      'code_version': _code_version(),
      'start_step': start_step,
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      'command': sys.argv,
      'seeds': {
          'seed': config.seed,
          'init_rng': 'jax.random.split(jax.random.key(seed))[0]',
          'step_rng': 'fold_in(jax.random.split(key(seed))[1], step)',
          'data_seed': config.seed,
      },
      'versions': {
          'python': platform.python_version(),
          'jax': jax.__version__,
          'jaxlib': jaxlib.__version__,
          'flax': flax.__version__,
          'optax': optax.__version__,
          'orbax_checkpoint': getattr(ocp, '__version__', 'unknown'),
          'numpy': np.__version__,
          **package_versions(),
      },
      'devices': {
          'platform': device.platform,
          'device_kind': device.device_kind,
          'device_count': jax.device_count(),
          'local_device_count': jax.local_device_count(),
          'process_count': jax.process_count(),
          'mesh_shape': dict(mesh.shape),
          'host': platform.node(),
      },
  }


def _model_fields(model_cls: Any) -> set[str]:
  """Field names of a Linen module class or of a `functools.partial` one."""
  while isinstance(model_cls, functools.partial):
    model_cls = model_cls.func
  return {f.name for f in dataclasses.fields(model_cls)}


def _tuples(value: Any) -> Any:
  # Sequences read back from config.json are lists; module fields such as
  # ResNet.filters are tuples (hashable, as the presets spell them).
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def build_model(config: ml_collections.ConfigDict):
  """`MODELS[config.model_name](**config.model)`.

  `MODELS` entries may be classes or `functools.partial` presets (e.g.
  'resnet_cpu'); `config.model` overrides a preset's settings. The form of
  docs/CONTRACTS.md, `MODELS[config.model.name](**config.model.kwargs)`, is
  accepted too.
  """
  if 'model_name' in config:
    name, kwargs = config.model_name, config.model.to_dict()
  else:
    name, kwargs = config.model.name, config.model.get('kwargs', {})
    kwargs = dict(kwargs.to_dict() if hasattr(kwargs, 'to_dict') else kwargs)
  if name not in models.MODELS:
    raise ValueError(f'Unknown model {name!r}; known: {sorted(models.MODELS)}.')
  model_cls = models.MODELS[name]
  kwargs = _tuples(dict(kwargs))
  dtype = config.train.get('dtype') if 'train' in config else None
  if dtype and 'dtype' in _model_fields(model_cls) and 'dtype' not in kwargs:
    # train.dtype sets the computation dtype (bfloat16: mixed precision);
    # parameters stay float32. It wins over a preset's dtype.
    kwargs['dtype'] = jnp.dtype(dtype)
  return model_cls(**kwargs)


# The name runs.py / stages used first.
_build_model = build_model


def _get_task(config: ml_collections.ConfigDict):
  """`losses.TASKS[config.task]`."""
  if config.task not in losses.TASKS:
    raise ValueError(
        f'Unknown task {config.task!r}; known: {sorted(losses.TASKS)}.'
    )
  return losses.TASKS[config.task]


def _describe_data(info: Mapping[str, Any]) -> dict[str, Any]:
  """The JSON-able part of `get_datasets`' info, normaliser included."""
  out = {}
  for key, value in info.items():
    if isinstance(value, (int, float, str, bool, tuple, list)):
      out[key] = value
    elif hasattr(value, 'as_dict'):  # e.g. input_pipeline.Normalizer
      out[key] = value.as_dict()
  return out


def resolve_num_steps(
    train_cfg: Mapping[str, Any], num_train: int | None
) -> tuple[int, str]:
  """The number of training steps, resolved when the run starts.

  An explicit `train.num_steps > 0` wins. Otherwise the steps come from
  `train.num_epochs` over the training set actually read (`num_train`
  records) at the global batch size, rounded up, so that overriding the
  batch size or the data size keeps the number of epochs.

  Args:
    train_cfg: `config.train` (`num_steps`, `num_epochs`, `batch_size`).
    num_train: records in the training split (the data pipeline's count).

  Returns:
    `(num_steps, how)`, `how` a short note for config.json and the console.

  Raises:
    ValueError: if neither `num_steps` nor `num_epochs` (with a known data
      size) is positive.
  """
  num_steps = int(train_cfg.get('num_steps', 0) or 0)
  if num_steps > 0:
    return num_steps, 'train.num_steps'
  num_epochs = float(train_cfg.get('num_epochs', 0) or 0)
  batch_size = int(train_cfg['batch_size'])
  if num_epochs <= 0 or not num_train:
    raise ValueError(
        'Set train.num_steps > 0, or train.num_epochs > 0 with a training set '
        f'of known size (num_steps={num_steps}, num_epochs={num_epochs}, '
        f'num_train={num_train}).'
    )
  steps = max(1, math.ceil(num_epochs * int(num_train) / batch_size))
  return steps, (f'train.num_epochs={num_epochs:g} x {int(num_train)} '
                 f'records / batch {batch_size}')


def resolved_config(
    config: ml_collections.ConfigDict, num_steps: int
) -> ml_collections.ConfigDict:
  """A copy of `config` with `train.num_steps` set to the resolved value."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.train.num_steps = int(num_steps)
  return out


def final_metrics(workdir: str) -> dict[str, float]:
  """The last logged train and eval scalars of a run (from metrics.jsonl)."""
  out: dict[str, float] = {}
  for row in writer_lib.read_metrics(workdir):
    for key, value in row.items():
      if key.startswith(('train/', 'eval/')) and '_dim_' not in key:
        out[key] = value
    if 'step' in row:
      out['step'] = row['step']
  return out


def model_input_shapes(
    task: Any, batch: Mapping[str, Any], loss_kwargs: Mapping[str, Any]
) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
  """Shapes (batch axis 1) of the model's inputs for one batch.

  Args:
    task: has an optional `inputs_fn(batch, **loss_kwargs) -> (x, *more)`;
      without one the only input is `batch['ecg']`.
    batch: a (host) batch.
    loss_kwargs: `config.loss`.

  Returns:
    `(input_shape, extra_input_shapes)`: of `x`, and of the further inputs
    that are not None (e.g. the ResNet's `extra` [1, E]).
  """
  inputs_fn = getattr(task, 'inputs_fn', None)
  if inputs_fn is None:
    shapes = [np.shape(batch['ecg'])]
  else:
    # Shapes only: nothing is computed or placed on a device.
    abstract = jax.eval_shape(
        lambda b: inputs_fn(b, **loss_kwargs),
        {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
         for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'})
    shapes = [a.shape for a in abstract if a is not None]
  shapes = [(1,) + tuple(s[1:]) for s in shapes]
  return shapes[0], shapes[1:]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: Any = None,
    task: Any = None,
    get_datasets: Callable[..., Any] | None = None,
) -> TrainState:
  """Trains, evaluates and checkpoints a model; resumes from `workdir`.

  Args:
    config: experiment config (`seed`, `task`, `model_name`, `model`, `loss`,
      `data`, `optim`, `train`; see configs/).
    workdir: run directory; holds config.json, metrics.jsonl and
      checkpoints/. If it has a checkpoint, training resumes from it.
    model: Linen module to train instead of
      `MODELS[config.model_name](**config.model)` (tests, forks).
    task: object with `loss_fn`, `eval_fn`, `summarize_fn` (and optionally
      `collect`, `inputs_fn`; see `losses.Task`) to use instead of
      `losses.TASKS[config.task]`.
    get_datasets: replacement for `input_pipeline.get_datasets`, same
      signature and outputs.

  Returns:
    The final train state.

  Raises:
    FloatingPointError: if the loss, gradients or parameters become
      non-finite; the offending state is not saved.
    ValueError: if a batch size does not divide over devices/processes.
  """
  train_cfg = config.train
  log_every = max(int(train_cfg.log_every), 1)
  eval_every = int(train_cfg.eval_every)
  checkpoint_every = int(train_cfg.checkpoint_every)
  # 0 or absent: check at log (and checkpoint) steps only; 1: every step.
  check_finite_every = int(train_cfg.get('check_finite_every', 0)) or log_every
  is_chief = jax.process_index() == 0

  # Mesh: one 'data' axis over every device of every process.
  mesh = sharding.make_mesh()
  sharding.check_batch_size(train_cfg.batch_size, mesh, 'train.batch_size')
  if train_cfg.get('eval_batch_size'):
    sharding.check_batch_size(
        train_cfg.eval_batch_size, mesh, 'train.eval_batch_size'
    )
  logging.info(
      'Process %d/%d, %d local of %d devices (%s), mesh %s.',
      jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), jax.devices()[0].device_kind, dict(mesh.shape),
  )

  # Model and task are looked up first: a misspelt name fails before any
  # data is read or compiled.
  model = model if model is not None else _build_model(config)
  task = task if task is not None else _get_task(config)

  # The latest checkpoint decides where the data stream restarts.
  manager = checkpoints.create_manager(
      workdir,
      max_to_keep=train_cfg.keep_checkpoints or None,
      save_interval_steps=checkpoint_every or 1,
  )
  start_step = manager.latest_step() or 0

  # Data: each process reads its own rows of every global batch.
  get_datasets = get_datasets or input_pipeline.get_datasets
  train_iter, make_eval_iter, data_info = get_datasets(
      config.data,
      global_batch_size=train_cfg.batch_size,
      seed=config.seed,
      start_step=start_step,
  )
  # Epoch-based runs get their step count from the data actually read, so a
  # batch- or data-size override keeps the number of epochs; config.json
  # records the resolved value.
  num_steps, steps_from = resolve_num_steps(
      train_cfg, (data_info or {}).get('num_train'))
  config = resolved_config(config, num_steps)
  train_cfg = config.train
  if start_step:
    check_resume_config(config, workdir)
  data_stream = train_iter  # closed at the end (stops prefetch threads)
  first_batch = next(train_iter)
  train_iter = itertools.chain([first_batch], train_iter)

  # Optimizer, and the loss settings shared by the task's loss and eval.
  loss_kwargs = config.loss.to_dict() if 'loss' in config else {}
  if 'dataset_size' in loss_kwargs and not loss_kwargs['dataset_size']:
    # beta-TC-VAE's estimator needs N: the training records actually read.
    loss_kwargs['dataset_size'] = int((data_info or {}).get('num_train', 0))
  # A loss with a `step` argument (the VAE's KL schedule) gets the step.
  pass_step = 'step' in inspect.signature(task.loss_fn).parameters
  learning_rate_fn = state_lib.create_learning_rate_fn(config.optim, num_steps)
  tx = state_lib.create_optimizer(config.optim, learning_rate_fn)

  # Sharded init: the state is born replicated over the mesh. The keys are
  # made under jit too, so that they are global arrays on every process.
  repl, rows = sharding.replicated(mesh), sharding.rows(mesh)
  init_rng, train_rng = jax.jit(
      lambda: tuple(jax.random.split(jax.random.key(config.seed))),
      out_shardings=(repl, repl),
  )()
  # The model's inputs (the task's `inputs_fn`, default the ECG) fix the
  # parameter shapes; config.json records them for `restore.restore`.
  input_shape, extra_input_shapes = model_input_shapes(
      task, first_batch, loss_kwargs)
  state, abstract_state = state_lib.create_train_state(
      init_rng, model, tx, input_shape, mesh,
      extra_input_shapes=extra_input_shapes,
  )
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('Model has %d parameters.', num_params)

  # Step functions, jitted once; the old state's buffers are donated.
  jit_train_step = jax.jit(
      functools.partial(
          train_step,
          loss_fn=functools.partial(task.loss_fn, model=model, **loss_kwargs),
          learning_rate_fn=learning_rate_fn, pass_step=pass_step,
      ),
      in_shardings=(state_sharding, rows, repl),
      out_shardings=(state_sharding, repl),
      donate_argnums=0,
  )
  collect = tuple(getattr(task, 'collect', ()) or ())
  jit_eval_step = jax.jit(
      functools.partial(
          eval_step,
          eval_fn=functools.partial(task.eval_fn, model=model, **loss_kwargs),
          collect=collect,
      ),
      in_shardings=(state_sharding, rows),
      # Collected rows stay sharded; `evaluate` gathers them to the hosts.
      out_shardings=(repl, rows),
  )

  # Restore: the same workdir resumes a pre-empted or killed run.
  if start_step:
    state = checkpoints.restore(manager, abstract_state, start_step)
    logging.info('Resumed from checkpoint at step %d.', start_step)
  last_checkpoint = manager.latest_step()

  writer = writer_lib.MetricWriter(workdir)
  run_info = _run_info(config, mesh, start_step)
  run_info['num_params'] = num_params
  run_info['num_steps_from'] = steps_from
  run_info['data'] = _describe_data(data_info or {})
  run_info['input_shape'] = list(input_shape)
  run_info['extra_input_shapes'] = [list(s) for s in extra_input_shapes]
  writer.write_hparams(dict(config.to_dict(), run_info=run_info))
  logging.info('Data: %s', run_info['data'])

  def run_eval(step, state, final=False):
    scalars, collected = evaluate(
        jit_eval_step, state, make_eval_iter(), mesh,
        getattr(task, 'summarize_fn', None),
    )
    if final:
      save_predictions(workdir, collected)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in scalars.items()})
    writer.flush()
    # Per-dimension metrics (e.g. kl_dim_07) go to metrics.jsonl only.
    logging.info(
        'eval step %d: %s', step,
        ', '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items())
                  if '_dim_' not in k),
    )
    shown = [k for k in EVAL_HEADLINE if k in scalars]
    console.info(f'  eval at step {step}: ' + ', '.join(
        f'{k} {scalars[k]:.4g}' for k in shown or ['loss'] if k in scalars))

  step = start_step
  pending: list[tuple[int, Metrics]] = []  # on device, not yet checked
  window: list[Mapping[str, np.ndarray]] = []  # on host, since last log
  last_log_time, last_log_step = time.perf_counter(), step
  console.info(
      f'  training {num_steps} steps ({steps_from}), batch '
      f'{train_cfg.batch_size} on {jax.device_count()} device(s), '
      f'{num_params:,} parameters'
      + (f'; resuming at step {start_step}' if start_step else ''))
  progress = console.Progress(
      num_steps, 'train', unit='steps', rate_scale=train_cfg.batch_size,
      rate_unit='ECGs', initial=start_step)
  try:
    with jax.set_mesh(mesh):
      while step < num_steps:
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          batch = sharding.make_global_batch(next(train_iter), mesh)
          # Everything the step reads is already on device: any implicit
          # host->device copy would be a bug (and a slowdown).
          with jax.transfer_guard('disallow'):
            state, metrics = jit_train_step(state, batch, train_rng)
        step += 1
        pending.append((step, metrics))

        if step == start_step + 1:
          # Exclude compilation from the throughput figures.
          jax.block_until_ready(metrics)
          logging.info(
              'First step (compilation) took %.1f s.',
              time.perf_counter() - last_log_time,
          )
          last_log_time, last_log_step = time.perf_counter(), step
          progress.update(1)

        is_last = step == num_steps
        is_log = step % log_every == 0 or is_last
        is_checkpoint = is_last or (
            checkpoint_every > 0 and step % checkpoint_every == 0
        )
        is_eval = is_last or (eval_every > 0 and step % eval_every == 0)
        # A state is checked before it is ever saved.
        if is_log or is_checkpoint or step % check_finite_every == 0:
          for s, m in jax.device_get(pending):
            window.append(m)
            _check_finite(s, m, last_checkpoint, workdir)
          pending = []

        if is_log:
          now = time.perf_counter()
          means = {
              f'train/{k}': float(np.mean([m[k] for m in window]))
              for k in window[-1]
          }
          steps_per_sec = (step - last_log_step) / max(
              now - last_log_time, 1e-9
          )
          if step > last_log_step:
            means['train/steps_per_sec'] = steps_per_sec
            means['train/examples_per_sec'] = (
                steps_per_sec * train_cfg.batch_size
            )
          writer.write_scalars(step, means)
          writer.flush()
          logging.info(
              'step %d/%d | loss %.5g | %.2f steps/s | %.1f ECGs/s',
              step, num_steps, means['train/loss'], steps_per_sec,
              steps_per_sec * train_cfg.batch_size,
          )
          progress.update(step - progress.done, loss=means['train/loss'])
          window = []
          last_log_time, last_log_step = now, step

        if is_checkpoint and step != last_checkpoint:
          checkpoints.save(manager, step, state, force=True)
          last_checkpoint = step

        if is_eval:
          eval_start = time.perf_counter()
          run_eval(step, state, final=is_last)
          # Throughput figures count training time only.
          last_log_time += time.perf_counter() - eval_start
          progress.exclude(time.perf_counter() - eval_start)
      if start_step >= num_steps:
        logging.info('Already trained to step %d; evaluating only.', step)
        run_eval(step, state, final=True)
  finally:
    progress.close()
    # Lets a save in flight complete even when training fails, so the last
    # good checkpoint is always whole.
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if hasattr(data_stream, 'close'):
      data_stream.close()
  if is_chief:
    logging.info('Done: %d steps in %s.', step, workdir)
  return state
