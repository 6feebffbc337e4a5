"""Input pipeline throughput: on-the-fly simulation versus ArrayRecord on disk.

Prints batches/s of training batches of 128 median beats from
- the on-the-fly source (simulator-bound: one jitted vmap per batch), and
- the `synthetic_ecg/uniform_1k` ArrayRecord data set (read + decode bound),
with and without the background prefetch thread, plus the raw figures that
bound each: simulated records/s, records/s read as bytes, records/s decoded.

  .venv/bin/python experiments/benchmarks/input_pipeline_bench.py

Takes about 1-2 minutes on 2 CPU cores, most of it compiling the simulator
and building the 1.2k-record data set in a temporary folder (pass
--data_dir to keep and reuse it).
"""

import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from factorecg_jax.data import input_pipeline
from factorecg_jax.data import sources
from factorecg_jax.data.synthetic_ecg import synthetic_ecg_dataset_builder

import bench_report  # pylint: disable=g-bad-import-order

_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data_dir (default: a temporary folder).'
)
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_SECONDS = flags.DEFINE_float('seconds', 4.0, 'Timing window per figure.')


def _rate(fn, seconds: float) -> float:
  """Calls per second of `fn` over about `seconds` (after one warm-up call)."""
  fn()
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or calls < 3:
    fn()
    calls += 1
  return calls / (time.perf_counter() - start)


def _iterator_rate(make_iter, seconds: float) -> float:
  iterator = make_iter()
  return _rate(lambda: next(iterator), seconds)


def _bench_source(label, source, batch, seconds, normalizer):
  """Prints raw get_batch and iterator rates of one source."""
  rng = np.random.default_rng(0)
  raw = _rate(
      lambda: source.get_batch(rng.choice(len(source), batch, replace=False)),
      seconds,
  )
  rates = {}
  for prefetch in (0, 2):
    rates[prefetch] = _iterator_rate(
        lambda p=prefetch: input_pipeline.train_iterator(
            source,
            global_batch_size=batch,
            seed=0,
            normalizer=normalizer,
            prefetch_size=p,
        ),
        seconds,
    )
  print(
      f'{label:<28s} get_batch {raw:7.1f} batches/s ({raw * batch:8.0f} rec/s)'
      f' | train_iterator {rates[0]:7.1f} batches/s,'
      f' with prefetch {rates[2]:7.1f} batches/s'
  )
  return rates[0]


def main(argv):
  del argv
  tfds.disable_progress_bar()
  batch, seconds = _BATCH.value, _SECONDS.value
  tmp = None
  data_dir = _DATA_DIR.value
  if data_dir is None:
    tmp = tempfile.TemporaryDirectory()
    data_dir = tmp.name

  fly = sources.OnTheFlySource(1_000_000, seed=0, fields=('beat',))
  start = time.perf_counter()
  fly.get_batch(np.arange(batch))
  print(f'on-the-fly first batch (compile) {time.perf_counter() - start:.1f} s')
  normalizer = input_pipeline.estimate_normalizer(
      fly, 'per_lead', num_records=batch, batch_size=batch
  )
  fly_rate = _bench_source(
      'on-the-fly (1M, beats)', fly, batch, seconds, normalizer
  )

  builder = synthetic_ecg_dataset_builder.Builder(
      config='uniform_1k', data_dir=data_dir, file_format='array_record'
  )
  start = time.perf_counter()
  built = not builder.is_prepared()
  builder.download_and_prepare()
  if built:
    n = sum(s.num_examples for s in builder.info.splits.values())
    took = time.perf_counter() - start
    print(
        f'built synthetic_ecg/uniform_1k: {n} records in {took:.1f} s '
        f'(compile included, {n / took:.0f} rec/s)'
    )
  disk = sources.TfdsSource(
      'synthetic_ecg/uniform_1k', 'train', data_dir=data_dir, fields=('beat',)
  )
  disk_rate = _bench_source(
      'array_record (1k, beats)', disk, batch, seconds, normalizer
  )

  # What bounds the disk source: reading bytes versus decoding them.
  raw_bytes = tfds.data_source(
      'synthetic_ecg/uniform_1k',
      split='train',
      data_dir=data_dir,
      deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
  )
  rng = np.random.default_rng(1)
  read = _rate(
      lambda: raw_bytes.__getitems__(
          rng.choice(len(raw_bytes), batch, replace=False).tolist()
      ),
      seconds,
  )
  full = disk.data_source
  decode = _rate(
      lambda: full.__getitems__(
          rng.choice(len(full), batch, replace=False).tolist()
      ),
      seconds,
  )
  print(
      f'array_record read only       {read * batch:8.0f} rec/s; '
      f'read + decode (all fields) {decode * batch:8.0f} rec/s'
  )
  print(
      f'ratio array_record / on-the-fly train_iterator: '
      f'{disk_rate / fly_rate:.2f}'
  )
  bench_report.write('input_pipeline_bench', dict(
      batch_size=batch, seconds_per_figure=seconds,
      on_the_fly_batches_per_s=fly_rate, array_record_batches_per_s=disk_rate,
      array_record_read_records_per_s=read * batch,
      array_record_decode_records_per_s=decode * batch,
      ratio_array_record_to_on_the_fly=disk_rate / fly_rate))
  if tmp is not None:
    tmp.cleanup()


if __name__ == '__main__':
  app.run(main)
