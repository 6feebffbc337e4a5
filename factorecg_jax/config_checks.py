"""Validation of experiment configs before any compute.

Unknown keys are already rejected by `config_flags` (configs are locked);
this module rejects known keys with impossible values, with a message that
names the field, the value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given as 'file.py' or 'file.py:arg'.

  The same spelling as `--config=` on the command line (benchmarks and
  checks load configs outside absl's flag parsing).

  Raises:
    FileNotFoundError: if the file does not exist.
  """
  file, _, arg = path.partition(':')
  if not os.path.exists(file):
    raise FileNotFoundError(f'Config file not found: {file}')
  name = '_config_' + os.path.splitext(os.path.basename(file))[0]
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _registry_choices() -> dict[str, tuple[str, ...]]:
  """Task and model names, read from the registries themselves."""
  # Imported on use: loading a config file must not import JAX and Flax.
  # pylint: disable=g-import-not-at-top
  from factorecg_jax import models
  from factorecg_jax.training import losses
  # pylint: enable=g-import-not-at-top
  return {'task': tuple(sorted(losses.TASKS)),
          'model_name': tuple(sorted(models.MODELS)),
          'loss.kl_schedule': losses.KL_SCHEDULES,
          'loss.objective': losses.VAE_OBJECTIVES}


_CHOICES = {
    'data.source': ('simulated', 'tfds'),
    'data.mode': ('uniform', 'realistic'),
    'data.survival_model': ('age_sex', 'ecg_only'),
    'data.input_key': ('beat', 'beat_clean', 'strip'),
    'data.normalization': ('none', 'per_lead', 'global'),
    'data.eval_split': ('validation', 'test'),
    'optim.name': ('adam', 'adamw'),
    'optim.schedule': ('constant', 'cosine'),
    'model.head': ('dense', 'conv'),
    'model.padding': ('chomp', 'left'),
    'model.pool': ('flatten', 'avg'),
    'train.dtype': ('float32', 'bfloat16'),
    'simulate.mode': ('uniform', 'realistic'),
    'analysis.traversal_scale': ('population', 'prior'),
}
_POSITIVE = ('train.batch_size', 'train.log_every',
             'train.eval_batch_size', 'optim.lr', 'data.num_train',
             'model.latents', 'model.channels', 'model.depth',
             'model.kernel_size', 'simulate.num_records', 'model.num_outputs',
             'downstream.num_resamples', 'downstream.horizon')
_NON_NEGATIVE = ('train.num_steps', 'train.num_epochs',
                 'train.eval_every', 'train.checkpoint_every',
                 'train.keep_checkpoints', 'optim.grad_clip_norm',
                 'optim.weight_decay', 'optim.warmup_steps', 'loss.beta',
                 'loss.fixed_sd', 'loss.kl_warmup_steps',
                 'loss.dataset_size', 'loss.mi_dw_weight', 'model.num_extra',
                 'data.num_eval', 'analysis.kl_threshold', 'downstream.margin')


def _get(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
  node = config
  for part in path.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or (
        part not in node):
      return False, None
    node = node[part]
  return True, node


def _batch_key_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Batch keys the task's loss reads that the data would not deliver."""
  present, task = _get(config, 'task')
  if not present or task == 'vae':
    return []
  _, data_keys = _get(config, 'data.extra_keys')
  data_keys = tuple(data_keys or ())
  needed = []
  _, target = _get(config, 'loss.target_key')
  if target and task in ('classify', 'regress'):
    needed.append(('loss.target_key', target))
  _, extra = _get(config, 'loss.extra_keys')
  needed += [('loss.extra_keys', k) for k in (extra or ())]
  if task == 'cox':
    needed += [('task', 'time'), ('task', 'event')]
  return [
      f'--config.{field} needs batch key {key!r}: add it to '
      f'--config.data.extra_keys (now {data_keys})'
      for field, key in needed if key not in data_keys
  ]


def _target_length_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Per-target loss settings whose length is not model.num_outputs."""
  present, num_outputs = _get(config, 'model.num_outputs')
  if not present or not isinstance(num_outputs, int):
    return []
  problems = []
  for field in ('loss.target_names', 'loss.target_mean', 'loss.target_std'):
    _, value = _get(config, field)
    if isinstance(value, (list, tuple)) and len(value) != num_outputs:
      problems.append(
          f'--config.{field} has {len(value)} entries but '
          f'--config.model.num_outputs={num_outputs}')
  return problems


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every invalid field of `config`."""
  problems = []
  for path, allowed in {**_registry_choices(), **_CHOICES}.items():
    present, value = _get(config, path)
    if present and value not in allowed:
      problems.append(f'--config.{path}={value!r}: must be one of {allowed}')
  for path in _POSITIVE:
    present, value = _get(config, path)
    if present and not (isinstance(value, (int, float)) and value > 0):
      problems.append(f'--config.{path}={value!r}: must be > 0')
  for path in _NON_NEGATIVE:
    present, value = _get(config, path)
    if present and not (isinstance(value, (int, float)) and value >= 0):
      problems.append(f'--config.{path}={value!r}: must be >= 0')
  _, steps = _get(config, 'train.num_steps')
  _, epochs = _get(config, 'train.num_epochs')
  if (isinstance(steps, (int, float)) and steps <= 0
      and not (isinstance(epochs, (int, float)) and epochs > 0)):
    problems.append(
        f'--config.train.num_steps={steps!r} and --config.train.num_epochs='
        f'{epochs!r}: set one of them > 0 (num_steps wins when both are)')
  for field in ('train.batch_size', 'train.eval_batch_size'):
    present, batch = _get(config, field)
    if present and isinstance(batch, int) and batch > 0:
      import jax  # pylint: disable=g-import-not-at-top
      if batch % jax.device_count():
        problems.append(
            f'--config.{field}={batch}: the global batch must divide by the '
            f'{jax.device_count()} devices')
  problems += _batch_key_problems(config)
  problems += _target_length_problems(config)
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))
