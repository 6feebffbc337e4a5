"""Unit tests of the downstream stage's tables on hand-made predictions."""

import os

import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from factorecg_jax.stages import downstream


def _config():
  return ml_collections.ConfigDict(dict(
      task='vae', downstream=dict(num_test=40),
      blackbox=dict(targets=('labels',), inputs=('beat',))))


def test_per_label_table_scores_saved_resnet_predictions(tmp_path):
  rng = np.random.default_rng(0)
  n, k = 40, 3
  labels = rng.random((n, k)) < 0.4
  logits = rng.normal(size=(n, k)) + 2.0 * labels
  # The run predicted records in another order, plus one not in the test.
  perm = rng.permutation(n)
  index = np.concatenate([perm, [99]])
  folder = tmp_path / 'blackbox' / 'labels_beat'
  os.makedirs(folder)
  np.savez(folder / 'eval_predictions.npz', index=index,
           logits=np.concatenate([logits[perm], np.zeros((1, k))]))
  test = dict(index=np.arange(n), labels=labels)
  fits = {'factors_labels_logistic': {'per_label': {
      'a': {'auroc': {'value': 0.7}}, 'b': {'auroc': {'value': 0.6}},
      'c': {'status': 'skipped'}}}}
  rows = downstream._per_label_table(_config(), str(tmp_path), fits, test,
                                     ['a', 'b', 'c'])
  assert [r['label'] for r in rows] == ['a', 'b', 'c']
  for j, row in enumerate(rows):
    want = sk_metrics.roc_auc_score(labels[:, j], logits[:, j])
    assert abs(row['ResNet (beat)'] - want) < 1e-12
    assert abs(row['prevalence'] - labels[:, j].mean()) < 1e-12
  assert rows[0]['factors: logistic'] == 0.7
  assert rows[2]['factors: logistic'] is None  # skipped label
  assert rows[0]['oracle: logistic'] is None  # no oracle fit given
  markdown = downstream._per_label_markdown(rows)
  assert '| a | ' in markdown and 'n/a' in markdown
