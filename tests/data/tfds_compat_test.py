"""Large-split TFDS builds (shuffler spilled to disk) work without TensorFlow."""

import sys
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle

from factorecg_jax.data import sources
from factorecg_jax.data import tfds_compat
from factorecg_jax.data.synthetic_ecg import synthetic_ecg_dataset_builder

pytestmark = pytest.mark.usefixtures('fast_compile')


def _build(data_dir):
  builder = synthetic_ecg_dataset_builder.Builder(
      config='tiny', data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare()
  return builder


def test_builders_install_the_tensorflow_free_buckets():
  assert 'tensorflow' not in sys.modules
  assert tfds_compat.install()
  assert shuffle._Bucket is tfds_compat.EpathBucket  # pylint: disable=protected-access


def test_build_spilling_to_buckets_equals_the_simulator(tmp_path):
  tfds.disable_progress_bar()
  added = []
  original_add = tfds_compat.EpathBucket.add

  def spy(self, key, data):
    added.append(len(data))
    return original_add(self, key, data)

  # A 1 kB memory buffer: every record of every split goes through the
  # bucket files, as a > 1 GB split does with the default buffer.
  with mock.patch.object(shuffle, 'MAX_MEM_BUFFER_SIZE', 1024), \
       mock.patch.object(tfds_compat.EpathBucket, 'add', spy):
    builder = _build(tmp_path)
  splits = builder.info.splits
  assert len(added) == sum(s.num_examples for s in splits.values())
  assert not list(tmp_path.rglob('bucket_*.tmp'))  # temporary files removed
  for split in ('train', 'validation', 'test'):
    n = splits[split].num_examples
    disk = sources.TfdsSource('synthetic_ecg/tiny', split, str(tmp_path))
    fly = sources.OnTheFlySource(n, seed=0, split=split, mode='uniform')
    idx = np.arange(n)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, 1e-6, 1e-6),
        disk.get_batch(idx), fly.get_batch(idx))
  assert 'tensorflow' not in sys.modules


def test_tfds_own_buckets_need_tensorflow(tmp_path):
  # What the builders would hit without `tfds_compat` (TFDS 4.9).
  original = tfds_compat.EpathBucket.__bases__[0]
  with mock.patch.object(shuffle, 'MAX_MEM_BUFFER_SIZE', 1024), \
       mock.patch.object(shuffle, '_Bucket', original), \
       pytest.raises(ModuleNotFoundError, match='tensorflow'):
    _build(tmp_path)
