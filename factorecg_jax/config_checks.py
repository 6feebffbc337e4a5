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


_CHOICES = {
    'task': ('vae',),
    'model_name': ('vae',),
    'data.source': ('simulated', 'tfds'),
    'data.mode': ('uniform', 'realistic'),
    'data.input_key': ('beat', 'beat_clean', 'strip'),
    'data.normalization': ('none', 'per_lead', 'global'),
    'data.eval_split': ('validation', 'test'),
    'optim.name': ('adam', 'adamw'),
    'optim.schedule': ('constant', 'cosine'),
    'model.head': ('dense', 'conv'),
    'model.padding': ('chomp', 'left'),
    'train.dtype': ('float32', 'bfloat16'),
    'simulate.mode': ('uniform', 'realistic'),
    'analysis.traversal_scale': ('population', 'prior'),
}
_POSITIVE = ('train.batch_size', 'train.log_every',
             'train.eval_batch_size', 'optim.lr', 'data.num_train',
             'model.latents', 'model.channels', 'model.depth',
             'model.kernel_size', 'simulate.num_records')
_NON_NEGATIVE = ('train.num_steps', 'train.num_epochs',
                 'train.eval_every', 'train.checkpoint_every',
                 'train.keep_checkpoints', 'optim.grad_clip_norm',
                 'optim.weight_decay', 'optim.warmup_steps', 'loss.beta',
                 'loss.fixed_sd',
                 'data.num_eval', 'analysis.kl_threshold')


def _get(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
  node = config
  for part in path.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or (
        part not in node):
      return False, None
    node = node[part]
  return True, node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every invalid field of `config`."""
  problems = []
  for path, allowed in _CHOICES.items():
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
  if problems:
    raise ValueError('Invalid config:\n  ' + '\n  '.join(problems))
