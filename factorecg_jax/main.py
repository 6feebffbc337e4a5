"""factorecg_jax command line: one config, one workdir, one mode.

  python -m factorecg_jax.main --config=configs/demo.py --workdir=runs/demo \
      --mode=demo [--config.train.num_steps=1000 ...]

Modes: simulate (data summary), train, encode (factors of a trained VAE),
traverse (factor traversals), evaluate (disentanglement metrics), demo (all
of them in order). Several processes (multi-host) are detected from the
environment and joined with `jax.distributed.initialize()`.

The console shows one line per stage start/end, a progress line for long
loops and a closing summary; library INFO logs (orbax, absl, jax) are hidden
unless `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG) is given.
"""

import difflib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from factorecg_jax import config_checks
from factorecg_jax import console

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (ml_collections).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
_MODE = flags.DEFINE_enum(
    'mode', 'train',
    ['simulate', 'train', 'encode', 'traverse', 'evaluate', 'demo'],
    'What to run.')
flags.mark_flags_as_required(['config', 'workdir'])

# Environment variables that mean "this is one of several processes".
_MULTIPROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
                     'TPU_WORKER_HOSTNAMES', 'OMPI_COMM_WORLD_SIZE')


def _run(mode: str, config, workdir: str) -> None:
  from factorecg_jax import demo  # pylint: disable=g-import-not-at-top
  if mode == 'demo':
    demo.run_demo(config, workdir)
    return
  # Each mode's code is imported on use: `simulate` loads no model code.
  with console.stage(mode, f'workdir {workdir}'):
    result = demo.run_stage(mode, config, workdir)
  rows, paths = demo.mode_summary(mode, result, workdir)
  console.summary(f'{mode}: results', rows, paths)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Library INFO logs (orbax, absl, jax) are off unless asked for with
  # --verbosity=0 (INFO) or 1 (DEBUG); warnings always show.
  if not flags.FLAGS['verbosity'].present:
    console.set_verbosity(console.DEFAULT_VERBOSITY)
  import jax  # pylint: disable=g-import-not-at-top
  if any(os.environ.get(k) for k in _MULTIPROCESS_ENV):
    jax.distributed.initialize()
  config = _CONFIG.value
  # Reject bad values before any compute (unknown keys already failed).
  config_checks.validate(config)
  logging.info('JAX process %d/%d, %d local / %d global devices (%s)',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  _run(_MODE.value, config, _WORKDIR.value)


def _flat_keys(config, prefix=''):
  keys = set()
  for k, v in config.items():
    keys.add(prefix + k)
    if hasattr(v, 'items'):
      keys |= _flat_keys(v, prefix + k + '.')
  return keys


def check_override_keys(argv) -> None:
  """Exits with a clear message if a `--config.x.y` override is unknown.

  absl/ml_collections reject such keys too, but with a bare KeyError; this
  names the key and its closest known spellings before anything runs.
  """
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')),
              None)
  overrides = [a[len('--config.'):].split('=', 1)[0] for a in argv
               if a.startswith('--config.')]
  if not path or not overrides:
    return
  try:
    known = _flat_keys(config_checks.load_config(path))
  except FileNotFoundError as e:
    sys.exit(str(e))
  for key in overrides:
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), n=3)
      hint = f' Did you mean: {", ".join(close)}?' if close else ''
      sys.exit(f'Unknown config key --config.{key} (config {path}).{hint}')


if __name__ == '__main__':
  check_override_keys(sys.argv[1:])
  app.run(main)
