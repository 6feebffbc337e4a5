"""Builds `ecg_folder` from simulated WFDB/.npz cohorts, good and bad."""

import dataclasses
import json
import os
import tempfile

from absl.testing import absltest
import jax
import pytest
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from factorecg_jax.data import ingest
from factorecg_jax.data import simulator
from factorecg_jax.data.ecg_folder import ecg_folder_dataset_builder as efb

_GOOD = ('g0', 'g1', 'g2', 'g3', 'g8lead')
# One record per kind of problem, with the reason the report must give.
_BAD = {
    'b_header': 'unreadable_header',
    'b_dat': 'missing_signal_file',
    'b_nan': 'nan_samples',
    'b_flat': 'flat_lead',
    'b_sat': 'saturated_lead',
    'b_fs': 'wrong_sampling_rate',
    'b_lead': 'missing_lead',
    'b_short': 'too_short',
    'b_missing': 'no_record',
}


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


def setUpModule():
  tfds.disable_progress_bar()


def _write_cohort(root: str, records: dict) -> None:
  """WFDB files for the good and bad ids, and labels.csv."""
  strips = records['strip']
  folder = os.path.join(root, 'records')
  names = list(ingest.LEADS)
  names[3], names[4] = 'AVR', 'avl'  # aliases must be understood
  for i, rid in enumerate(_GOOD[:4]):
    ingest.write_wfdb(os.path.join(folder, rid), strips[i], 500, names)
  eight = [0, 1, 6, 7, 8, 9, 10, 11]
  ingest.write_wfdb(
      os.path.join(folder, 'g8lead'), strips[4][:, eight], 500,
      ('I', 'II', 'v1', 'V-2', 'V3', 'V4', 'V5', 'V6'),
  )
  path = lambda rid: os.path.join(folder, rid)
  with open(path('b_header') + '.hea', 'w') as f:
    f.write('this is not a header\n')
  ingest.write_wfdb(path('b_dat'), strips[0], 500)
  os.remove(path('b_dat') + '.dat')
  bad = strips[1].copy()
  bad[100:120, 7] = np.nan
  ingest.write_wfdb(path('b_nan'), bad, 500)
  bad = strips[2].copy()
  bad[:, 9] = 0.0
  ingest.write_wfdb(path('b_flat'), bad, 500)
  bad = strips[3].copy()
  bad[1000:1300, 8] = 30.0  # amplifier pinned at its rail for 0.6 s
  ingest.write_wfdb(path('b_sat'), bad, 500)
  ingest.write_wfdb(path('b_fs'), strips[0][::2], 250)
  ingest.write_wfdb(path('b_lead'), strips[1][:, :10], 500,
                    ingest.LEADS[:10])
  ingest.write_wfdb(path('b_short'), strips[2][:2500], 500)
  ids = list(_GOOD) + list(_BAD)
  table = pd.DataFrame({
      'id': ids,
      'split': ['train', 'train', 'train', 'test', 'test'] + ['train'] * 5
               + ['test'] * 4,
      'lab_a': np.arange(len(ids), dtype=float),
      'lab_b': [1.0, 0.0, np.nan] + [1.0] * (len(ids) - 3),
      'time': np.linspace(0.5, 7.0, len(ids)),
      'event': [i % 2 for i in range(len(ids))],
  })
  table.to_csv(os.path.join(root, 'labels.csv'), index=False)


_CONFIG = efb.EcgFolderConfig(
    name='cohort',
    label_columns=('lab_a', 'lab_b'),
    survival=True,
    with_strip=True,
    batch_size=4,
)


def _build(root, data_dir, config=_CONFIG):
  builder = efb.Builder(
      config=config, data_dir=data_dir, file_format='array_record'
  )
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=root)
  )
  return builder


class EcgFolderTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.root = os.path.join(cls._tmp.name, 'cohort')
    cls.records = jax.device_get(
        simulator.simulate_records(jax.random.key(3), 5, strips=True)
    )
    _write_cohort(cls.root, cls.records)
    cls.data_dir = os.path.join(cls._tmp.name, 'data')
    cls.builder = _build(cls.root, cls.data_dir)
    cls.table = pd.read_csv(os.path.join(cls.root, 'labels.csv'))

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _read(self, split):
    source = tfds.data_source(
        'ecg_folder/cohort', split=split, data_dir=self.data_dir
    )
    return {ex['id'].decode() if isinstance(ex['id'], bytes) else ex['id']: ex
            for ex in (source[i] for i in range(len(source)))}

  def test_skip_report_is_exact(self):
    rows = ingest.read_report(self.builder.data_dir)
    got = sorted((rid, reason) for rid, _, reason, _ in rows)
    self.assertEqual(got, sorted(_BAD.items()))
    details = {rid: detail for rid, _, _, detail in rows}
    self.assertIn('V2', details['b_nan'])
    self.assertIn('V4', details['b_flat'])
    self.assertIn('V3', details['b_sat'])
    self.assertIn('V5', details['b_lead'])
    self.assertIn('250', details['b_fs'])

  def test_counts_add_up(self):
    with open(os.path.join(self.builder.data_dir, ingest.SUMMARY_FILE)) as f:
      counts = json.load(f)
    self.assertEqual(counts['total'], len(_GOOD) + len(_BAD))
    self.assertEqual(counts['read'], len(_GOOD))
    self.assertEqual(counts['skipped'], len(_BAD))
    for split, c in counts['splits'].items():
      self.assertEqual(c['read'] + c['skipped'], c['total'], split)
      self.assertEqual(c['read'], self.builder.info.splits[split].num_examples)

  def test_labels_and_survival_come_through(self):
    read = {**self._read('train'), **self._read('test')}
    self.assertEqual(set(read), set(_GOOD))
    self.assertLen(self._read('test'), 2)
    for rid, ex in read.items():
      row = self.table[self.table.id == rid].iloc[0]
      np.testing.assert_array_equal(ex['labels'], [row.lab_a, row.lab_b])
      self.assertAlmostEqual(float(ex['time']), row.time, places=5)
      self.assertEqual(bool(ex['event']), bool(row.event))
      self.assertEqual(ex['beat'].shape, (600, 12))
    self.assertTrue(np.isnan(read['g2']['labels'][1]))

  def test_beats_match_the_simulator(self):
    read = {**self._read('train'), **self._read('test')}
    for i, rid in enumerate(_GOOD):
      # From just before the QRS to the end of the T wave: farther out the
      # simulator's beat holds neighbours at its own RR, not the strip's.
      clean = self.records['beat_clean'][i][150:450]
      beat = read[rid]['beat'][150:450]
      corr = np.corrcoef(beat.ravel(), clean.ravel())[0, 1]
      self.assertGreater(corr, 0.98, rid)

  def test_eight_leads_get_derived_limb_leads(self):
    strip = self._read('test')['g8lead']['strip']
    # Stored at 1 uV resolution, so derived leads match to a few uV.
    np.testing.assert_allclose(strip, self.records['strip'][4], atol=3e-3)

  def test_strict_names_the_first_bad_record(self):
    config = dataclasses.replace(_CONFIG, name='strict', strict=True)
    # Splits are generated in name order: 'test' first, where b_fs is the
    # first bad row.
    with self.assertRaisesRegex(
        ingest.RecordError, "record 'b_fs': wrong_sampling_rate"
    ):
      _build(self.root, os.path.join(self._tmp.name, 'strict'), config)

  def test_missing_id_column_fails_up_front(self):
    root = os.path.join(self._tmp.name, 'no_id')
    os.makedirs(root)
    self.table.rename(columns={'id': 'patient'}).to_csv(
        os.path.join(root, 'labels.csv'), index=False)
    with self.assertRaisesRegex(ValueError, "missing column 'id'"):
      _build(root, os.path.join(self._tmp.name, 'no_id_data'))

  def test_malformed_survival_columns_fail_up_front(self):
    path = os.path.join(self._tmp.name, 'bad.csv')
    table = self.table.copy()
    table['time'] = table['time'].astype(object)
    table.loc[2, 'time'] = 'soon'
    table.to_csv(path, index=False)
    with self.assertRaisesRegex(ValueError, "column 'time'.*g2"):
      efb.read_table(path, _CONFIG)
    table = self.table.copy()
    table.loc[1, 'event'] = 2
    table.to_csv(path, index=False)
    with self.assertRaisesRegex(ValueError, "column 'event'"):
      efb.read_table(path, _CONFIG)
    self.table.drop(columns='event').to_csv(path, index=False)
    with self.assertRaisesRegex(ValueError, "missing column 'event'"):
      efb.read_table(path, _CONFIG)

  def test_npz_cohort_without_pickle(self):
    root = os.path.join(self._tmp.name, 'npz')
    os.makedirs(os.path.join(root, 'records'))
    strips = self.records['strip']
    for i in range(3):
      np.savez(os.path.join(root, 'records', f'n{i}.npz'),
               ecg=strips[i, ::2], fs=250.0)
    np.savez(os.path.join(root, 'records', 'n3.npz'),
             ecg=np.array([None, 1], dtype=object))
    pd.DataFrame({'id': ['n0', 'n1', 'n2', 'n3']}).to_csv(
        os.path.join(root, 'labels.csv'), index=False)
    config = efb.EcgFolderConfig(name='npz250', file_format='npz',
                                 sampling_rate=250.0, batch_size=4)
    builder = _build(root, os.path.join(self._tmp.name, 'npz_data'), config)
    self.assertEqual(builder.info.splits['train'].num_examples, 3)
    rows = ingest.read_report(builder.data_dir)
    self.assertEqual([(r[0], r[2]) for r in rows],
                     [('n3', 'unreadable_header')])


if __name__ == '__main__':
  absltest.main()
