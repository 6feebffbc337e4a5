r"""Runs a sweep file's trials with Optuna; any number of workers, one study.

One worker on this machine (rerun the same command to resume; finished
trials are not rerun, a killed trial resumes from its checkpoint):

  python experiments/sweep.py --sweep=configs/sweeps/beta.py \
      --sweep_dir=runs/sweeps/beta

Four workers on a 8-GPU machine, two GPUs each:

  python experiments/sweep.py --sweep=configs/sweeps/beta.py \
      --workers=4 --devices_per_worker=2

Several machines: the same command on each, against one storage (a journal
file on a shared filesystem, the default `<sweep_dir>/journal.log`, or
`--storage=postgresql://user@host/db`). `--launcher='srun --nodes=2
--ntasks-per-node=1'` makes every trial a two-host JAX run. `--report_only`
rewrites `<sweep_dir>/results/` from the study without running anything.
"""

import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging
import optuna

from factorecg_jax import sweeps

_SWEEP = flags.DEFINE_string('sweep', None,
                             'Sweep file (configs/sweeps/<name>.py).')
_SWEEP_DIR = flags.DEFINE_string(
    'sweep_dir', None, 'Folder of the sweep (journal, trials/, results/); '
    'default runs/sweeps/<name>.')
_STORAGE = flags.DEFINE_string(
    'storage', '', "Optuna storage: '' for <sweep_dir>/journal.log, another "
    'journal file path, or a database URL (sqlite:///sweep.db, '
    'postgresql://user@host/db).')
_WORKERS = flags.DEFINE_integer(
    'workers', 1, 'Local worker processes (each runs one trial at a time); '
    '1: this process is the worker.')
_DEVICES = flags.DEFINE_integer(
    'devices_per_worker', 0, 'With --workers: give each worker its own '
    'CUDA_VISIBLE_DEVICES slice of this many GPUs (0: leave it).')
_LAUNCHER = flags.DEFINE_string(
    'launcher', '', "Prefix of every trial command, e.g. 'srun --nodes=2 "
    "--ntasks-per-node=1' (each trial a multi-host JAX run).")
_SEEDS = flags.DEFINE_list('seeds', None,
                           "Replace the sweep file's seeds, e.g. 0,1,2.")
_NUM_TRIALS = flags.DEFINE_integer(
    'num_trials', None, "Replace the sweep file's num_trials (tpe/random).")
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only aggregate the study into <sweep_dir>/results.')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Validate and print the trial commands; run nothing.')
_STREAM = flags.DEFINE_bool(
    'stream_output', False, "Echo the trials' output (always in "
    '<trial_dir>/sweep_trial.log).')
_RETRY = flags.DEFINE_bool(
    'retry_failed', True, 'At start, re-enqueue points whose trial failed.')
_MAX_TRIALS = flags.DEFINE_integer(
    'max_trials', None, 'Stop this worker after this many trials.')
_CACHE = flags.DEFINE_string(
    'compilation_cache', 'auto', "JAX persistent compilation cache of the "
    "trials: 'auto' = <sweep_dir>/jax_cache unless JAX_COMPILATION_CACHE_DIR "
    "is set, '' = off, or a folder.")
_AGGREGATE = flags.DEFINE_bool(
    'aggregate', True, 'Write <sweep_dir>/results when the worker stops.')
_WORKER_INDEX = flags.DEFINE_integer(
    'worker_index', None, 'Offsets the tpe/random seed (set by --workers; '
    'default SLURM_ARRAY_TASK_ID, SLURM_PROCID or 0).')
flags.mark_flag_as_required('sweep')


def _worker_index() -> int:
  if _WORKER_INDEX.value is not None:
    return _WORKER_INDEX.value
  for key in ('SLURM_ARRAY_TASK_ID', 'SLURM_PROCID'):
    if os.environ.get(key, '').isdigit():
      return int(os.environ[key])
  return 0


def _say(name: str, worker: str):
  import time  # pylint: disable=g-import-not-at-top

  def say(message: str) -> None:
    print(f'[sweep {name} {worker} {time.strftime("%H:%M:%S")}] {message}',
          flush=True)

  return say


def _spawn_workers(sweep, sweep_dir: str, say) -> int:
  """Starts --workers copies of this command (one worker each); waits."""
  n, k = _WORKERS.value, _DEVICES.value
  visible = None
  if k > 0:
    current = os.environ.get('CUDA_VISIBLE_DEVICES')
    visible = (current.split(',') if current else
               [str(i) for i in range(n * k)])
    if len(visible) < n * k:
      raise app.UsageError(
          f'--workers={n} --devices_per_worker={k} needs {n * k} GPUs; '
          f'CUDA_VISIBLE_DEVICES has {len(visible)}.')
  common = [sys.executable, os.path.abspath(__file__),
            f'--sweep={_SWEEP.value}', f'--sweep_dir={sweep_dir}',
            f'--storage={_STORAGE.value}', f'--launcher={_LAUNCHER.value}',
            f'--compilation_cache={_CACHE.value}', '--workers=1',
            '--noaggregate',
            '--stream_output' if _STREAM.value else '--nostream_output',
            '--retry_failed' if _RETRY.value else '--noretry_failed']
  if _SEEDS.value is not None:
    common.append(f'--seeds={",".join(_SEEDS.value)}')
  if _NUM_TRIALS.value is not None:
    common.append(f'--num_trials={_NUM_TRIALS.value}')
  if _MAX_TRIALS.value is not None:
    common.append(f'--max_trials={_MAX_TRIALS.value}')
  procs = []
  for i in range(n):
    env = dict(os.environ)
    if visible is not None:
      env['CUDA_VISIBLE_DEVICES'] = ','.join(visible[i * k:(i + 1) * k])
    procs.append(subprocess.Popen(common + [f'--worker_index={i}'], env=env))
    say(f'started worker w{i} (pid {procs[-1].pid})'
        + (f' on CUDA_VISIBLE_DEVICES={env["CUDA_VISIBLE_DEVICES"]}'
           if visible is not None else ''))
  codes = []
  try:
    codes = [p.wait() for p in procs]
  except KeyboardInterrupt:
    for p in procs:  # they got the SIGINT too; give them time to hand back
      p.wait()
    raise
  return max(codes or [0])


def _trial_env(sweep_dir: str) -> dict[str, str]:
  env = dict(os.environ)
  cache = _CACHE.value
  if cache == 'auto':
    cache = ('' if 'JAX_COMPILATION_CACHE_DIR' in env
             else os.path.join(sweep_dir, 'jax_cache'))
  if cache:
    env['JAX_COMPILATION_CACHE_DIR'] = os.path.abspath(cache)
  return env


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Library INFO logs are off unless asked for (as in main.py); the worker
  # speaks through its own progress lines.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  seeds = None
  if _SEEDS.value is not None:
    try:
      seeds = [int(s) for s in _SEEDS.value if s.strip()]
    except ValueError as e:
      raise app.UsageError(f'--seeds must be integers: {e}') from e
  try:
    sweep = sweeps.load_sweep(_SWEEP.value, seeds=seeds,
                              num_trials=_NUM_TRIALS.value)
  except (FileNotFoundError, sweeps.SweepError) as e:
    sys.exit(str(e))
  sweep_dir = os.path.abspath(_SWEEP_DIR.value or os.path.join(
      'runs', 'sweeps', sweep.name))
  index = _worker_index()
  worker = f'w{index}'
  say = _say(sweep.name, worker)
  launcher = shlex.split(_LAUNCHER.value)

  if _DRY_RUN.value:
    points = (sweeps.grid_points(sweep) if sweep.is_grid else [])
    say(f'{sweep.total} trials ({sweep.sampler}); storage '
        f'{sweeps.storage_label(_STORAGE.value, sweep_dir)}')
    for params in points[:50]:
      for run in sweeps.runs_of(sweep, sweep_dir,
                                sweeps.decode_params(sweep, params)):
        print(shlex.join(sweeps.trial_command(sweep, run, launcher)))
    return

  if _WORKERS.value > 1 and not _REPORT_ONLY.value:
    say = _say(sweep.name, 'main')
    say(f'{_WORKERS.value} local workers on '
        f'{sweeps.storage_label(_STORAGE.value, sweep_dir)}')
    code = _spawn_workers(sweep, sweep_dir, say)
    study = sweeps.open_study(sweep, sweep_dir, _STORAGE.value)
    _report(sweep, sweep_dir, study, say)
    sys.exit(code)

  try:
    study = sweeps.open_study(sweep, sweep_dir, _STORAGE.value,
                              worker_index=index)
  except sweeps.SweepError as e:
    sys.exit(str(e))
  code = 0
  if not _REPORT_ONLY.value:
    runner = sweeps.Worker(
        sweep, sweep_dir, study, launcher=launcher,
        env=_trial_env(sweep_dir), name=worker,
        stream_output=_STREAM.value, say=say)
    try:
      code = runner.run(retry_failed=_RETRY.value,
                        max_trials=_MAX_TRIALS.value)
    except KeyboardInterrupt:
      say('interrupted')
      sys.exit(130)
  if _AGGREGATE.value or _REPORT_ONLY.value:
    _report(sweep, sweep_dir, study, say)
  sys.exit(code)


def _report(sweep, sweep_dir: str, study, say) -> None:
  record = sweeps.aggregate(sweep, sweep_dir, study, storage=_STORAGE.value,
                            say=say)
  say(f'results in {os.path.join(sweep_dir, sweeps.RESULTS_DIR)} '
      f'({len(record["figures"])} figures)')
  # The sweep's page: trade-off table and plots, self-contained.
  from factorecg_jax import report  # pylint: disable=g-import-not-at-top
  say(f'report: {report.render_sweep(sweep_dir)}')
  for label, value in record['headline'].items():
    say(f'  {label}: {value}')


if __name__ == '__main__':
  app.run(main)
