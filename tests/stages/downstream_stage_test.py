"""Unit tests of the downstream stage's tables on hand-made predictions.

The ResNets' saved predictions may cover the test records in another order
(or a subset): the per-label table and the paired differences must match
each model's output to the same record (checked against the statistics
module's functions called on hand-aligned arrays).
"""

import os

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from factorecg_jax.analysis import statistics
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


KW = dict(num_resamples=200, seed=3)
HORIZON = 1.0


# Paired differences (factor model - reference).


@pytest.fixture(name='split')
def _split():
  rng = np.random.default_rng(0)
  n = 120
  risk = rng.normal(size=n)
  t = rng.exponential(3 * np.exp(-risk))
  c = rng.uniform(0.5, 5.0, size=n)
  test = dict(index=np.arange(n), reduced_ef=rng.random(n) < 1 / (
      1 + np.exp(-2 * risk)), time=np.minimum(t, c), event=t <= c,
              labels=rng.random((n, 3)) < 0.3)
  train = dict(time=np.minimum(t, c)[::-1].copy(), event=(t <= c)[::-1].copy())
  return test, train, risk, rng


def _rows(scores, test, train, margin=0.02):
  return downstream._paired_differences(
      scores, test, train, horizon=HORIZON, margin=margin, kw=KW)


def test_a_resnet_subset_in_another_order_is_paired_record_by_record(split):
  test, train, risk, rng = split
  n = len(risk)
  factor = risk + 2.5 * rng.normal(size=n)
  oracle = risk + 0.3 * rng.normal(size=n)
  order = rng.permutation(n)[: n - 20]  # the ResNet's records, shuffled
  resnet = (risk + 0.8 * rng.normal(size=n))[order]
  scores = {'reduced_ef': {
      'factors: logistic': downstream._scored({'AUROC': factor}),
      'oracle (true factors): logistic': downstream._scored({'AUROC': oracle}),
      'ResNet (beat)': downstream._scored({'AUROC': resnet}, positions=order),
      # Another kind's oracle is no reference of the logistic model.
      'oracle (true factors): XGBoost': downstream._scored({'AUROC': oracle}),
  }}
  rows = {r['reference']: r for r in _rows(scores, test, train)}
  assert set(rows) == {'ResNet (beat)', 'oracle (true factors): logistic'}
  got = rows['ResNet (beat)']
  # Paired in test order (the resamples do not depend on the run's order).
  records = np.sort(order)
  want = statistics.bootstrap_auroc(
      test['reduced_ef'][records], factor[records],
      reference=resnet[np.argsort(order)], **KW)
  assert got['n'] == n - 20
  assert (got['difference'], got['low'], got['high']) == (
      want['value'], want['low'], want['high'])
  got = rows['oracle (true factors): logistic']
  want = statistics.bootstrap_auroc(test['reduced_ef'], factor,
                                    reference=oracle, **KW)
  assert (got['difference'], got['low'], got['high']) == (
      want['value'], want['low'], want['high'])
  # The noisier factor score is worse than the oracle, clearly.
  assert got['high'] < 0 and not got['non_inferior']
  assert got['within_margin'] == (got['difference'] >= -0.02)
  # Unpaired (records misaligned) would give another value.
  wrong = statistics.auroc(test['reduced_ef'][order], factor[:n - 20]
                           ) - statistics.auroc(test['reduced_ef'][order],
                                                resnet)
  assert rows['ResNet (beat)']['difference'] != pytest.approx(wrong)


def test_survival_metrics_and_label_columns(split):
  test, train, risk, rng = split
  n = len(risk)
  cox_hazard = risk + 0.5 * rng.normal(size=n)
  scores = {
      'mortality': {
          'factors: Cox': downstream._scored({
              'C-index': cox_hazard,
              'AUROC at 1 y': 1 - np.exp(-np.exp(cox_hazard))}),
          'ResNet (strip)': downstream._scored({
              'C-index': risk[::-1].copy(), 'AUROC at 1 y': risk[::-1].copy()
          }, positions=np.arange(n)[::-1].copy()),
      },
      'labels': {
          # The factor model scored labels 0 and 2 only (1 was skipped).
          'factors: logistic': downstream._scored(
              {'macro AUROC': np.stack([risk, -risk], 1)}, columns=[0, 2]),
          'ResNet (beat)': downstream._scored(
              {'macro AUROC': np.stack([risk, risk, risk], 1)},
              positions=np.arange(n)),
      },
  }
  rows = {(r['task'], r['metric']): r for r in _rows(scores, test, train)}
  assert set(rows) == {('1-year mortality', 'C-index'),
                       ('1-year mortality', 'AUROC at 1 y'),
                       ('16 labels', 'macro AUROC')}
  # The reversed ResNet order pairs back to the same records in test order:
  # exactly the factor model against the (un-reversed) risk, same resamples.
  c = rows[('1-year mortality', 'C-index')]
  want = statistics.bootstrap_concordance(test['time'], cox_hazard,
                                          test['event'], reference=risk, **KW)
  assert c['difference'] == pytest.approx(want['value'], abs=1e-12)
  assert c['low'] == pytest.approx(want['low'], abs=1e-12)
  auc = rows[('1-year mortality', 'AUROC at 1 y')]
  want = statistics.bootstrap_time_dependent_auroc(
      train['time'], train['event'], test['time'], test['event'],
      1 - np.exp(-np.exp(cox_hazard)), HORIZON, reference=risk, **KW)
  assert auc['difference'] == pytest.approx(want['value'], abs=1e-12)
  # Macro AUROC over the labels both scored (0 and 2), same columns.
  macro = rows[('16 labels', 'macro AUROC')]
  want = statistics.bootstrap_macro_auroc(
      test['labels'][:, [0, 2]], np.stack([risk, -risk], 1),
      reference=np.stack([risk, risk], 1), **KW)
  assert macro['difference'] == pytest.approx(want['value'], abs=1e-12)
  assert macro['high'] == pytest.approx(want['high'], abs=1e-12)
  assert macro['num_labels'] == 2 and c['num_labels'] is None
  # A factor model clearly better than the reference is within the margin
  # and non-inferior (the flags are one-sided).
  (better,) = _rows({'reduced_ef': {
      'factors: logistic': downstream._scored({'AUROC': risk}),
      'ResNet (beat)': downstream._scored(
          {'AUROC': risk + 3 * rng.normal(size=n)}, positions=np.arange(n)),
  }}, test, train)
  assert better['low'] > 0.02
  assert better['within_margin'] and better['non_inferior']
  markdown = downstream._differences_markdown(list(rows.values()))
  assert '## Paired differences' in markdown
  assert sum(line.startswith('|') for line in markdown.splitlines()) == 5
