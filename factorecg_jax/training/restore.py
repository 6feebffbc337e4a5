"""One way to restore a trained model from its run directory.

`restore(workdir)` needs nothing but the run directory that
`train.train_and_evaluate` wrote: the model (`model_name`, `model`), the
optimizer (whose state is part of the checkpoint) and the input shapes the
model was initialised with are read from `<workdir>/config.json`
(`run_info.input_shape`, `run_info.extra_input_shapes`), never guessed; the
checkpoint is restored with orbax into an abstract train state, so params
and `batch_stats` come back placed on the mesh, and nothing is initialised.
"""

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from factorecg_jax.data import input_pipeline
from factorecg_jax.training import checkpoints
from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import train


class Restored(NamedTuple):
  """A trained model and what is needed to feed it.

  Attributes:
    model: the Linen module, `MODELS[config.model_name](**config.model)`.
    variables: `{'params': ...}` plus `'batch_stats'` for BatchNorm models,
      replicated over the mesh: call `model.apply(variables, x, ...)`.
    config: the run's resolved config (config.json without `run_info`).
    normalizer: the input normaliser of training (`input_pipeline.
      Normalizer`; identity if the run recorded none).
    input_shape: `(1, time, leads)` the model was trained on.
    extra_input_shapes: shapes of its further inputs, e.g. `((1, 2),)` for a
      ResNet's `extra`; `()` for none.
    step: the restored checkpoint's step.
    run_info: the run's `run_info` (code version, seeds, data, devices).
  """

  model: Any
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  normalizer: input_pipeline.Normalizer
  input_shape: tuple[int, ...]
  extra_input_shapes: tuple[tuple[int, ...], ...]
  step: int
  run_info: dict[str, Any]


def read_config(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  """`(config, run_info)` from `<workdir>/config.json`.

  Raises:
    FileNotFoundError: if the run has no config.json.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: {workdir} is not a run directory written by '
        '--mode=train.'
    )
  with open(path, encoding='utf-8') as f:
    saved = json.load(f)
  run_info = saved.pop('run_info', {})
  return ml_collections.ConfigDict(saved), run_info


def normalizer_from_run_info(run_info: dict) -> input_pipeline.Normalizer:
  """The normaliser recorded in `run_info['data']` (identity if absent)."""
  spec = (run_info.get('data') or {}).get('normalizer')
  if not spec:
    return input_pipeline.identity_normalizer()
  return input_pipeline.Normalizer(
      spec['kind'], np.asarray(spec['mean'], np.float32),
      np.asarray(spec['std'], np.float32),
  )


def restore(
    workdir: str,
    *,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Restored:
  """Restores the model a run trained, from its run directory alone.

  Args:
    workdir: run directory with config.json and checkpoints/.
    step: checkpoint to restore; None means the latest.
    mesh: mesh to place the variables on (default: all devices).

  Returns:
    A `Restored`.

  Raises:
    FileNotFoundError: without config.json or without a checkpoint.
    ValueError: if config.json does not record the input shape (runs
      trained before it was recorded): the shape is never guessed.
  """
  config, run_info = read_config(workdir)
  if 'input_shape' not in run_info:
    raise ValueError(
        f'{workdir}/config.json records no run_info.input_shape (trained '
        'by an older version); retrain, or add it by hand, e.g. '
        '"input_shape": [1, 600, 12].'
    )
  input_shape = tuple(int(d) for d in run_info['input_shape'])
  extra_input_shapes = tuple(
      tuple(int(d) for d in s) for s in run_info.get('extra_input_shapes', ())
  )
  model = train.build_model(config)
  # The checkpoint holds the optimizer state too: its structure follows the
  # run's own optimizer settings and resolved step count.
  num_steps = max(int(config.train.get('num_steps', 0) or 0), 1)
  tx = state_lib.create_optimizer(
      config.optim, state_lib.create_learning_rate_fn(config.optim, num_steps)
  )
  mesh = mesh if mesh is not None else sharding.make_mesh()
  abstract_state = state_lib.abstract_train_state(
      model, tx, input_shape, mesh, extra_input_shapes=extra_input_shapes
  )
  manager = checkpoints.create_manager(workdir)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f'No checkpoint in {manager.directory}: train first.'
      )
    state = checkpoints.restore(manager, abstract_state, step)
  finally:
    manager.close()
  variables = {'params': state.params, **state.model_state}
  return Restored(
      model=model,
      variables=variables,
      config=config,
      normalizer=normalizer_from_run_info(run_info),
      input_shape=input_shape,
      extra_input_shapes=extra_input_shapes,
      step=int(step),
      run_info=run_info,
  )
