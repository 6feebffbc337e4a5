"""Round trip of the synthetic_ecg builder: build as ArrayRecord, read back."""

import sys
import tempfile

from absl.testing import absltest
import jax
import pytest
import numpy as np
import tensorflow_datasets as tfds

from factorecg_jax.data import input_pipeline
from factorecg_jax.data import simulator
from factorecg_jax.data import sources
from factorecg_jax.data.synthetic_ecg import synthetic_ecg_dataset_builder

_SPLITS = {'train': 16, 'validation': 8, 'test': 8}


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


def setUpModule():
  tfds.disable_progress_bar()


def _build(data_dir: str) -> tfds.core.DatasetBuilder:
  builder = synthetic_ecg_dataset_builder.Builder(
      config='tiny', data_dir=data_dir, file_format='array_record'
  )
  builder.download_and_prepare()
  return builder


def _read_all(data_dir: str, split: str) -> dict:
  source = sources.TfdsSource('synthetic_ecg/tiny', split, data_dir=data_dir)
  return source.get_batch(np.arange(len(source)))


class SyntheticEcgTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.data_dir = cls._tmp.name + '/a'
    cls.builder = _build(cls.data_dir)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_split_sizes(self):
    for split, n in _SPLITS.items():
      self.assertEqual(self.builder.info.splits[split].num_examples, n)
      source = tfds.data_source(
          'synthetic_ecg/tiny',
          split=split,
          data_dir=self.data_dir,
          download=False,
      )
      self.assertLen(source, n)

  def test_record_shapes_and_dtypes(self):
    source = tfds.data_source(
        'synthetic_ecg/tiny', split='train', data_dir=self.data_dir
    )
    record = source[5]
    self.assertEqual(record['beat'].shape, (600, 12))
    self.assertEqual(record['beat'].dtype, np.float32)
    self.assertEqual(record['beat_clean'].shape, (600, 12))
    self.assertEqual(record['beat_clean'].dtype, np.float32)
    self.assertEqual(record['factors'].shape, (len(simulator.FACTOR_NAMES),))
    self.assertEqual(record['labels'].shape, (simulator.NUM_LABELS,))
    self.assertEqual(record['labels'].dtype, np.bool_)
    self.assertEqual(int(record['id']), 5)  # Stored in index order.
    self.assertIn('qt_ms', record['measurements'])
    self.assertNotIn('strip', record)
    batch = _read_all(self.data_dir, 'validation')
    self.assertEqual(batch['beat'].shape, (8, 600, 12))
    for name in ('ef', 'time'):
      self.assertEqual(batch[name].dtype, np.float32)
      self.assertEqual(batch[name].shape, (8,))
    for name in ('reduced_ef', 'event'):
      self.assertEqual(batch[name].dtype, np.bool_)
    self.assertEqual(batch['age'].dtype, np.float32)
    self.assertEqual(batch['sex'].dtype, np.int32)
    self.assertEqual(batch['age'].shape, (8,))
    self.assertEqual(batch['sex'].shape, (8,))
    train = _read_all(self.data_dir, 'train')
    self.assertTrue(((train['age'] >= 18) & (train['age'] <= 95)).all())
    self.assertGreater(np.unique(train['age']).size, 8)
    self.assertEqual(set(np.unique(train['sex'])), {0, 1})
    np.testing.assert_array_equal(batch['id'], np.arange(8))
    self.assertEqual(batch['measurements']['qt_ms'].shape, (8,))
    self.assertTrue(np.isfinite(batch['beat']).all())
    # Factors lie in their documented ranges.
    self.assertTrue((batch['factors'] >= simulator.FACTOR_LOW - 1e-4).all())
    self.assertTrue((batch['factors'] <= simulator.FACTOR_HIGH + 1e-4).all())

  def test_same_seed_gives_identical_arrays(self):
    other_dir = self._tmp.name + '/b'
    _build(other_dir)
    for split in _SPLITS:
      a, b = _read_all(self.data_dir, split), _read_all(other_dir, split)
      jax.tree.map(np.testing.assert_array_equal, a, b)

  def test_splits_hold_different_records(self):
    train = _read_all(self.data_dir, 'train')
    test = _read_all(self.data_dir, 'test')
    self.assertFalse(np.allclose(train['beat'][:8], test['beat']))
    # Records within a split differ too.
    self.assertGreater(np.abs(np.diff(train['factors'], axis=0)).min(), 0.0)

  def test_disk_records_equal_on_the_fly_records(self):
    self.assertContainsSubset(
        {'age', 'sex', 'time', 'event'},
        set(sources.TfdsSource('synthetic_ecg/tiny', 'train',
                               self.data_dir).fields))
    for split, n in _SPLITS.items():
      disk = sources.TfdsSource('synthetic_ecg/tiny', split, self.data_dir)
      fly = sources.OnTheFlySource(n, seed=0, split=split, mode='uniform')
      # Bit for bit, whatever batches each side asks for: the simulator
      # always runs the same programs at one call size (simulator.BLOCK).
      for start, size in ((0, n), (1, 3), (n - 1, 1)):
        idx = np.arange(start, start + size)
        jax.tree.map(np.testing.assert_array_equal, disk.get_batch(idx),
                     fly.get_batch(idx))

  def test_measures_are_derived_from_the_stored_measurements(self):
    # The builder stores no 'measures' (its features are unchanged); the
    # TFDS source selects them from the stored measurements: the on-the-fly
    # values bit for bit (before the fixed call size, batches of another
    # size rounded differently in the last bit on a Zen 3).
    self.assertNotIn('measures', sources.DEFAULT_FIELDS)
    self.assertNotIn('measures', sources.TfdsSource(
        'synthetic_ecg/tiny', 'train', self.data_dir).fields)
    fields = ('beat', 'measures')
    for split, n in _SPLITS.items():
      disk = sources.TfdsSource('synthetic_ecg/tiny', split, self.data_dir,
                                fields=fields)
      fly = sources.OnTheFlySource(n, seed=0, split=split, fields=fields)
      self.assertEqual(disk.fields, fields)
      got, want = disk.get_batch(np.arange(n)), fly.get_batch(np.arange(n))
      self.assertEqual(set(got), set(fields))
      self.assertEqual(got['measures'].shape, (n, simulator.NUM_MEASURES))
      np.testing.assert_array_equal(got['measures'], want['measures'])
      np.testing.assert_array_equal(disk[3]['measures'],
                                    got['measures'][3])

  def test_on_the_fly_matches_simulator_rule(self):
    # Record i of split s is `simulate_record(fold_in(split_key(seed, s), i))`.
    key = jax.random.fold_in(jax.random.key(0), sources.SPLIT_IDS['test'])
    lam = simulator.calibrate_lambda('uniform')
    names = ('beat', 'age', 'sex', 'time', 'event')
    simulate = jax.jit(
        lambda k: {
            n: v
            for n, v in simulator.simulate_record(
                k, mode='uniform', lam=lam
            ).items()
            if n in names
        }
    )
    expected = jax.device_get(simulate(jax.random.fold_in(key, 5)))
    fly = sources.OnTheFlySource(8, split='test', fields=names + ('factors',))
    got = fly.get_batch(np.arange(8))
    disk = _read_all(self.data_dir, 'test')
    for name in names:
      np.testing.assert_allclose(
          got[name][5], expected[name], rtol=1e-5, atol=1e-5, err_msg=name
      )
      np.testing.assert_allclose(
          disk[name][5], expected[name], rtol=1e-5, atol=1e-5, err_msg=name
      )

  def test_ecg_only_source_keeps_the_earlier_survival_draw(self):
    fields = ('factors', 'ef', 'age', 'sex', 'time', 'event')
    new = sources.OnTheFlySource(8, split='test', fields=fields)
    old = sources.OnTheFlySource(
        8, split='test', fields=fields, survival_model='ecg_only'
    )
    self.assertIn("survival_model='ecg_only'", repr(old))
    a, b = new.get_batch(np.arange(8)), old.get_batch(np.arange(8))
    for name in ('factors', 'ef', 'age', 'sex'):
      np.testing.assert_array_equal(a[name], b[name])
    self.assertFalse(np.array_equal(a['time'], b['time']))
    # The earlier draw: the ECG/EF risk score with the ecg_only lambda.
    ref = simulator.simulate_records(
        sources.split_key(0, 'test'), 8, fields=('time', 'event'),
        survival_model='ecg_only',
    )
    np.testing.assert_array_equal(b['time'], ref['time'])
    np.testing.assert_array_equal(b['event'], ref['event'])
    with self.assertRaisesRegex(ValueError, 'survival_model'):
      sources.OnTheFlySource(8, survival_model='age')

  def test_ecg_only_config_builds_the_earlier_survival_draw(self):
    config = synthetic_ecg_dataset_builder.SyntheticEcgConfig(
        name='tiny_ecg_only',
        num_train=8,
        num_validation=0,
        num_test=0,
        chunk_size=8,
        survival_model='ecg_only',
    )
    builder = synthetic_ecg_dataset_builder.Builder(
        config=config,
        data_dir=self._tmp.name + '/ecg_only',
        file_format='array_record',
    )
    builder.download_and_prepare()
    source = builder.as_data_source(split='train')
    disk = {k: np.stack([r[k] for r in source]) for k in ('time', 'sex')}
    fly = sources.OnTheFlySource(
        8, fields=('time', 'sex'), survival_model='ecg_only'
    ).get_batch(np.arange(8))
    np.testing.assert_array_equal(disk['time'], fly['time'])
    np.testing.assert_array_equal(disk['sex'], fly['sex'])
    default = _read_all(self.data_dir, 'train')
    self.assertFalse(np.allclose(disk['time'], default['time'][:8]))

  def test_tfds_and_simulated_pipelines_agree(self):
    config = input_pipeline.default_data_config()
    config.update(
        dict(
            name='synthetic_ecg/tiny',
            data_dir=self.data_dir,
            num_train=16,
            num_eval=8,
            extra_keys=('factors',),
            normalization='per_lead',
            normalization_records=8,
            prefetch=0,
        )
    )
    streams = {}
    for kind in ('tfds', 'simulated'):
      config.source = kind
      train_iter, make_eval_iter, info = input_pipeline.get_datasets(
          config, global_batch_size=8, seed=3
      )
      self.assertEqual((info['num_train'], info['num_eval']), (16, 8))
      streams[kind] = (
          [next(train_iter) for _ in range(3)],
          list(make_eval_iter()),
          info['normalizer'],
      )
    tfds_stream, sim_stream = streams['tfds'], streams['simulated']
    np.testing.assert_allclose(
        tfds_stream[2].mean, sim_stream[2].mean, rtol=1e-5, atol=1e-6
    )
    tfds_batches = tfds_stream[0] + tfds_stream[1]
    sim_batches = sim_stream[0] + sim_stream[1]
    self.assertLen(tfds_batches, 4)
    for a, b in zip(tfds_batches, sim_batches, strict=True):
      np.testing.assert_array_equal(a['index'], b['index'])
      np.testing.assert_allclose(a['ecg'], b['ecg'], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(a['factors'], b['factors'], rtol=1e-6)

  def test_no_tensorflow(self):
    self.assertNotIn('tensorflow', sys.modules)


class BuilderConfigTest(absltest.TestCase):

  def test_config_names_encode_size_and_mode(self):
    all_configs = synthetic_ecg_dataset_builder.Builder.BUILDER_CONFIGS
    configs = {c.name: c for c in all_configs}
    self.assertLen(configs, len(all_configs))
    self.assertEqual(configs['uniform_10k'].num_train, 10_000)
    self.assertEqual(configs['uniform_10k'].num_validation, 1_000)
    self.assertEqual(configs['realistic_100k'].mode, 'realistic')
    self.assertTrue(configs['uniform_1k_strip'].with_strip)
    self.assertFalse(configs['uniform_1k'].with_strip)

  def test_version_and_covariate_features(self):
    builder_cls = synthetic_ecg_dataset_builder.Builder
    self.assertEqual(str(builder_cls.VERSION), '1.2.0')
    self.assertIn('1.1.0', builder_cls.RELEASE_NOTES)
    self.assertIn('1.2.0', builder_cls.RELEASE_NOTES)
    with tempfile.TemporaryDirectory() as data_dir:
      builder = builder_cls(config='tiny', data_dir=data_dir)
      features = builder.info.features
      self.assertEqual(builder.info.metadata['survival_model'], 'age_sex')
    self.assertEqual(features['age'].np_dtype, np.float32)
    self.assertEqual(features['sex'].np_dtype, np.int32)
    self.assertEqual(features['age'].shape, ())

  def test_strip_config_declares_strip_feature(self):
    with tempfile.TemporaryDirectory() as data_dir:
      builder = synthetic_ecg_dataset_builder.Builder(
          config='uniform_1k_strip', data_dir=data_dir
      )
      features = builder.info.features
    self.assertEqual(features['strip'].shape, (5000, 12))
    self.assertEqual(features['strip'].np_dtype, np.float32)
    self.assertEqual(features['beat'].shape, (600, 12))


if __name__ == '__main__':
  absltest.main()
