"""12-lead ECG plots on standard ECG paper: grids, overlays and traversals.

The paper follows the clinical convention of 25 mm/s and 10 mm/mV: a 1-mm
minor square is 0.04 s by 0.1 mV, a 5-mm major square 0.2 s by 0.5 mV, and
every panel keeps that aspect so squares stay square. Axes are in seconds and
millivolts. With `scale=1` a saved figure printed at 100 % has true size.

Figures are `matplotlib.figure.Figure`s that pyplot does not manage, so nothing
needs a display. In every panel the traces are the only `Line2D`s
(`ax.lines`); paper grid and markers are `LineCollection`s and heat shading is
an image, and `ax.get_label()` is the panel's lead name.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Mapping, Sequence

import matplotlib
from matplotlib import axes as maxes
from matplotlib import cm
from matplotlib import collections as mcollections
from matplotlib import colors as mcolors
from matplotlib import figure as mfigure
from matplotlib import lines as mlines
from matplotlib import ticker
import numpy as np

# Kept here rather than imported from data.simulator so that plotting never
# imports JAX; the order is the project-wide lead order.
LEADS = (
  'I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6'
)
LAYOUTS = ('3x4', '6x2', '12x1')

MM_PER_S = 25.0  # paper speed
MM_PER_MV = 10.0  # gain
# matplotlib aspect = display length of 1 y unit / display length of 1 x unit.
PAPER_ASPECT = MM_PER_MV / MM_PER_S
MINOR_S, MINOR_MV = 0.04, 0.1
MAJOR_S, MAJOR_MV = 0.2, 0.5

_PAPER_BG = '#fff7f7'
_MINOR_COLOR = '#f6c4c4'
_MAJOR_COLOR = '#e58a8a'
_TRACE_COLORS = (
  'black', 'tab:blue', 'tab:red', 'tab:green', 'tab:orange', 'tab:purple',
  'tab:brown', 'tab:pink', 'tab:olive', 'tab:cyan',
)
_MARKER_COLORS = (
  'tab:blue', 'tab:green', 'tab:purple', 'tab:orange', 'tab:brown',
  'tab:cyan', 'tab:olive', 'tab:gray', 'tab:pink',
)
# Lead indices per column of the clinical layouts (panels run column-major).
_COLUMNS = {
  '3x4': ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)),
  '6x2': ((0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11)),
  '12x1': (tuple(range(12)),),
}
# Records at least this long are cut into one time segment per column, as
# printouts of a 10-s strip are; shorter ones (median beats) fill each panel.
_SEGMENT_MIN_S = 4.0
# Margins around the panel block, mm (before `scale`).
_MARGIN_MM = dict(left=16.0, right=5.0, bottom=12.0, top=5.0)
_TITLE_MM, _LEGEND_MM, _COLORBAR_MM = 6.0, 6.0, 22.0


@dataclasses.dataclass
class _Panel:
  """One axes of a figure: some traces of one lead over one time window."""

  row: int
  col: int
  lead: str
  time: np.ndarray  # [t] s
  traces: np.ndarray  # [n, t] mV
  xlim: tuple[float, float]
  colspan: int = 1
  heat: np.ndarray | None = None  # [t] in [0, 1]


def _as_records(x: Any, name: str, ndims: tuple[int, ...] = (2, 3)
                ) -> np.ndarray:
  """Returns `x` as float [n, T, 12]; raises ValueError on other shapes."""
  arr = np.asarray(x, dtype=np.float64)
  if arr.ndim not in ndims or arr.shape[-1] != len(LEADS):
    hint = ''
    if arr.ndim >= 2 and arr.shape[-2] == len(LEADS):
      hint = ' (arrays are channels-last: time before leads)'
    want = ' or '.join({2: '[T, 12]', 3: '[n, T, 12]'}[d] for d in ndims)
    raise ValueError(f'{name} must be {want}; got shape {arr.shape}{hint}.')
  if arr.ndim == 2:
    arr = arr[None]
  if arr.shape[0] < 1 or arr.shape[1] < 2:
    raise ValueError(f'{name} needs at least 1 trace of 2 samples; '
                     f'got shape {arr.shape}.')
  if not np.isfinite(arr).any():
    raise ValueError(f'{name} has no finite values.')
  return arr


def _check_fs(fs: float) -> float:
  if not (np.isscalar(fs) and np.isfinite(fs) and fs > 0):
    raise ValueError(f'fs must be a positive number of Hz; got {fs!r}.')
  return float(fs)


def _lead_indices(leads: Sequence[str]) -> list[int]:
  if isinstance(leads, str):
    leads = (leads,)
  unknown = [lead for lead in leads if lead not in LEADS]
  if unknown or not leads:
    raise ValueError(f'unknown or no leads {unknown}; choose from {LEADS}.')
  return [LEADS.index(lead) for lead in leads]


def _trace_colors(n: int, cmap: str | None, colors: Sequence[Any] | None
                  ) -> list[Any]:
  """Black first, then distinct colours; a colour map when given or n > 10."""
  if colors is not None:
    if len(colors) != n:
      raise ValueError(f'colors has {len(colors)} entries for {n} traces.')
    return list(colors)
  if cmap is None and n <= len(_TRACE_COLORS):
    return list(_TRACE_COLORS[:n])
  cmap_fn = matplotlib.colormaps[cmap or 'viridis']
  return [cmap_fn(v) for v in np.linspace(0.0, 1.0, n)]


def _row_ylims(rows: Sequence[np.ndarray], *, shared: bool = False,
               min_height: float = 1.5, pad: float = 0.15
               ) -> list[tuple[float, float]]:
  """Y limits (mV) per row, all rows equally tall in whole major squares.

  Equal heights keep every row on the same gain, as on a printout; each row is
  centred on its own data unless `shared`.
  """
  spans = []
  for data in rows:
    finite = np.asarray(data)[np.isfinite(data)]
    spans.append((finite.min(), finite.max()) if finite.size else (0.0, 0.0))
  if shared:
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    spans = [(lo, hi)] * len(spans)
  height = max(max(hi - lo for lo, hi in spans) + 2 * pad, min_height)
  height = math.ceil(height / MAJOR_MV - 1e-9) * MAJOR_MV
  ylims = []
  for lo, hi in spans:
    # Snap the bottom edge to a minor line; `pad` absorbs the rounding.
    bottom = round(((lo + hi) / 2 - height / 2) / MINOR_MV) * MINOR_MV
    ylims.append((bottom, bottom + height))
  return ylims


def _grid_lines(lo: float, hi: float, minor: float
                ) -> tuple[np.ndarray, np.ndarray]:
  """Minor and major (every 5th minor) line positions within [lo, hi]."""
  k = np.arange(math.ceil(lo / minor - 1e-6), math.floor(hi / minor + 1e-6) + 1)
  return k[k % 5 != 0] * minor, k[k % 5 == 0] * minor


def _draw_paper(ax: maxes.Axes, xlim: tuple[float, float],
                ylim: tuple[float, float]) -> None:
  """Pink 1-mm/5-mm grid, anchored at t = 0 s and 0 mV."""
  ax.set_facecolor(_PAPER_BG)
  x_minor, x_major = _grid_lines(*xlim, MINOR_S)
  y_minor, y_major = _grid_lines(*ylim, MINOR_MV)
  for xs, ys, color, width in ((x_minor, y_minor, _MINOR_COLOR, 0.3),
                               (x_major, y_major, _MAJOR_COLOR, 0.6)):
    segments = [((x, ylim[0]), (x, ylim[1])) for x in xs]
    segments += [((xlim[0], y), (xlim[1], y)) for y in ys]
    ax.add_collection(
      mcollections.LineCollection(segments, colors=color, linewidths=width,
                                  zorder=0.5),
      autolim=False)
  for spine in ax.spines.values():
    spine.set_color(_MAJOR_COLOR)
    spine.set_linewidth(0.6)


def _tick_step(span: float, steps: Sequence[tuple[float, float]]) -> float:
  for limit, step in steps:
    if span <= limit:
      return step
  return steps[-1][1]


def _edge_formatter(edge: float, margin: float) -> ticker.Formatter:
  """'%g' tick labels, blank within `margin` of `edge`."""
  return ticker.FuncFormatter(
    # Rounding drops float noise such as 5.6e-17 or -0 from tick values.
    lambda v, _: '' if abs(v - edge) <= margin else f'{round(v, 9) + 0.0:g}')


def _draw_heat(ax: maxes.Axes, time: np.ndarray, heat: np.ndarray,
               ylim: tuple[float, float], cmap: str, alpha: float, *,
               under: np.ndarray | None = None, signed: bool = False) -> None:
  """Shades the panel by `heat` in [0, 1].

  Unsigned heat: zero is fully transparent, one has opacity `alpha`. Signed
  heat (`signed=True`, 0.5 = zero relevance): opacity grows with the
  distance from 0.5. With `under` (the trace, [T]) only the area between the
  trace and 0 mV (at least a band of 6 % of the panel height along the
  trace) is coloured ("colour under the curve"); otherwise the whole panel
  height.
  """
  rgba = matplotlib.colormaps[cmap](heat)
  strength = np.abs(2.0 * heat - 1.0) if signed else heat
  rgba[:, 3] = strength * alpha
  dt = (time[-1] - time[0]) / max(len(time) - 1, 1)
  image = ax.imshow(
      rgba[None], extent=(time[0] - dt / 2, time[-1] + dt / 2, *ylim),
      aspect='auto', origin='lower', zorder=1)
  if under is not None:
    # At least a thin band along the trace, so relevance on the isoelectric
    # line (PR and ST segments) stays visible.
    d = 0.06 * (ylim[1] - ylim[0])
    base = np.where(under >= 0, np.minimum(0.0, under - d),
                    np.maximum(0.0, under + d))
    area = ax.fill_between(time, under, base, facecolor='none',
                           edgecolor='none', zorder=0)
    image.set_clip_path(area.get_paths()[0], transform=ax.transData)


def _draw_markers(ax: maxes.Axes, markers: Mapping[str, Any],
                  xlim: tuple[float, float], ylim: tuple[float, float],
                  with_names: bool) -> None:
  for i, (name, times) in enumerate(markers.items()):
    color = _MARKER_COLORS[i % len(_MARKER_COLORS)]
    ts = np.atleast_1d(np.asarray(times, dtype=np.float64)).ravel()
    ts = ts[(ts >= xlim[0]) & (ts <= xlim[1])]
    if not ts.size:
      continue
    ax.vlines(ts, *ylim, colors=color, linestyles='--', linewidth=0.8,
              zorder=2.5)
    if with_names:
      ax.text(ts[0], ylim[1], f' {name}', rotation=90, va='top', ha='right',
              fontsize=6, color=color, zorder=4)


def _new_figure_geometry(col_mm: Sequence[float], row_mm: Sequence[float],
                         gap_mm: tuple[float, float], *, top_mm: float,
                         right_mm: float, scale: float | None
                         ) -> tuple[mfigure.Figure, dict[str, Any],
                                    tuple[float, float]]:
  """A figure sized so panels of `col_mm` x `row_mm` millimetres fit exactly.

  Returns the figure, GridSpec keywords (fractions of the figure) and the
  figure's (width, height) in paper millimetres, i.e. before `scale`.
  """
  width = (_MARGIN_MM['left'] + right_mm + sum(col_mm)
           + gap_mm[0] * (len(col_mm) - 1))
  height = (_MARGIN_MM['bottom'] + top_mm + sum(row_mm)
            + gap_mm[1] * (len(row_mm) - 1))
  if scale is None:
    # Small figures (median beats) are enlarged for the screen, big ones kept
    # at true size.
    scale = max(1.0, min(180.0 / width, 280.0 / height))
  fig = mfigure.Figure(figsize=(width * scale / 25.4, height * scale / 25.4))
  gridspec_kw = dict(
    left=_MARGIN_MM['left'] / width,
    right=1.0 - right_mm / width,
    bottom=_MARGIN_MM['bottom'] / height,
    top=1.0 - top_mm / height,
    wspace=gap_mm[0] / np.mean(col_mm),
    hspace=gap_mm[1] / np.mean(row_mm),
    width_ratios=list(col_mm),
    height_ratios=list(row_mm),
  )
  return fig, gridspec_kw, (width, height)


def _render(
  panels: Sequence[_Panel],
  ylims: Sequence[tuple[float, float]],
  colors: Sequence[Any],
  *,
  gap_mm: tuple[float, float],
  paper: bool,
  ax_or_fig: mfigure.Figure | maxes.Axes | None,
  scale: float | None,
  title: str | None,
  labels: Sequence[str] | None,
  row_labels: Sequence[str] | None = None,
  markers: Mapping[str, Any] | None = None,
  heat_cmap: str = 'YlOrRd',
  heat_alpha: float = 0.6,
  heat_style: str = 'band',
  heat_signed: bool = False,
  linewidth: float = 0.8,
  colorbar: tuple[cm.ScalarMappable, str] | None = None,
) -> tuple[mfigure.Figure, list[maxes.Axes]]:
  """Draws `panels` on a grid of rows x columns; returns figure and axes."""
  nrows = max(p.row for p in panels) + 1
  ncols = max(p.col + p.colspan for p in panels)
  col_mm = [0.0] * ncols
  for p in panels:
    if p.colspan == 1:
      col_mm[p.col] = max(col_mm[p.col], (p.xlim[1] - p.xlim[0]) * MM_PER_S)
  row_mm = [(hi - lo) * MM_PER_MV for lo, hi in ylims]

  own_figure = ax_or_fig is None
  if own_figure:
    top_mm = (_MARGIN_MM['top'] + (_TITLE_MM if title else 0.0)
              + (_LEGEND_MM if labels else 0.0))
    right_mm = _MARGIN_MM['right'] + (_COLORBAR_MM if colorbar else 0.0)
    fig, gridspec_kw, fig_mm = _new_figure_geometry(
      col_mm, row_mm, gap_mm, top_mm=top_mm, right_mm=right_mm, scale=scale)
    grid = fig.add_gridspec(nrows, ncols, **gridspec_kw)
  elif isinstance(ax_or_fig, mfigure.Figure):
    fig = ax_or_fig
    grid = fig.add_gridspec(
      nrows, ncols, width_ratios=col_mm, height_ratios=row_mm,
      wspace=gap_mm[0] / np.mean(col_mm), hspace=gap_mm[1] / np.mean(row_mm))
  elif isinstance(ax_or_fig, maxes.Axes):
    spec = ax_or_fig.get_subplotspec()
    if spec is None:
      raise ValueError('ax_or_fig must be a subplot (made with add_subplot '
                       'or subplots) so its cell can hold the panel grid.')
    fig = ax_or_fig.figure
    ax_or_fig.remove()
    grid = spec.subgridspec(
      nrows, ncols, width_ratios=col_mm, height_ratios=row_mm,
      wspace=gap_mm[0] / np.mean(col_mm), hspace=gap_mm[1] / np.mean(row_mm))
  else:
    raise TypeError('ax_or_fig must be None, a Figure or an Axes; got '
                    f'{type(ax_or_fig).__name__}.')

  occupied = {(p.row, c) for p in panels
              for c in range(p.col, p.col + p.colspan)}
  axes = []
  for p in panels:
    ax = fig.add_subplot(grid[p.row, p.col:p.col + p.colspan])
    ax.set_label(p.lead)
    ylim = ylims[p.row]
    if p.heat is not None:
      _draw_heat(ax, p.time, p.heat, ylim, heat_cmap, heat_alpha,
                 under=p.traces[0] if heat_style == 'under' else None,
                 signed=heat_signed)
    for trace, color in zip(p.traces, colors):
      ax.plot(p.time, trace, color=color, linewidth=linewidth, zorder=3)
    if markers:
      _draw_markers(ax, markers, p.xlim, ylim, with_names=p.row == 0)
    ax.set_xlim(p.xlim)
    ax.set_ylim(ylim)
    ax.text(0.015, 0.96, p.lead, transform=ax.transAxes, va='top', ha='left',
            fontsize=8, fontweight='bold', zorder=5)

    span = p.xlim[1] - p.xlim[0]
    ax.xaxis.set_major_locator(ticker.MultipleLocator(
      _tick_step(span, ((1.6, 0.2), (4.0, 0.4), (12.0, 1.0), (30.0, 2.0),
                        (math.inf, 5.0)))))
    ax.yaxis.set_major_locator(ticker.MultipleLocator(
      _tick_step(ylim[1] - ylim[0], ((5.0, 0.5), (math.inf, 1.0)))))
    # A label on the right (top) edge would run into the next panel's first
    # (the panel above's last) one.
    right_edge = (p.xlim[1] if (p.row, p.col + p.colspan) in occupied
                  else math.inf)
    top_edge = ylim[1] if (p.row - 1, p.col) in occupied else math.inf
    ax.xaxis.set_major_formatter(_edge_formatter(right_edge, 1e-9))
    ax.yaxis.set_major_formatter(
      _edge_formatter(top_edge, 0.1 * (ylim[1] - ylim[0])))
    # Tick labels only on outer edges: inner panels abut or share scales.
    below = {(p.row + 1, c) for c in range(p.col, p.col + p.colspan)}
    bottom = not (below & occupied)
    ax.tick_params(labelsize=6.5, colors='0.3')
    ax.tick_params(axis='x', labelbottom=bottom, length=2 if bottom else 0)
    ax.tick_params(axis='y', labelleft=p.col == 0,
                   length=2 if p.col == 0 else 0)
    if bottom and p.col == 0:
      ax.set_xlabel('Time (s)', fontsize=7)
    if p.col == 0:
      ax.set_ylabel(row_labels[p.row] if row_labels else 'mV', fontsize=7)
    if paper:
      _draw_paper(ax, p.xlim, ylim)
      ax.set_aspect(PAPER_ASPECT, adjustable='box')
    else:
      ax.grid(True, color='0.9', linewidth=0.5, zorder=0)
    axes.append(ax)

  if own_figure:
    width_mm, height_mm = fig_mm
    if title:
      fig.suptitle(title, y=1.0 - 2.0 / height_mm, va='top', fontsize=10)
    if labels:
      handles = [mlines.Line2D([], [], color=c, linewidth=1.5) for c in colors]
      fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 6),
                 frameon=False, fontsize=8,
                 bbox_to_anchor=(0.5, gridspec_kw['top'] + 0.5 / height_mm))
    if colorbar:
      cax = fig.add_axes((
        gridspec_kw['right'] + 4.0 / width_mm, gridspec_kw['bottom'],
        3.0 / width_mm, gridspec_kw['top'] - gridspec_kw['bottom']))
      cbar = fig.colorbar(colorbar[0], cax=cax)
      cbar.set_label(colorbar[1], fontsize=8)
      cbar.ax.tick_params(labelsize=7)
  else:
    if title:
      axes[0].set_title(title, fontsize=9, loc='left')
    if labels:
      handles = [mlines.Line2D([], [], color=c, linewidth=1.5) for c in colors]
      axes[0].legend(handles, labels, loc='upper right', fontsize=7)
    if colorbar:
      cbar = fig.colorbar(colorbar[0], ax=axes, fraction=0.03, pad=0.02)
      cbar.set_label(colorbar[1], fontsize=8)
  return fig, axes


def _check_heat(heat: Any, num_samples: int) -> np.ndarray | None:
  """Returns heat as [T, 12] in [0, 1]; raises ValueError otherwise."""
  if heat is None:
    return None
  arr = np.asarray(heat, dtype=np.float64)
  if arr.ndim == 1 and arr.shape[0] == num_samples:
    arr = arr[:, None]
  if (arr.ndim != 2 or arr.shape[0] != num_samples
      or arr.shape[1] not in (1, len(LEADS))):
    raise ValueError(f'heat must be [T] or [T, 12] with T = {num_samples}; '
                     f'got shape {np.shape(heat)}.')
  if not np.isfinite(arr).all():
    raise ValueError('heat has non-finite values.')
  if arr.min() < -1e-6 or arr.max() > 1.0 + 1e-6:
    raise ValueError(f'heat must lie in [0, 1] (normalise attributions first); '
                     f'got range [{arr.min():.3g}, {arr.max():.3g}].')
  return np.broadcast_to(np.clip(arr, 0.0, 1.0), (num_samples, len(LEADS)))


def _check_values(values: Any, num_steps: int) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.shape != (num_steps,) or not np.isfinite(arr).all():
    raise ValueError(f'values must be {num_steps} finite numbers, one per '
                     f'traversal step; got shape {arr.shape}.')
  return arr


def plot_ecg(
  ecg: Any,
  fs: float = 500.0,
  layout: str = '3x4',
  overlays: Any = None,
  labels: Sequence[str] | None = None,
  title: str | None = None,
  ax_or_fig: mfigure.Figure | maxes.Axes | None = None,
  paper: bool = True,
  *,
  markers: Mapping[str, Any] | None = None,
  heat: Any = None,
  heat_cmap: str = 'YlOrRd',
  heat_alpha: float = 0.6,
  heat_style: str = 'band',
  heat_signed: bool = False,
  rhythm_lead: str | None = 'II',
  segmented: bool | None = None,
  leads: Sequence[str] | None = None,
  colors: Sequence[Any] | None = None,
  cmap: str | None = None,
  linewidth: float = 0.8,
  scale: float | None = None,
) -> mfigure.Figure:
  """Plots a 12-lead ECG (or several overlaid) in a clinical layout.

  Layouts: '3x4' has columns I-II-III, aVR-aVL-aVF, V1-V3, V4-V6; '6x2' has
  limb leads left and chest leads right; '12x1' stacks all leads. A record of
  at least 4 s (a 10-s strip) is cut into one consecutive time segment per
  column, as printouts do, with a full-length rhythm strip of `rhythm_lead`
  underneath; a shorter one (a 600-sample median beat) is shown whole in every
  panel.

  Args:
    ecg: [T, 12] or [n, T, 12] in mV, lead order I, II, III, aVR, aVL, aVF,
      V1-V6; n records are overlaid.
    fs: sampling rate, Hz.
    layout: one of LAYOUTS.
    overlays: optional [T, 12] or [m, T, 12], mV, drawn on top of `ecg` (for
      example a reconstruction over its input).
    labels: legend names, one per trace of `ecg` then `overlays`.
    title: figure title.
    ax_or_fig: draw into this Figure, or into the cell of this subplot (which
      is removed); None makes a new figure sized to the paper scale.
    paper: pink ECG paper at 25 mm/s and 10 mm/mV with square grid squares;
      False gives plain axes with a free aspect.
    markers: name -> time(s) in seconds (a number or an array), drawn as
      dashed vertical lines, e.g. fiducial points.
    heat: [T] (all leads) or [T, 12] values in [0, 1] shaded behind the trace
      with `heat_cmap`, alpha `heat_alpha` * value, e.g. attribution maps.
    heat_cmap: matplotlib colour map name for `heat`.
    heat_alpha: opacity of the shading where heat is 1.
    heat_style: 'band' shades the full panel height behind the trace;
      'under' colours only the area between the (first) trace and 0 mV.
    heat_signed: heat is signed relevance mapped to [0, 1] (0.5 = none, as
      `viz.heatmaps.attribution_heat(mode='signed')` gives); opacity then
      grows with |heat - 0.5|; use a diverging `heat_cmap`.
    rhythm_lead: lead of the rhythm strip under a segmented grid; None for
      none.
    segmented: force (True) or forbid (False) time segments per column;
      None decides by duration.
    leads: with layout '12x1' only, the leads to stack (default all 12).
    colors: one matplotlib colour per trace (overrides `cmap`).
    cmap: colour map name for the traces; default black, then distinct
      colours for up to 10 traces and viridis for more.
    linewidth: trace width, points.
    scale: figure size factor; 1 is true paper size, None picks >= 1 so
      small figures are readable on screen.

  Returns:
    The figure. Each lead panel's `get_label()` is its lead name; the rhythm
    strip is the last axes.

  Raises:
    ValueError: on wrong shapes, an unknown layout or lead, or heat outside
      [0, 1].
  """
  fs = _check_fs(fs)
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}; got {layout!r}.')
  traces = _as_records(ecg, 'ecg')
  if overlays is not None:
    extra = _as_records(overlays, 'overlays')
    if extra.shape[1] != traces.shape[1]:
      raise ValueError(f'overlays have {extra.shape[1]} samples, ecg has '
                       f'{traces.shape[1]}.')
    traces = np.concatenate([traces, extra])
  num_traces, num_samples, _ = traces.shape
  if labels is not None:
    labels = [str(label) for label in labels]
    if len(labels) != num_traces:
      raise ValueError(f'{len(labels)} labels for {num_traces} traces.')
  colors = _trace_colors(num_traces, cmap, colors)
  heat_arr = _check_heat(heat, num_samples)
  if markers is not None and not isinstance(markers, Mapping):
    raise ValueError('markers must be a dict name -> time(s) in seconds.')
  if heat_style not in ('band', 'under'):
    raise ValueError(f"heat_style must be 'band' or 'under'; got "
                     f'{heat_style!r}.')

  columns = _COLUMNS[layout]
  if leads is not None:
    if layout != '12x1':
      raise ValueError("leads= selects the rows of layout '12x1' only.")
    columns = (tuple(_lead_indices(leads)),)
  ncols, nrows = len(columns), len(columns[0])
  if segmented is None:
    segmented = num_samples / fs >= _SEGMENT_MIN_S
  segmented = bool(segmented) and ncols > 1
  edges = np.linspace(0, num_samples, ncols + 1).round().astype(int)
  time = np.arange(num_samples) / fs

  panels = []
  for c, column in enumerate(columns):
    start, stop = (edges[c], edges[c + 1]) if segmented else (0, num_samples)
    # One extra sample joins the trace to the next column's.
    window = slice(start, min(stop + 1, num_samples))
    for r, lead in enumerate(column):
      panels.append(_Panel(
        row=r, col=c, lead=LEADS[lead], time=time[window],
        traces=traces[:, window, lead], xlim=(start / fs, stop / fs),
        heat=None if heat_arr is None else heat_arr[window, lead]))
  row_data = [traces[:, :, [column[r] for column in columns]]
              for r in range(nrows)]
  if segmented and rhythm_lead is not None:
    lead = _lead_indices(rhythm_lead)[0]
    panels.append(_Panel(
      row=nrows, col=0, colspan=ncols, lead=LEADS[lead], time=time,
      traces=traces[:, :, lead], xlim=(0.0, num_samples / fs),
      heat=None if heat_arr is None else heat_arr[:, lead]))
    row_data.append(traces[:, :, lead])

  # Panels of a segmented strip abut like one sheet of paper.
  gap = 0.0 if segmented or ncols == 1 else 3.0
  fig, _ = _render(
    panels, _row_ylims(row_data), colors, gap_mm=(gap, gap), paper=paper,
    ax_or_fig=ax_or_fig, scale=scale, title=title, labels=labels,
    markers=markers, heat_cmap=heat_cmap, heat_alpha=heat_alpha,
    heat_style=heat_style, heat_signed=heat_signed, linewidth=linewidth)
  return fig


def _value_colormap(values: np.ndarray, cmap: str
                    ) -> tuple[cm.ScalarMappable, list[Any]]:
  norm = mcolors.Normalize(vmin=values.min(), vmax=values.max())
  mappable = cm.ScalarMappable(norm=norm, cmap=matplotlib.colormaps[cmap])
  return mappable, [mappable.to_rgba(v) for v in values]


def plot_traversal(
  beats: Any,
  values: Any,
  factor_name: str = 'factor',
  leads: Sequence[str] = LEADS,
  fs: float = 500.0,
  *,
  cmap: str = 'coolwarm',
  value_label: str | None = None,
  title: str | None = None,
  ax_or_fig: mfigure.Figure | maxes.Axes | None = None,
  paper: bool = True,
  linewidth: float = 1.0,
  scale: float | None = None,
) -> mfigure.Figure:
  """Overlays beats decoded along one factor, coloured by the factor value.

  Args:
    beats: [n_steps, T, 12] in mV, the decoder's output at each value.
    values: [n_steps] factor values (e.g. -3..3 posterior SD).
    factor_name: name for the title and colour bar.
    leads: leads to show; all 12 give the 3x4 clinical grid, up to 6 a single
      row, otherwise 3 rows filled column by column.
    fs: sampling rate, Hz.
    cmap: colour map for the values.
    value_label: colour-bar label (default `factor_name`).
    title: figure title (default '<factor_name> traversal').
    ax_or_fig: as in `plot_ecg`.
    paper: as in `plot_ecg`.
    linewidth: trace width, points.
    scale: as in `plot_ecg`.

  Returns:
    The figure: one panel per lead with n_steps lines each, and a colour bar.

  Raises:
    ValueError: on wrong shapes or unknown leads.
  """
  fs = _check_fs(fs)
  traces = _as_records(beats, 'beats', ndims=(3,))
  values = _check_values(values, traces.shape[0])
  lead_idx = _lead_indices(leads)
  mappable, colors = _value_colormap(values, cmap)
  nrows = 1 if len(lead_idx) <= 6 else 3
  time = np.arange(traces.shape[1]) / fs
  xlim = (0.0, traces.shape[1] / fs)
  panels = [
    _Panel(row=i % nrows, col=i // nrows, lead=LEADS[lead], time=time,
           traces=traces[:, :, lead], xlim=xlim)
    for i, lead in enumerate(lead_idx)
  ]
  row_data = [traces[:, :, lead_idx[r::nrows]] for r in range(nrows)]
  fig, _ = _render(
    panels, _row_ylims(row_data), colors, gap_mm=(3.0, 3.0), paper=paper,
    ax_or_fig=ax_or_fig, scale=scale,
    title=f'{factor_name} traversal' if title is None else title,
    labels=None, linewidth=linewidth,
    colorbar=(mappable, value_label or factor_name))
  return fig


def plot_traversal_grid(
  traversals: Mapping[str, Any],
  values: Any,
  leads: Sequence[str] = ('I', 'II', 'V1', 'V5'),
  fs: float = 500.0,
  *,
  cmap: str = 'coolwarm',
  value_label: str = 'factor value',
  title: str | None = None,
  ax_or_fig: mfigure.Figure | maxes.Axes | None = None,
  paper: bool = True,
  linewidth: float = 1.0,
  scale: float | None = None,
) -> mfigure.Figure:
  """Traversals of several factors: one row per factor, one column per lead.

  All panels share one mV scale, so rows can be compared by eye.

  Args:
    traversals: factor name -> [n_steps, T, 12] beats in mV, all one shape.
    values: [n_steps] factor values shared by all rows (e.g. -3..3 SD).
    leads: leads to show, one column each.
    fs: sampling rate, Hz.
    cmap: colour map for the values.
    value_label: colour-bar label.
    title: figure title.
    ax_or_fig: as in `plot_ecg`.
    paper: as in `plot_ecg`.
    linewidth: trace width, points.
    scale: as in `plot_ecg`.

  Returns:
    The figure with len(traversals) * len(leads) panels and a colour bar.

  Raises:
    ValueError: on an empty dict, mismatched shapes or unknown leads.
  """
  fs = _check_fs(fs)
  if not isinstance(traversals, Mapping) or not traversals:
    raise ValueError('traversals must be a non-empty dict name -> '
                     '[n_steps, T, 12].')
  names = list(traversals)
  arrays = [_as_records(traversals[n], f'traversals[{n!r}]', ndims=(3,))
            for n in names]
  for name, arr in zip(names, arrays):
    if arr.shape != arrays[0].shape:
      raise ValueError(f'traversals[{name!r}] has shape {arr.shape}, '
                       f'traversals[{names[0]!r}] has {arrays[0].shape}.')
  values = _check_values(values, arrays[0].shape[0])
  lead_idx = _lead_indices(leads)
  mappable, colors = _value_colormap(values, cmap)
  time = np.arange(arrays[0].shape[1]) / fs
  xlim = (0.0, arrays[0].shape[1] / fs)
  panels = [
    _Panel(row=r, col=c, lead=LEADS[lead], time=time,
           traces=arr[:, :, lead], xlim=xlim)
    for r, arr in enumerate(arrays) for c, lead in enumerate(lead_idx)
  ]
  ylims = _row_ylims([arr[:, :, lead_idx] for arr in arrays], shared=True)
  fig, _ = _render(
    panels, ylims, colors, gap_mm=(3.0, 3.0), paper=paper,
    ax_or_fig=ax_or_fig, scale=scale, title=title, labels=None,
    row_labels=[f'{name}\n(mV)' for name in names], linewidth=linewidth,
    colorbar=(mappable, value_label))
  return fig


def save_figure(fig: mfigure.Figure, path: str | pathlib.Path,
                dpi: int = 150, **savefig_kwargs: Any) -> pathlib.Path:
  """Writes `fig` (PNG unless the suffix says otherwise) and closes it.

  Args:
    fig: the figure.
    path: output file; parent folders are created; '.png' is added when the
      name has no suffix.
    dpi: resolution, dots per inch.
    **savefig_kwargs: passed to `Figure.savefig`.

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  if not path.suffix:
    path = path.with_suffix('.png')
  path.parent.mkdir(parents=True, exist_ok=True)
  savefig_kwargs.setdefault('facecolor', 'white')
  fig.savefig(path, dpi=dpi, **savefig_kwargs)
  if fig.canvas.manager is not None:
    # Only pyplot-made figures have a manager; release them from pyplot.
    from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
    pyplot.close(fig)
  else:
    fig.clear()
  return path
