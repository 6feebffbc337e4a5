"""Tests of the numpy input pipeline: sampling, sharding, padding, scaling."""

import os
import subprocess
import sys
import textwrap
import threading
import time

from absl.testing import absltest
from absl.testing import parameterized
import jax
import pytest
import ml_collections
import numpy as np

from factorecg_jax.data import input_pipeline
from factorecg_jax.data import simulator
from factorecg_jax.data import sources

_LEAD_MEAN = np.linspace(-0.5, 0.5, 12).astype(np.float32)
_LEAD_STD = np.linspace(0.1, 2.0, 12).astype(np.float32)


class ArraySource:
  """In-memory source: record i has beat = mean + std * N(0, 1) (seed i)."""

  def __init__(self, num_records: int, length: int = 20):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((num_records, length, 12)).astype(np.float32)
    self.beat = _LEAD_MEAN + _LEAD_STD * z
    self.factors = rng.uniform(size=(num_records, 14)).astype(np.float32)
    self.calls = []

  def __len__(self):
    return len(self.beat)

  def get_batch(self, indices):
    indices = np.asarray(indices)
    self.calls.append(indices)
    return dict(
        beat=self.beat[indices],
        factors=self.factors[indices],
        id=indices.astype(np.int64),
    )


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(test, a, b):
  test.assertEqual(len(a), len(b))
  for x, y in zip(a, b):
    test.assertEqual(set(x), set(y))
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


class TrainIteratorTest(parameterized.TestCase):

  def _iter(self, source, **kwargs):
    defaults = dict(
        global_batch_size=4,
        seed=7,
        process_index=0,
        process_count=1,
        keys=('ecg', 'factors'),
    )
    return input_pipeline.train_iterator(source, **(defaults | kwargs))

  def test_batch_contents_and_shapes(self):
    source = ArraySource(10)
    batch = next(self._iter(source))
    self.assertEqual(set(batch), {'ecg', 'factors', 'mask', 'index'})
    self.assertEqual(batch['ecg'].shape, (4, 20, 12))
    self.assertEqual(batch['ecg'].dtype, np.float32)
    self.assertEqual(batch['mask'].dtype, np.float32)
    self.assertEqual(batch['index'].dtype, np.int64)
    np.testing.assert_array_equal(batch['mask'], np.ones(4))
    np.testing.assert_array_equal(batch['ecg'], source.beat[batch['index']])
    np.testing.assert_array_equal(
        batch['factors'], source.factors[batch['index']]
    )

  def test_same_seed_same_stream_other_seed_other_stream(self):
    source = ArraySource(10)
    a = _take(self._iter(source, seed=1), 6)
    b = _take(self._iter(source, seed=1), 6)
    c = _take(self._iter(source, seed=2), 6)
    _assert_batches_equal(self, a, b)
    self.assertFalse(
        all(np.array_equal(x['index'], y['index']) for x, y in zip(a, c))
    )

  def test_every_record_once_per_epoch(self):
    # 12 records, batches of 4: epochs are batches {0, 1, 2}, {3, 4, 5}.
    source = ArraySource(12)
    batches = _take(self._iter(source), 6)
    epoch0 = np.concatenate([b['index'] for b in batches[:3]])
    epoch1 = np.concatenate([b['index'] for b in batches[3:]])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(12))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(12))
    self.assertFalse(np.array_equal(epoch0, epoch1))  # Reshuffled.

  def test_batches_straddle_epochs(self):
    # 10 records, batches of 4: batch 2 holds the end of epoch 0 and the
    # start of epoch 1; the stream is the concatenation of the permutations.
    source = ArraySource(10)
    stream = np.concatenate([b['index'] for b in _take(self._iter(source), 5)])
    np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(stream[10:20]), np.arange(10))

  @parameterized.parameters(0, 3)
  def test_restart_reproduces_stream(self, prefetch_size):
    source = ArraySource(10)
    full = _take(self._iter(source), 8)
    resumed = _take(
        self._iter(source, start_step=5, prefetch_size=prefetch_size), 3
    )
    _assert_batches_equal(self, full[5:], resumed)

  def test_prefetch_does_not_change_stream(self):
    source = ArraySource(10)
    plain = _take(self._iter(source), 7)
    prefetched = _take(self._iter(source, prefetch_size=2), 7)
    _assert_batches_equal(self, plain, prefetched)

  def test_sources_computing_with_jax_are_read_on_the_consumer_thread(self):
    # A source whose get_batch runs JAX is never read on a prefetch thread
    # (JAX called from two threads aborted a CI run once); file and array
    # sources are.
    class JaxSource(ArraySource):
      computes_with_jax = True

    for source, threaded in ((ArraySource(10), True), (JaxSource(10), False)):
      readers = []
      get_batch = source.get_batch

      def recording(indices, get_batch=get_batch, readers=readers):
        readers.append(threading.current_thread().name)
        return get_batch(indices)

      source.get_batch = recording
      iterator = self._iter(source, prefetch_size=2)
      _take(iterator, 3)
      iterator.close()
      self.assertEqual('prefetch' in readers, threaded, readers)
      self.assertEqual(
          set(readers) == {threading.current_thread().name}, not threaded)
    self.assertTrue(sources.OnTheFlySource.computes_with_jax)

  @parameterized.parameters(2, 4)
  def test_process_slices_make_the_global_batch(self, process_count):
    source = ArraySource(10)
    global_batches = _take(self._iter(source, global_batch_size=8), 4)
    local = [
        _take(
            self._iter(
                source,
                global_batch_size=8,
                process_index=p,
                process_count=process_count,
            ),
            4,
        )
        for p in range(process_count)
    ]
    for step, global_batch in enumerate(global_batches):
      parts = [local[p][step] for p in range(process_count)]
      for part in parts:
        self.assertEqual(part['ecg'].shape[0], 8 // process_count)
      for k in global_batch:
        np.testing.assert_array_equal(
            np.concatenate([part[k] for part in parts]), global_batch[k]
        )

  def test_each_process_reads_only_its_rows(self):
    source = ArraySource(10)
    next(self._iter(source, global_batch_size=8, process_index=1,
                    process_count=2))
    self.assertLen(source.calls, 1)
    self.assertLen(source.calls[0], 4)

  def test_invalid_batch_size(self):
    with self.assertRaisesRegex(ValueError, 'multiple'):
      self._iter(ArraySource(10), global_batch_size=6, process_count=4)

  def test_normalizer_is_applied(self):
    source = ArraySource(10)
    normalizer = input_pipeline.Normalizer(
        'per_lead', _LEAD_MEAN, _LEAD_STD
    )
    batch = next(self._iter(source, normalizer=normalizer))
    np.testing.assert_allclose(
        batch['ecg'],
        (source.beat[batch['index']] - _LEAD_MEAN) / _LEAD_STD,
        rtol=1e-5,
        atol=1e-6,
    )


class PrefetchTest(absltest.TestCase):

  def test_errors_reach_the_consumer(self):
    def failing():
      yield 1
      raise RuntimeError('boom')

    iterator = input_pipeline.prefetch(failing(), 2)
    self.assertEqual(next(iterator), 1)
    with self.assertRaisesRegex(RuntimeError, 'boom'):
      next(iterator)

  def test_finite_iterator_ends(self):
    self.assertEqual(list(input_pipeline.prefetch(iter(range(5)), 2)),
                     list(range(5)))

  def test_close_joins_the_thread(self):
    produced = []

    def slow():
      for i in range(1000):
        time.sleep(0.02)
        produced.append(i)
        yield i

    iterator = input_pipeline.prefetch(slow(), 2)
    self.assertEqual(next(iterator), 0)
    iterator.close()
    count = len(produced)
    time.sleep(0.2)
    # Nothing is produced after close() returned: the thread has ended.
    self.assertEqual(len(produced), count)
    self.assertFalse(
        any(t.name == 'prefetch' and t.is_alive()
            for t in threading.enumerate()))

  def test_exit_during_a_jax_call_does_not_abort(self):
    # The worker is inside a jitted call when the main thread returns; a
    # daemon thread killed there by interpreter finalisation aborts the
    # process ("terminate called ... FATAL: exception not rethrown").
    script = textwrap.dedent("""
        import sys
        import jax, jax.numpy as jnp
        from factorecg_jax.data import input_pipeline

        @jax.jit
        def work(k):
          x = jax.random.normal(jax.random.key(k), (512, 512))
          for _ in range(8):
            x = jnp.tanh(x @ x)
          return x.sum()

        def items():
          k = 0
          while True:
            yield float(work(k))
            k += 1

        stream = input_pipeline.prefetch(items(), 2)
        for _ in range(3):
          next(stream)
        if sys.argv[1] == 'close':
          stream.close()
        print('done', flush=True)
        """)
    for how in ('close', 'exit'):
      with self.subTest(how=how):
        result = subprocess.run(
            [sys.executable, '-c', script, how], capture_output=True,
            text=True, timeout=300, check=False,
            env={**os.environ, 'XLA_FLAGS': ''})
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn('done', result.stdout)
        self.assertNotIn('terminate called', result.stderr)


class EvalIteratorTest(parameterized.TestCase):

  def test_padding_and_mask(self):
    source = ArraySource(10)
    batches = list(
        input_pipeline.eval_iterator(
            source, global_batch_size=4, process_index=0, process_count=1
        )
    )
    self.assertLen(batches, 3)
    for batch in batches:
      self.assertEqual(batch['ecg'].shape, (4, 20, 12))
    np.testing.assert_array_equal(batches[-1]['mask'], [1, 1, 0, 0])
    np.testing.assert_array_equal(batches[-1]['index'], [8, 9, -1, -1])
    index = np.concatenate([b['index'] for b in batches])
    mask = np.concatenate([b['mask'] for b in batches])
    np.testing.assert_array_equal(index[mask > 0], np.arange(10))
    for batch in batches:
      real = batch['mask'] > 0
      np.testing.assert_array_equal(
          batch['ecg'][real], source.beat[batch['index'][real]]
      )
      self.assertTrue(np.isfinite(batch['ecg']).all())

  @parameterized.parameters(0, 2)
  def test_process_slices_make_the_global_batch(self, prefetch_size):
    source = ArraySource(10)
    kwargs = dict(global_batch_size=4, prefetch_size=prefetch_size)
    whole = list(input_pipeline.eval_iterator(
        source, process_index=0, process_count=1, **kwargs))
    parts = [
        list(input_pipeline.eval_iterator(
            source, process_index=p, process_count=2, **kwargs))
        for p in range(2)
    ]
    self.assertLen(parts[0], len(whole))
    self.assertLen(parts[1], len(whole))
    for j, batch in enumerate(whole):
      for k in batch:
        np.testing.assert_array_equal(
            np.concatenate([parts[0][j][k], parts[1][j][k]]), batch[k]
        )

  def test_empty_source_yields_nothing(self):
    batches = list(input_pipeline.eval_iterator(
        ArraySource(0), global_batch_size=4, process_index=0,
        process_count=1))
    self.assertEmpty(batches)


class NormalizerTest(absltest.TestCase):

  def test_per_lead_statistics(self):
    source = ArraySource(64, length=50)
    normalizer = input_pipeline.estimate_normalizer(
        source, 'per_lead', num_records=64, batch_size=10
    )
    self.assertEqual(normalizer.mean.shape, (12,))
    # With every record in the subset, the estimate is the sample moment.
    np.testing.assert_allclose(
        normalizer.mean, source.beat.mean(axis=(0, 1)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        normalizer.std, source.beat.std(axis=(0, 1)), rtol=1e-4
    )
    # ... and close to the generating parameters (3200 samples per lead).
    np.testing.assert_allclose(normalizer.mean, _LEAD_MEAN, atol=0.1)
    np.testing.assert_allclose(normalizer.std, _LEAD_STD, rtol=0.1)
    z = normalizer(source.beat)
    np.testing.assert_allclose(z.mean(axis=(0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(
        normalizer.denormalize(z), source.beat, rtol=1e-5, atol=1e-5
    )

  def test_global_statistics(self):
    source = ArraySource(64, length=50)
    normalizer = input_pipeline.estimate_normalizer(
        source, 'global', num_records=64
    )
    self.assertEqual(normalizer.mean.shape, (1,))
    np.testing.assert_allclose(normalizer.mean, source.beat.mean(), atol=1e-5)
    np.testing.assert_allclose(normalizer.std, source.beat.std(), rtol=1e-4)

  def test_subset_is_fixed_and_bounded(self):
    source = ArraySource(100)
    a = input_pipeline.estimate_normalizer(source, 'per_lead', num_records=16)
    self.assertEqual(sum(len(c) for c in source.calls), 16)
    b = input_pipeline.estimate_normalizer(source, 'per_lead', num_records=16)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)

  def test_none_is_identity(self):
    source = ArraySource(4)
    normalizer = input_pipeline.estimate_normalizer(source, 'none')
    self.assertEmpty(source.calls)
    np.testing.assert_array_equal(normalizer(source.beat), source.beat)

  def test_unknown_kind(self):
    with self.assertRaisesRegex(ValueError, 'normalization'):
      input_pipeline.estimate_normalizer(ArraySource(4), 'minmax')


# XLA optimisation passes off (tests/conftest.py).
@pytest.mark.usefixtures('fast_compile')
class SimulatedSourceTest(absltest.TestCase):

  def test_get_datasets(self):
    config = ml_collections.ConfigDict(
        dict(
            source='simulated',
            name='synthetic_ecg/unused',
            data_dir=None,
            mode='uniform',
            num_train=12,
            num_eval=6,
            input_key='beat',
            normalization='per_lead',
            normalization_records=4,
            extra_keys=('factors',),
            eval_split='validation',
            prefetch=2,
        )
    )
    train_iter, make_eval_iter, info = input_pipeline.get_datasets(
        config, global_batch_size=4, seed=0
    )
    self.assertEqual((info['num_train'], info['num_eval']), (12, 6))
    self.assertEqual(info['steps_per_epoch'], 3)
    batches = _take(train_iter, 3)
    for batch in batches:
      self.assertEqual(batch['ecg'].shape, (4, 600, 12))
      self.assertEqual(batch['ecg'].dtype, np.float32)
      self.assertEqual(batch['factors'].shape, (4, 14))
      self.assertTrue(np.isfinite(batch['ecg']).all())
    epoch = np.concatenate([b['index'] for b in batches])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
    # 'ecg' is the normalised beat of the indexed record.
    fly = sources.OnTheFlySource(12, fields=('beat', 'factors'))
    raw = fly.get_batch(batches[0]['index'])
    np.testing.assert_allclose(
        batches[0]['ecg'], info['normalizer'](raw['beat']), rtol=1e-5,
        atol=1e-5)
    np.testing.assert_array_equal(batches[0]['factors'], raw['factors'])
    # Restart at step 2 reproduces batch 2.
    resumed, _, _ = input_pipeline.get_datasets(
        config, global_batch_size=4, seed=0, start_step=2
    )
    _assert_batches_equal(self, [next(resumed)], batches[2:])
    evals = list(make_eval_iter())
    self.assertLen(evals, 2)
    np.testing.assert_array_equal(evals[1]['mask'], [1, 1, 0, 0])
    evals_again = list(make_eval_iter())
    _assert_batches_equal(self, evals, evals_again)

  def test_on_the_fly_records_and_no_recompiles(self):
    fly = sources.OnTheFlySource(100, seed=1, split='train',
                                 fields=('beat', 'factors'))
    self.assertLen(fly, 100)
    batch = fly.get_batch(np.array([7, 3, 7]))
    np.testing.assert_array_equal(batch['beat'][0], batch['beat'][2])
    self.assertFalse(np.allclose(batch['beat'][0], batch['beat'][1]))
    np.testing.assert_allclose(fly[3]['beat'], batch['beat'][1], 1e-5, 1e-5)
    # Requests of 3 and 4 records share one padded shape: one compilation.
    before = simulator._simulate_indices._cache_size()
    fly.get_batch(np.arange(3))
    fly.get_batch(np.arange(4))
    fly.get_batch(np.arange(96, 100))
    self.assertLessEqual(simulator._simulate_indices._cache_size() - before, 1)
    other_seed = sources.OnTheFlySource(100, seed=2, fields=('beat', 'factors'))
    self.assertFalse(
        np.allclose(other_seed.get_batch(np.array([3]))['beat'],
                    batch['beat'][1]))
    with self.assertRaises(IndexError):
      fly.get_batch(np.array([100]))


if __name__ == '__main__':
  absltest.main()
