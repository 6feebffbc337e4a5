"""Reading, lead mapping, checks and the skip report of `ingest`."""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from factorecg_jax.data import ingest


def _strip(n=5000, seed=0):
  """[n, 12] with exact limb-lead relations (I, II random walks)."""
  rng = np.random.default_rng(seed)
  lead_i, lead_ii = np.cumsum(rng.normal(0, 0.01, (2, n)), axis=1)
  limb = np.stack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2,
                   lead_i - lead_ii / 2, lead_ii - lead_i / 2], axis=1)
  chest = np.cumsum(rng.normal(0, 0.01, (n, 6)), axis=0)
  return np.concatenate([limb, chest], axis=1).astype(np.float32)


class LeadsTest(absltest.TestCase):

  def test_aliases(self):
    for name, lead in [('AVR', 'aVR'), ('avl', 'aVL'), ('V1 ', 'V1'),
                       (' ii', 'II'), ('Lead III', 'III'), ('v-6', 'V6')]:
      self.assertEqual(ingest.canonical_lead(name), lead)
    self.assertIsNone(ingest.canonical_lead('V7'))

  def test_eight_leads_get_the_other_four(self):
    strip = _strip()
    eight = [0, 1, 6, 7, 8, 9, 10, 11]
    names = ['i', 'II', 'V1 ', 'V2', 'V3', 'V4', 'V5', 'V6']
    out = ingest.to_standard_leads(strip[:, eight], names)
    np.testing.assert_allclose(out, strip, atol=1e-6)

  def test_reorders_and_ignores_extra_leads(self):
    strip = _strip()
    order = np.random.default_rng(1).permutation(12)
    names = [ingest.LEADS[i].upper() for i in order] + ['Pleth']
    data = np.concatenate([strip[:, order], np.ones((5000, 1))], axis=1)
    np.testing.assert_array_equal(ingest.to_standard_leads(data, names),
                                  strip)

  def test_missing_lead_is_named(self):
    with self.assertRaisesRegex(ingest.RecordError, 'missing_lead.*V4'):
      ingest.to_standard_leads(_strip()[:, :9], ingest.LEADS[:9])


class ReadTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def test_wfdb_round_trip_in_mv(self):
    strip = _strip()
    path = os.path.join(self.dir, 'a', 'r1')
    ingest.write_wfdb(path, strip, 500)
    signal = ingest.read_wfdb(path)
    self.assertEqual(signal.fs, 500)
    self.assertEqual(signal.leads, ingest.LEADS)
    np.testing.assert_allclose(signal.data, strip, atol=5e-4 + 1e-6)

  def test_wfdb_problems(self):
    path = os.path.join(self.dir, 'r')
    with self.assertRaisesRegex(ingest.RecordError, 'no_record'):
      ingest.read_wfdb(path)
    with open(path + '.hea', 'w') as f:
      f.write('r 12 five hundred\n')
    with self.assertRaisesRegex(ingest.RecordError, 'unreadable_header'):
      ingest.read_wfdb(path)
    ingest.write_wfdb(path, _strip(), 500)
    os.remove(path + '.dat')
    with self.assertRaisesRegex(ingest.RecordError,
                                r'missing_signal_file \(r.dat\)'):
      ingest.read_wfdb(path)

  def test_npz_reads_arrays_and_refuses_pickles(self):
    path = os.path.join(self.dir, 'x.npz')
    strip = _strip(2500)
    np.savez(path, ecg=strip, fs=250.0, leads=np.array(ingest.LEADS))
    signal = ingest.read_npz(path)
    self.assertEqual((signal.fs, signal.leads), (250.0, ingest.LEADS))
    np.testing.assert_array_equal(signal.data, strip)
    np.savez(path, ecg=np.array([{'a': 1}], dtype=object))
    with self.assertRaisesRegex(ingest.RecordError, 'unreadable_header'):
      ingest.read_npz(path)


class StandardizeTest(absltest.TestCase):

  def _signal(self, data, fs=500.0, leads=ingest.LEADS):
    return ingest.Signal(data, fs, tuple(leads))

  def test_crops_long_records(self):
    out = ingest.standardize(self._signal(_strip(6000)), fs=500,
                             num_samples=5000)
    np.testing.assert_array_equal(out, _strip(6000)[:5000])

  def test_unnamed_twelve_columns_are_standard_order(self):
    out = ingest.standardize(self._signal(_strip(), float('nan'), ()),
                             fs=500, num_samples=5000)
    np.testing.assert_array_equal(out, _strip())

  def test_reasons(self):
    nan = _strip()
    nan[7, 2] = np.nan
    cases = [
        (self._signal(_strip(), fs=250.0), 'wrong_sampling_rate'),
        (self._signal(_strip()[:, :11], leads=ingest.LEADS[:11]),
         'missing_lead'),
        (self._signal(_strip(4999)), 'too_short'),
        (self._signal(nan), r'nan_samples \(III\)'),
    ]
    for signal, reason in cases:
      with self.assertRaisesRegex(ingest.RecordError, reason):
        ingest.standardize(signal, fs=500, num_samples=5000)


class ReportTest(absltest.TestCase):

  def test_write_read_and_counts(self):
    report = ingest.SkippedRecords()
    report.total['train'] += 3
    report.read['train'] += 1
    report.skip('a', 'train', ingest.RecordError('flat_lead', 'V4'))
    report.skip('b', 'train', ingest.RecordError('too_short', '5.00 s'))
    with tempfile.TemporaryDirectory() as d:
      report.write(d)
      self.assertEqual(ingest.read_report(d), [
          ('a', 'train', 'flat_lead', 'V4'),
          ('b', 'train', 'too_short', '5.00 s'),
      ])
    counts = report.counts()
    self.assertEqual((counts['total'], counts['read'], counts['skipped']),
                     (3, 1, 2))
    self.assertEqual(counts['reasons'], {'flat_lead': 1, 'too_short': 1})

  def test_strict_raises_with_the_record(self):
    report = ingest.SkippedRecords(strict=True)
    with self.assertRaisesRegex(ingest.RecordError, "record 'r9': flat_lead"):
      report.skip('r9', 'train', ingest.RecordError('flat_lead', 'V4'))

  def test_ingest_skips_before_batching(self):
    # Every record fails a host-side check, so no beat extraction runs.
    report = ingest.SkippedRecords()
    items = [
        ingest.Item('s', lambda: ingest.Signal(_strip(100), 500.0, ())),
        ingest.Item('f', lambda: ingest.Signal(_strip(), 360.0, ())),
    ]
    with self.assertRaisesRegex(ValueError, "split 'x': none of its 2"):
      list(ingest.ingest(items, split='x', report=report, fs=500,
                         num_samples=5000, batch_size=2))
    self.assertEqual([r[2] for r in report.rows],
                     ['too_short', 'wrong_sampling_rate'])
    self.assertEqual(report.counts()['splits']['x'],
                     dict(total=2, read=0, skipped=2))


if __name__ == '__main__':
  absltest.main()
