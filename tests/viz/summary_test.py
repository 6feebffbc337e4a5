"""Tests for the data-set summary figures and Markdown tables."""

import math

import numpy as np
import pytest

from factorecg_jax.viz import ecg_plot
from factorecg_jax.viz import summary


def test_markdown_table_known_input():
  rows = [
    {'name': 'qrs_dur', 'n': 3, 'auroc': 0.91234, 'ok': True},
    {'name': 'a|b', 'n': np.int64(12), 'auroc': np.float32(0.5)},
  ]
  expected = (
    '| name    |   n | auroc | ok   |\n'
    '| ------- | --: | ----: | ---- |\n'
    '| qrs_dur |   3 | 0.912 | True |\n'
    '| a\\|b    |  12 |   0.5 |      |\n'
  )
  assert summary.markdown_table(rows) == expected


def test_markdown_table_columns_and_floatfmt():
  rows = [{'x': 1.0 / 3.0, 'y': None, 'z': 'keep'}, {'x': math.nan}]
  text = summary.markdown_table(rows, columns=['z', 'x'], floatfmt='.2f')
  assert text.splitlines() == [
    '| z    |    x |',
    '| ---- | ---: |',
    '| keep | 0.33 |',
    '|      |  nan |',
  ]
  with pytest.raises(ValueError, match='column'):
    summary.markdown_table([])


def test_prevalence_table_counts():
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]], bool)
  rows = summary.prevalence_table(labels, ['a', 'b', 'c'])
  assert [r['label'] for r in rows] == ['a', 'b', 'c']
  assert [r['count'] for r in rows] == [3, 2, 0]
  assert [r['n'] for r in rows] == [4, 4, 4]
  assert [r['percent'] for r in rows] == [75.0, 50.0, 0.0]
  with pytest.raises(ValueError, match=r'\[n, 3\]'):
    summary.prevalence_table(labels[:, :2], ['a', 'b', 'c'])
  with pytest.raises(ValueError, match='0/1'):
    summary.prevalence_table(labels * 2, ['a', 'b', 'c'])


def test_describe_table():
  values = np.array([[1.0, 5.0], [2.0, np.nan], [6.0, 7.0]])
  rows = summary.describe_table(values, ['u', 'v'])
  assert rows[0] == dict(name='u', n=3, mean=3.0, std=pytest.approx(
    math.sqrt(14.0 / 3.0)), min=1.0, median=2.0, max=6.0)
  assert rows[1]['n'] == 2 and rows[1]['mean'] == 6.0


def test_label_prevalence_bars_sorted_with_percentages(tmp_path):
  labels = np.zeros((10, 3), bool)
  labels[:2, 0] = True
  labels[:7, 1] = True
  labels[:5, 2] = True
  fig = summary.plot_label_prevalence(labels, ['lvh', 'sinus', 'lqt'])
  (ax,) = fig.axes
  widths = [p.get_width() for p in ax.patches]
  # barh draws bottom-up: the most prevalent label is the top (last) bar.
  assert widths == [20.0, 50.0, 70.0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ['lvh', 'lqt',
                                                          'sinus']
  texts = [t.get_text().strip() for t in ax.texts]
  assert texts == ['20.0% (2)', '50.0% (5)', '70.0% (7)']
  path = ecg_plot.save_figure(fig, tmp_path / 'prevalence.png', dpi=50)
  assert path.stat().st_size > 1_000


def test_factor_histograms_one_panel_per_factor():
  rng = np.random.default_rng(0)
  names = [f'f{i}' for i in range(14)]
  factors = rng.normal(size=(200, 14))
  fig = summary.plot_factor_histograms(factors, names, low=-np.ones(14),
                                       high=np.ones(14))
  assert len(fig.axes) == 14
  assert [ax.get_title() for ax in fig.axes] == names
  assert sum(p.get_height() for p in fig.axes[3].patches) == 200
  assert len(fig.axes[0].lines) == 2  # the two bounds
  with pytest.raises(ValueError, match=r'\[n, 14\]'):
    summary.plot_factor_histograms(factors[:, :13], names)
  with pytest.raises(ValueError, match='low'):
    summary.plot_factor_histograms(factors, names, low=np.zeros(3))


def test_measurement_scatter_reports_pearson_r():
  x = np.arange(50.0)[:, None].repeat(2, axis=1)
  y = np.stack([2.0 * x[:, 0] + 1.0, -x[:, 1]], axis=1)
  fig = summary.plot_measurement_scatter(x, y, ['a', 'b'], ['ma', 'mb'],
                                         identity=True)
  assert len(fig.axes) == 2
  assert [t.get_text() for t in fig.axes[0].texts] == ['r = 1.000']
  assert [t.get_text() for t in fig.axes[1].texts] == ['r = -1.000']
  assert fig.axes[1].get_ylabel() == 'mb'
  with pytest.raises(ValueError, match='differ'):
    summary.plot_measurement_scatter(x, y[:10], ['a', 'b'], ['ma', 'mb'])
