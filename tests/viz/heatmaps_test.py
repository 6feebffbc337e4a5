"""Tests of the attribution figures (viz/heatmaps.py)."""

import numpy as np
import pytest

from factorecg_jax.viz import heatmaps


def _beat(t=600):
  time = np.arange(t) / 500.0
  wave = np.exp(-((time - 0.45) / 0.02) ** 2) - 0.3 * np.exp(
      -((time - 0.8) / 0.05) ** 2)
  return np.repeat(wave[:, None], 12, axis=1) * np.linspace(0.5, 1.5, 12)


def test_attribution_heat_modes():
  a = np.array([[-2.0, 1.0], [0.0, 0.5]])
  np.testing.assert_allclose(heatmaps.attribution_heat(a, 'abs'),
                             [[1.0, 0.5], [0.0, 0.25]])
  np.testing.assert_allclose(heatmaps.attribution_heat(a, 'signed'),
                             [[0.0, 0.75], [0.5, 0.625]])
  np.testing.assert_allclose(heatmaps.attribution_heat(a, 'positive'),
                             [[0.0, 1.0], [0.0, 0.5]])
  np.testing.assert_allclose(
      heatmaps.attribution_heat(a, 'abs', per_lead=True),
      [[1.0, 1.0], [0.0, 0.5]])
  assert np.all(heatmaps.attribution_heat(np.zeros((3, 2))) == 0)
  spiky = np.r_[np.ones(99), 100.0]
  clipped = heatmaps.attribution_heat(spiky, clip_percentile=50)
  assert clipped[0] == 1.0 and clipped[-1] == 1.0  # the spike saturates
  assert heatmaps.attribution_heat(spiky)[0] == 0.01
  with pytest.raises(ValueError, match='mode'):
    heatmaps.attribution_heat(a, 'log')
  with pytest.raises(ValueError, match='non-finite'):
    heatmaps.attribution_heat(np.array([np.nan]))


def test_heatmap_is_clipped_under_the_trace():
  ecg = _beat()
  attribution = np.zeros_like(ecg)
  attribution[200:240] = 1.0
  fig = heatmaps.plot_heatmap(ecg, attribution, title='x')
  lead_axes = [ax for ax in fig.axes if ax.get_label() in heatmaps.ecg_plot.LEADS]
  assert len(lead_axes) >= 12
  image = lead_axes[0].images[0]
  # Colour under the curve: the shading is clipped to the trace's area.
  assert image.get_clip_path() is not None
  band = heatmaps.plot_heatmap(ecg, attribution, style='band')
  band_axes = [ax for ax in band.axes if ax.get_label() == 'I']
  assert band_axes[0].images[0].get_clip_path() is None
  with pytest.raises(ValueError, match='heat_style'):
    heatmaps.plot_heatmap(ecg, attribution, style='dots')


def test_methods_side_by_side_and_errors():
  ecg = _beat()
  maps = {name: np.random.default_rng(i).normal(size=ecg.shape)
          for i, name in enumerate(['saliency', 'ig', 'gradcam'])}
  region = np.zeros(600, bool)
  region[200:250] = True
  fig = heatmaps.plot_methods(ecg, maps, leads=('II', 'V5'), region=region,
                              mode='signed')
  assert len(fig.axes) == 3 * 3  # 3 methods x (2 leads + profile)
  assert [fig.axes[3 * i].get_ylabel() for i in range(3)] == list(maps)
  with pytest.raises(ValueError, match='shape'):
    heatmaps.plot_methods(ecg, {'bad': np.zeros((10, 12))})


def test_deletion_curves_and_ranking():
  fractions = np.linspace(0, 1, 5)
  fig = heatmaps.plot_deletion_curves(
      fractions, {'a': np.ones((4, 5)), 'random': np.zeros(5)})
  ax = fig.axes[0]
  assert [line.get_label() for line in ax.lines] == ['a', 'random']
  with pytest.raises(ValueError, match='steps'):
    heatmaps.plot_deletion_curves(fractions, {'a': np.ones(3)})
  ranks = np.array([[1, 2], [2, 1], [3, np.nan]])
  fig = heatmaps.plot_ranking(['a', 'b', 'c'], ['m1', 'm2'], ranks,
                              ranks * 0.1, lows=ranks * 0.05,
                              highs=ranks * 0.2)
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert len(texts) == 5  # the NaN cell has no annotation
  with pytest.raises(ValueError, match='ranks and means'):
    heatmaps.plot_ranking(['a'], ['m1', 'm2'], ranks, ranks)
