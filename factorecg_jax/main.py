"""factorecg_jax command line: one config, one workdir, one mode.

  python -m factorecg_jax.main --config=configs/demo.py --workdir=runs/demo \
      --mode=demo [--config.train.num_steps=1000 ...]

Modes: train, any registered stage (factorecg_jax/stages/: simulate, encode,
traverse, evaluate, ...; more with --stage_modules=my_stage.py), all
(training and every stage in order, skipping those whose outputs are up to
date) and demo (the same, as `make demo` runs it). Several processes
(multi-host) are detected from the environment and joined with
`jax.distributed.initialize()`.

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
_MODE = flags.DEFINE_string(
    'mode', 'train',
    "What to run: 'train', a stage name (simulate, encode, traverse, "
    "evaluate, ... from factorecg_jax/stages/ and --stage_modules), 'all' "
    "(training and every stage in order, skipping up-to-date ones) or "
    "'demo' (the same, as `make demo` runs it).")
_STAGE_MODULES = flags.DEFINE_list(
    'stage_modules', [],
    'Extra stage modules to load: dotted names or paths to .py files that '
    'register stages (factorecg_jax.stages.register).')
_STAGES = flags.DEFINE_list(
    'stages', None,
    'With --mode=all/demo: run only these stages (and the stages and training '
    'they require), e.g. --stages=evaluate for a sweep trial.')
_FORCE = flags.DEFINE_bool(
    'force', False, "With --mode=all/demo: rerun stages that are up to date.")
flags.mark_flags_as_required(['config', 'workdir'])

# Environment variables that mean "this is one of several processes".
_MULTIPROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
                     'TPU_WORKER_HOSTNAMES', 'OMPI_COMM_WORLD_SIZE')


_RUN_ALL = ('all', 'demo')


def _is_multiprocess(env) -> bool:
  """Whether the environment describes one of several processes.

  A count variable (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE) of 1 is a single
  process: a one-task SLURM job (e.g. a sweep worker) must not try to join
  a cluster.
  """
  for key in _MULTIPROCESS_ENV:
    value = env.get(key)
    if not value:
      continue
    if key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
      try:
        if int(value) <= 1:
          continue
      except ValueError:
        pass
    return True
  return False


def known_modes() -> list[str]:
  """'train', 'all', 'demo' and every registered stage."""
  from factorecg_jax import stages  # pylint: disable=g-import-not-at-top
  stages.discover()
  stages.load_stage_modules(_STAGE_MODULES.value)
  return ['train', *_RUN_ALL, *(s.name for s in stages.ordered())]


def _run(mode: str, config, workdir: str) -> None:
  from factorecg_jax import demo  # pylint: disable=g-import-not-at-top
  from factorecg_jax import stages  # pylint: disable=g-import-not-at-top
  if mode in _RUN_ALL:
    demo.run_all(config, workdir, force=_FORCE.value, only=_STAGES.value,
                 title='Demo finished' if mode == 'demo' else 'Run finished')
    return
  with console.stage(mode, f'workdir {workdir}'):
    if mode == 'train':
      from factorecg_jax.training import train  # pylint: disable=g-import-not-at-top
      train.train_and_evaluate(config, workdir)
    else:
      record = stages.run_stage(mode, config, workdir)
  if mode == 'train':
    rows, paths = demo.train_headline(workdir)
  else:
    rows, paths = demo.stage_headline(record, workdir)
  console.summary(f'{mode}: results', rows, paths)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Library INFO logs (orbax, absl, jax) are off unless asked for with
  # --verbosity=0 (INFO) or 1 (DEBUG); warnings always show.
  if not flags.FLAGS['verbosity'].present:
    console.set_verbosity(console.DEFAULT_VERBOSITY)
  import jax  # pylint: disable=g-import-not-at-top
  if _is_multiprocess(os.environ):
    jax.distributed.initialize()
  config = _CONFIG.value
  # Reject bad values before any compute (unknown keys already failed).
  config_checks.validate(config)
  modes = known_modes()
  if _MODE.value not in modes:
    raise app.UsageError(
        f'Unknown --mode={_MODE.value}; known: {", ".join(modes)}.')
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
