"""Training step time and memory versus data-set size: both must stay flat.

Trains the demo VAE with the real loop (`train.train_and_evaluate`) from
- the on-the-fly simulated source with 10k, 100k and 1M records, and
- the `synthetic_ecg/uniform_10k` and `uniform_100k` ArrayRecord data sets,
each point in a fresh child process, and prints per point the steady-state
step time (training windows after warm-up, timed by the loop itself, data
waits included), ECGs/s, the data set-up time, the resident memory at the
end of warm-up, its growth over the measured steps, and the peak RSS
(`getrusage` maxrss). The last columns are the ratios to the smallest size
of the same source; a flat pipeline keeps them near 1.

  .venv/bin/python experiments/benchmarks/data_scale_bench.py \
      [--num_steps=30 --warmup_steps=10] [--tfds_data_dir=DIR --build_tfds]

About 1 minute per point on 2 CPU cores with the defaults (configs/demo.py:
a small VAE at batch 64). Growth can be negative: memory held while
compiling is returned after warm-up. ArrayRecord sizes that are not built in
--tfds_data_dir are skipped unless --build_tfds is given (uniform_100k takes
~6 GB and tens of minutes to build on 2 cores). The model, optimizer and
batch come from --config (configs/demo.py) when that file exists, otherwise
from a built-in stand-in.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from factorecg_jax import config_checks
from factorecg_jax.data import input_pipeline
from factorecg_jax.data import sources
# Registers `synthetic_ecg` with TFDS.
from factorecg_jax.data.synthetic_ecg import synthetic_ecg_dataset_builder  # pylint: disable=unused-import
from factorecg_jax.training import train
from factorecg_jax.training import writer

import bench_report  # pylint: disable=g-bad-import-order

_CONFIG = flags.DEFINE_string(
    'config', 'configs/demo.py', 'Config file whose model/optim/train to use.'
)
_NUM_STEPS = flags.DEFINE_integer('num_steps', 30, 'Training steps per point.')
_WARMUP = flags.DEFINE_integer(
    'warmup_steps', 10, 'Steps excluded from the timing (compile, caches).'
)
_LOG_EVERY = flags.DEFINE_integer(
    'log_every', 5, 'Timing window (steps); divides warmup and num_steps.'
)
_BATCH = flags.DEFINE_integer(
    'batch_size', 0, 'Global batch size (0: from the config).'
)
_SIM_SIZES = flags.DEFINE_list(
    'sim_sizes', ['10000', '100000', '1000000'],
    'Record counts of the on-the-fly source.',
)
_TFDS_SIZES = flags.DEFINE_list(
    'tfds_sizes', ['10k', '100k'], 'synthetic_ecg/uniform_<size> data sets.'
)
_TFDS_DATA_DIR = flags.DEFINE_string(
    'tfds_data_dir', None, 'TFDS data_dir (default: ~/tensorflow_datasets).'
)
_BUILD_TFDS = flags.DEFINE_bool(
    'build_tfds', False, 'Build missing ArrayRecord data sets first.'
)
_CHILD = flags.DEFINE_string(
    'child', None, 'Internal: run one point, e.g. "sim:10000".'
)


def _fallback_config() -> ml_collections.ConfigDict:
  """A stand-in for configs/demo.py: a lean FactorECG VAE."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = 'vae'
  c.model_name = 'vae'
  c.model = ml_collections.ConfigDict(dict(
      latents=32, channels=64, depth=7, kernel_size=5, reduced_size=64,
      decoder_in_channels=64, head='conv', padding='left',
  ))
  c.loss = ml_collections.ConfigDict(dict(beta=32.0))
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.0,
      grad_clip_norm=1.0, warmup_steps=0, schedule='constant',
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=100, log_every=10, eval_every=0,
      checkpoint_every=0, keep_checkpoints=1, eval_batch_size=32,
      dtype='float32',
  ))
  return c


def _base_config() -> ml_collections.ConfigDict:
  path = _CONFIG.value
  if not path or not os.path.exists(path):
    print(f'# {path} not found: using the built-in lean VAE config.')
    return _fallback_config()
  return config_checks.load_config(path)


def _point_config(source: str, size: str) -> ml_collections.ConfigDict:
  """The base config, pointed at one data set, timed and not checkpointed."""
  config = _base_config()
  data = input_pipeline.default_data_config()
  for key in ('mode', 'seed', 'input_key', 'normalization', 'prefetch'):
    if key in config.get('data', {}):
      data[key] = config.data[key]
  data.num_eval = 64  # the final eval is not what is measured
  if source == 'sim':
    data.source = 'simulated'
    data.num_train = int(size)
  else:
    data.source = 'tfds'
    data.name = f'synthetic_ecg/uniform_{size}'
    data.data_dir = _TFDS_DATA_DIR.value
    data.num_train = 0  # the whole split
  with config.unlocked():
    config.data = data
    if _BATCH.value:
      config.train.batch_size = _BATCH.value
      config.train.eval_batch_size = _BATCH.value
    config.train.num_steps = _NUM_STEPS.value
    config.train.log_every = _LOG_EVERY.value
    config.train.check_finite_every = _LOG_EVERY.value
    config.train.eval_every = 0
    config.train.checkpoint_every = 0
    config.train.keep_checkpoints = 1
  return config


def _rss_mb() -> float:
  """Current resident set size of this process (Linux), MB."""
  with open('/proc/self/statm') as f:
    pages = int(f.read().split()[1])
  return pages * os.sysconf('SC_PAGE_SIZE') / 2**20


def _run_point(point: str) -> dict:
  """Trains one point in this process; returns its figures."""
  source, size = point.split(':')
  config = _point_config(source, size)
  marks = {}

  def get_datasets(data_config, **kwargs):
    start = time.perf_counter()
    train_iter, make_eval_iter, info = input_pipeline.get_datasets(
        data_config, **kwargs
    )
    marks['setup_s'] = time.perf_counter() - start

    def watched():
      # Batch k is drawn just before step k runs (batch 0 before compiling).
      for k, batch in enumerate(train_iter):
        if k == _WARMUP.value:
          marks['rss_warm_mb'] = _rss_mb()
        if k == config.train.num_steps - 1:
          marks['rss_end_mb'] = _rss_mb()
        yield batch

    marks['num_records'] = info['num_train']
    return watched(), make_eval_iter, info

  peak_sampled = [0.0]
  done = threading.Event()

  def sample():
    while not done.wait(0.2):
      peak_sampled[0] = max(peak_sampled[0], _rss_mb())

  threading.Thread(target=sample, daemon=True).start()
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir, get_datasets=get_datasets)
    rows = writer.read_metrics(workdir)
  done.set()
  # Windows after warm-up, timed by the loop between its host syncs.
  windows = [
      r for r in rows
      if 'train/steps_per_sec' in r and r['step'] > _WARMUP.value
  ]
  steps = _LOG_EVERY.value * len(windows)
  seconds = sum(_LOG_EVERY.value / r['train/steps_per_sec'] for r in windows)
  step_ms = 1e3 * seconds / max(steps, 1)
  return dict(
      source='on-the-fly' if source == 'sim' else 'array_record',
      size=size,
      num_records=marks.get('num_records'),
      setup_s=marks.get('setup_s'),
      step_ms=step_ms,
      ecgs_per_s=config.train.batch_size * 1e3 / step_ms,
      rss_warm_mb=marks.get('rss_warm_mb'),
      rss_growth_mb=marks.get('rss_end_mb', np.nan)
      - marks.get('rss_warm_mb', np.nan),
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      batch_size=config.train.batch_size,
      measured_steps=steps,
  )


def _tfds_prepared(size: str) -> bool:
  builder = tfds.builder(
      f'synthetic_ecg/uniform_{size}', data_dir=_TFDS_DATA_DIR.value,
      file_format='array_record',
  )
  return builder.is_prepared()


def _child(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, os.path.abspath(__file__)] + args,
      capture_output=True, text=True, check=False,
  )


def _forwarded_flags() -> list[str]:
  names = ('config', 'num_steps', 'warmup_steps', 'log_every', 'batch_size')
  out = [f'--{n}={flags.FLAGS[n].value}' for n in names]
  if _TFDS_DATA_DIR.value:
    out.append(f'--tfds_data_dir={_TFDS_DATA_DIR.value}')
  return out


def _print_table(results: list[dict]) -> None:
  header = (
      f'{"source":<13}{"records":>10}{"setup s":>9}{"step ms":>9}'
      f'{"ECG/s":>8}{"RSS MB":>8}{"growth":>8}{"peak MB":>9}'
      f'{"step x":>8}{"peak x":>8}'
  )
  print(header)
  first = {}
  for r in results:
    base = first.setdefault(r['source'], r)
    print(
        f'{r["source"]:<13}{r["num_records"]:>10}{r["setup_s"]:>9.1f}'
        f'{r["step_ms"]:>9.1f}{r["ecgs_per_s"]:>8.0f}'
        f'{r["rss_warm_mb"]:>8.0f}{r["rss_growth_mb"]:>+8.0f}'
        f'{r["peak_rss_mb"]:>9.0f}'
        f'{r["step_ms"] / base["step_ms"]:>8.2f}'
        f'{r["peak_rss_mb"] / base["peak_rss_mb"]:>8.2f}'
    )


def main(argv):
  del argv
  if _WARMUP.value % _LOG_EVERY.value or _NUM_STEPS.value % _LOG_EVERY.value:
    raise app.UsageError('log_every must divide warmup_steps and num_steps.')
  if _NUM_STEPS.value <= _WARMUP.value:
    raise app.UsageError('num_steps must exceed warmup_steps.')
  if _CHILD.value:
    logging.set_verbosity(logging.WARNING)
    print('RESULT ' + json.dumps(_run_point(_CHILD.value)), flush=True)
    return

  points = [f'sim:{n}' for n in _SIM_SIZES.value]
  for size in _TFDS_SIZES.value:
    if not _tfds_prepared(size):
      if not _BUILD_TFDS.value:
        print(f'# skipping synthetic_ecg/uniform_{size}: not built in '
              f'{_TFDS_DATA_DIR.value or "~/tensorflow_datasets"} '
              '(pass --build_tfds)')
        continue
      start = time.perf_counter()
      # TfdsSource builds a missing data set; do it in a child of its own
      # so that the build's memory does not count against the point.
      build = _child(_forwarded_flags() + ['--child', f'build:{size}'])
      if build.returncode:
        print(f'# building uniform_{size} failed:\n{build.stderr[-2000:]}')
        continue
      print(f'# built uniform_{size} in {time.perf_counter() - start:.0f} s')
    points.append(f'tfds:{size}')

  print(f'# {_NUM_STEPS.value} steps per point, the first '
        f'{_WARMUP.value} not timed; one fresh process per point.')
  results = []
  for point in points:
    run = _child(_forwarded_flags() + ['--child', point])
    lines = [l for l in run.stdout.splitlines() if l.startswith('RESULT ')]
    if run.returncode or not lines:
      print(f'# {point} failed:\n{run.stdout[-1000:]}\n{run.stderr[-3000:]}')
      continue
    results.append(json.loads(lines[-1][len('RESULT '):]))
    print(f'# {point}: {results[-1]["step_ms"]:.1f} ms/step', flush=True)
  if results:
    _print_table(results)
  bench_report.write('data_scale_bench', dict(
      num_steps=_NUM_STEPS.value, warmup_steps=_WARMUP.value,
      batch_size=_BATCH.value, points=results))


def _build_only(size: str) -> None:
  sources.TfdsSource(
      f'synthetic_ecg/uniform_{size}', 'train', data_dir=_TFDS_DATA_DIR.value
  )


def _entry(argv):
  if _CHILD.value and _CHILD.value.startswith('build:'):
    _build_only(_CHILD.value.split(':', 1)[1])
    return
  main(argv)


if __name__ == '__main__':
  app.run(_entry)
