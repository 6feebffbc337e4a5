"""Tests for the 12-lead ECG plots (layouts, overlays, paper scale, errors)."""

import numpy as np
import pytest
from matplotlib import collections as mcollections
from matplotlib import colors as mcolors
from matplotlib import figure as mfigure
from matplotlib.backends import backend_agg

from factorecg_jax.viz import ecg_plot

FS = 500


def _beats(n=None, num_samples=600, seed=0):
  """Gaussian 'QRS' on a slow sine, a different amplitude per lead, mV."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / FS
  amps = np.linspace(-1.0, 2.0, 12)
  x = (amps * np.exp(-(((t - 0.45) / 0.02) ** 2))[:, None]
       + 0.2 * np.sin(2 * np.pi * 1.5 * t)[:, None])
  if n is None:
    return x
  return x[None] * rng.uniform(0.5, 1.5, size=(n, 1, 12))


def _lead_axes(fig):
  return [ax for ax in fig.axes if ax.get_label() in ecg_plot.LEADS]


def _texts(ax):
  return [t.get_text() for t in ax.texts]


@pytest.mark.parametrize('layout,shape', [('3x4', (3, 4)), ('6x2', (6, 2)),
                                          ('12x1', (12, 1))])
def test_beat_layouts_have_one_panel_per_lead(layout, shape):
  fig = ecg_plot.plot_ecg(_beats(), layout=layout, title='beat')
  axes = _lead_axes(fig)
  assert len(fig.axes) == len(axes) == 12
  assert sorted(ax.get_label() for ax in axes) == sorted(ecg_plot.LEADS)
  for ax in axes:
    assert ax.get_label() in _texts(ax)  # lead name drawn in the panel
    assert len(ax.lines) == 1
    # A median beat is shown whole in every panel.
    np.testing.assert_allclose(ax.get_xlim(), (0.0, 600 / FS))
  # Panels sit on an nrows x ncols grid: distinct column and row positions.
  fig.canvas = backend_agg.FigureCanvasAgg(fig)
  fig.canvas.draw()
  x0 = {round(ax.get_position().x0, 3) for ax in axes}
  y0 = {round(ax.get_position().y0, 3) for ax in axes}
  assert (len(y0), len(x0)) == shape


def test_3x4_column_order_is_clinical():
  fig = ecg_plot.plot_ecg(_beats())
  axes = _lead_axes(fig)
  pos = {ax.get_label(): ax.get_subplotspec().get_topmost_subplotspec()
         .get_geometry()[2] for ax in axes}
  order = [lead for lead, _ in sorted(pos.items(), key=lambda kv: kv[1])]
  # Grid cells are numbered row-major: row 1 reads I, aVR, V1, V4.
  assert order == ['I', 'aVR', 'V1', 'V4', 'II', 'aVL', 'V2', 'V5',
                   'III', 'aVF', 'V3', 'V6']


def test_strip_is_segmented_with_rhythm_strip():
  strip = np.tile(_beats(num_samples=500), (10, 1))  # [5000, 12], 10 s
  fig = ecg_plot.plot_ecg(strip, layout='3x4')
  assert len(fig.axes) == 13
  rhythm = fig.axes[-1]
  assert rhythm.get_label() == 'II'
  np.testing.assert_allclose(rhythm.get_xlim(), (0.0, 10.0))
  np.testing.assert_allclose(rhythm.lines[0].get_ydata(), strip[:, 1])
  # Column c of the grid shows the c-th 2.5-s segment of its leads.
  for ax in fig.axes[:12]:
    lead = ecg_plot.LEADS.index(ax.get_label())
    col = lead // 3
    np.testing.assert_allclose(ax.get_xlim(), (2.5 * col, 2.5 * (col + 1)))
    t = ax.lines[0].get_xdata()
    assert t[0] == pytest.approx(2.5 * col)
    # The trace runs to the panel edge, joining the next column's trace.
    assert t[-1] == pytest.approx(min(2.5 * (col + 1), 4999 / FS))
    np.testing.assert_allclose(ax.lines[0].get_ydata(),
                               strip[np.round(t * FS).astype(int), lead])
  fig = ecg_plot.plot_ecg(strip, layout='3x4', rhythm_lead=None)
  assert len(fig.axes) == 12


def test_overlays_draw_one_line_per_trace_with_legend():
  ecg = _beats(n=3)
  fig = ecg_plot.plot_ecg(ecg, overlays=_beats(), layout='6x2',
                          labels=['a', 'b', 'c', 'recon'])
  for ax in _lead_axes(fig):
    assert len(ax.lines) == 4
    np.testing.assert_allclose(
      ax.lines[1].get_ydata(), ecg[1, :, ecg_plot.LEADS.index(ax.get_label())])
    colors = {mcolors.to_hex(line.get_color()) for line in ax.lines}
    assert len(colors) == 4
  legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend_texts == ['a', 'b', 'c', 'recon']


def test_colormap_overlays_follow_the_map():
  fig = ecg_plot.plot_ecg(_beats(n=5), cmap='viridis')
  lines = _lead_axes(fig)[0].lines
  np.testing.assert_allclose(mcolors.to_rgba(lines[0].get_color()),
                             mcolors.to_rgba('#440154'), atol=0.01)
  np.testing.assert_allclose(mcolors.to_rgba(lines[-1].get_color()),
                             mcolors.to_rgba('#fde725'), atol=0.01)


def test_paper_squares_are_square_and_true_size():
  dpi = 100
  fig = ecg_plot.plot_ecg(_beats(), scale=1.0)
  fig.set_dpi(dpi)
  fig.canvas = backend_agg.FigureCanvasAgg(fig)
  fig.canvas.draw()
  for ax in _lead_axes(fig):
    origin, corner = ax.transData.transform([(0.0, 0.0), (0.2, 0.5)])
    width_px, height_px = corner - origin
    # One major square: 0.2 s by 0.5 mV, 5 mm by 5 mm at 25 mm/s, 10 mm/mV.
    assert height_px == pytest.approx(width_px, rel=0.01)
    assert width_px == pytest.approx(5.0 / 25.4 * dpi, rel=0.01)
    assert ax.get_aspect() == pytest.approx(0.4)


def test_paper_grid_lines_on_minor_and_major_steps():
  fig = ecg_plot.plot_ecg(_beats())
  ax = _lead_axes(fig)[0]
  grids = [c for c in ax.collections
           if isinstance(c, mcollections.LineCollection)]
  assert len(grids) == 2  # minor, major
  minor, major = grids
  vertical = lambda c: sorted(  # noqa: E731
    s[0, 0] for s in c.get_segments() if s[0, 0] == s[1, 0])
  major_x = np.array(vertical(major))
  np.testing.assert_allclose(major_x, np.arange(0.0, 1.2001, 0.2), atol=1e-9)
  minor_x = np.array(vertical(minor))
  assert len(minor_x) == 31 - 7  # lines every 0.04 s in [0, 1.2], less major
  np.testing.assert_allclose(np.diff(np.sort(np.r_[minor_x, major_x])), 0.04,
                             atol=1e-9)
  assert len(ax.lines) == 1  # the grid adds no Line2D


def test_plain_axes_without_paper():
  fig = ecg_plot.plot_ecg(_beats(), paper=False)
  ax = _lead_axes(fig)[0]
  assert ax.get_aspect() == 'auto'
  assert not ax.collections


def test_markers_and_heat():
  heat = np.zeros((600, 12))
  heat[200:260, 1] = 1.0
  fig = ecg_plot.plot_ecg(_beats(), markers={'QRS on': 0.4, 'T': [0.7, 0.9]},
                          heat=heat, heat_alpha=0.5)
  ax = next(ax for ax in fig.axes if ax.get_label() == 'II')
  assert len(ax.lines) == 1
  marker_x = sorted(seg[0, 0] for c in ax.collections[:-2]
                    for seg in c.get_segments())
  np.testing.assert_allclose(marker_x, [0.4, 0.7, 0.9])
  (image,) = ax.images
  alpha = image.get_array()[0, :, 3]
  np.testing.assert_allclose(alpha[200:260], 0.5)
  np.testing.assert_allclose(alpha[:200], 0.0)
  # Top-row panels carry the marker names; lower rows do not.
  top = next(ax for ax in fig.axes if ax.get_label() == 'I')
  assert ' QRS on' in _texts(top) and ' QRS on' not in _texts(ax)


def test_draws_into_existing_subplot():
  fig = mfigure.Figure(figsize=(12, 8))
  ax_left, ax_right = fig.subplots(1, 2)
  out = ecg_plot.plot_ecg(_beats(), ax_or_fig=ax_right, layout='6x2')
  assert out is fig
  assert ax_right not in fig.axes and ax_left in fig.axes
  assert len(fig.axes) == 13
  ecg_plot.plot_ecg(_beats(), ax_or_fig=mfigure.Figure(), layout='12x1',
                    leads=('II', 'V5'))


def test_traversal_colours_by_value_with_colorbar():
  values = np.linspace(-3.0, 3.0, 7)
  beats = _beats(n=7)
  fig = ecg_plot.plot_traversal(beats, values, factor_name='qrs_amp')
  axes = _lead_axes(fig)
  assert len(axes) == 12 and len(fig.axes) == 13  # + colour bar
  cmap = ecg_plot.matplotlib.colormaps['coolwarm']
  for ax in axes:
    assert len(ax.lines) == 7
    np.testing.assert_allclose(mcolors.to_rgba(ax.lines[0].get_color()),
                               cmap(0.0))
    np.testing.assert_allclose(mcolors.to_rgba(ax.lines[-1].get_color()),
                               cmap(1.0))
  assert fig.axes[-1].get_ylabel() == 'qrs_amp'
  fig = ecg_plot.plot_traversal(beats, values, leads=('II', 'V1'))
  assert [ax.get_label() for ax in _lead_axes(fig)] == ['II', 'V1']


def test_traversal_grid_rows_by_factor_columns_by_lead():
  values = np.linspace(-2.0, 2.0, 5)
  traversals = {f'f{i}': _beats(n=5, seed=i) for i in range(3)}
  fig = ecg_plot.plot_traversal_grid(traversals, values,
                                     leads=('I', 'II', 'V1', 'V5'))
  axes = _lead_axes(fig)
  assert len(axes) == 12 and len(fig.axes) == 13
  assert [ax.get_label() for ax in axes[:4]] == ['I', 'II', 'V1', 'V5']
  assert all(len(ax.lines) == 5 for ax in axes)
  assert axes[4].get_ylabel().startswith('f1')
  assert len({ax.get_ylim() for ax in axes}) == 1  # one shared mV scale
  with pytest.raises(ValueError, match='shape'):
    ecg_plot.plot_traversal_grid({'a': _beats(n=5), 'b': _beats(n=4)}, values)
  with pytest.raises(ValueError, match='non-empty'):
    ecg_plot.plot_traversal_grid({}, values)


def test_save_figure_writes_png_and_creates_dirs(tmp_path):
  path = ecg_plot.save_figure(ecg_plot.plot_ecg(_beats()),
                              tmp_path / 'a' / 'b' / 'beat', dpi=60)
  assert path.suffix == '.png'
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000


@pytest.mark.parametrize('kwargs,match', [
  (dict(ecg=np.zeros((12, 600))), 'channels-last'),
  (dict(ecg=np.zeros((600, 8))), r'\[T, 12\]'),
  (dict(ecg=np.zeros((2, 2, 600, 12))), 'shape'),
  (dict(ecg=np.full((600, 12), np.nan)), 'finite'),
  (dict(layout='4x3'), 'layout'),
  (dict(overlays=np.zeros((500, 12))), 'samples'),
  (dict(labels=['a', 'b']), 'labels'),
  (dict(heat=np.zeros(599)), 'heat'),
  (dict(heat=np.full(600, 1.5)), r'\[0, 1\]'),
  (dict(rhythm_lead='II*', ecg=np.zeros((5000, 12))), 'leads'),
  (dict(leads=('I',)), '12x1'),
  (dict(fs=0.0), 'fs'),
  (dict(markers=[0.4]), 'markers'),
])
def test_bad_inputs_raise_value_error(kwargs, match):
  kwargs = dict(ecg=_beats()) | kwargs
  with pytest.raises(ValueError, match=match):
    ecg_plot.plot_ecg(**kwargs)


def test_traversal_bad_inputs():
  with pytest.raises(ValueError, match=r'\[n, T, 12\]'):
    ecg_plot.plot_traversal(_beats(), np.zeros(600))
  with pytest.raises(ValueError, match='values'):
    ecg_plot.plot_traversal(_beats(n=3), np.zeros(4))
  with pytest.raises(ValueError, match='leads'):
    ecg_plot.plot_traversal(_beats(n=3), np.zeros(3), leads=('V7',))


def test_simulated_default_beat(tmp_path):
  # Imported here: the simulator pulls in JAX, which nothing else needs.
  # pylint: disable=g-import-not-at-top
  import jax
  from factorecg_jax.data import simulator

  # One jitted call compiles in ~1 s; eager op-by-op dispatch takes ~10 s.
  beat = np.asarray(jax.jit(simulator.clean_beat)(simulator.default_factors()))
  fig = ecg_plot.plot_ecg(beat, markers={'QRS onset': 0.4},
                          title='default factors')
  for ax in _lead_axes(fig):
    lo, hi = ax.get_ylim()
    trace = ax.lines[0].get_ydata()
    assert lo < trace.min() and trace.max() < hi  # nothing clipped
  path = ecg_plot.save_figure(fig, tmp_path / 'default_beat.png', dpi=50)
  assert path.stat().st_size > 5_000
