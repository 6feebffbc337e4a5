"""Summary figures and Markdown tables for a data set: factors, labels.

Generic helpers: arrays and names in, matplotlib figures or strings out. The
figures are `matplotlib.figure.Figure`s that pyplot does not manage; write them
with `ecg_plot.save_figure`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

from matplotlib import figure as mfigure
import numpy as np


def _check_matrix(x: Any, names: Sequence[str], what: str) -> np.ndarray:
  """Returns `x` as a 2-D array [n, len(names)]; raises ValueError if not."""
  arr = np.asarray(x)
  if arr.ndim == 1 and len(names) == 1:
    arr = arr[:, None]
  if arr.ndim != 2 or arr.shape[1] != len(names) or arr.shape[0] < 1:
    raise ValueError(f'{what} must be [n, {len(names)}] (one column per name, '
                     f'n >= 1); got shape {arr.shape}.')
  return arr


def _panel_figure(k: int, ncols: int, panel_in: tuple[float, float]
                  ) -> tuple[mfigure.Figure, list[Any]]:
  """A figure with exactly `k` axes on a grid of `ncols` columns."""
  ncols = max(1, min(ncols, k))
  nrows = math.ceil(k / ncols)
  fig = mfigure.Figure(
    figsize=(panel_in[0] * ncols, panel_in[1] * nrows + 0.4),
    layout='constrained')
  grid = fig.add_gridspec(nrows, ncols)
  return fig, [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(k)]


def plot_factor_histograms(
  factors: Any,
  names: Sequence[str],
  *,
  bins: int = 30,
  ncols: int = 4,
  low: Any = None,
  high: Any = None,
  title: str | None = None,
) -> mfigure.Figure:
  """One histogram per factor, with mean and SD in the panel.

  Args:
    factors: [n, k] factor values (e.g. the simulator's ground truth).
    names: k factor names, used as panel titles.
    bins: histogram bins.
    ncols: panels per row.
    low: optional [k] lower bounds, drawn as dashed lines (e.g. FACTOR_LOW).
    high: optional [k] upper bounds, likewise.
    title: figure title.

  Returns:
    A figure with k axes.

  Raises:
    ValueError: if shapes disagree.
  """
  names = list(names)
  values = _check_matrix(factors, names, 'factors').astype(np.float64)
  bounds = []
  for bound, what in ((low, 'low'), (high, 'high')):
    if bound is not None:
      bound = np.asarray(bound, dtype=np.float64).ravel()
      if bound.shape != (len(names),):
        raise ValueError(f'{what} must have {len(names)} entries; got '
                         f'{bound.shape}.')
      bounds.append(bound)
  fig, axes = _panel_figure(len(names), ncols, (2.4, 1.8))
  for j, (ax, name) in enumerate(zip(axes, names)):
    column = values[:, j][np.isfinite(values[:, j])]
    ax.hist(column, bins=bins, color='tab:blue', alpha=0.8)
    for bound in bounds:
      ax.axvline(bound[j], color='0.3', linestyle='--', linewidth=0.8)
    ax.set_title(name, fontsize=9)
    if column.size:
      ax.set_xlabel(f'mean {column.mean():.3g}, SD {column.std():.2g}',
                    fontsize=7)
    ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def prevalence_table(labels: Any, names: Sequence[str]) -> list[dict[str, Any]]:
  """Counts and prevalence of each binary label.

  Args:
    labels: [n, L] bool (or 0/1) label matrix.
    names: L label names.

  Returns:
    L rows {'label': name, 'count': positives (int), 'n': records (int),
    'percent': 100 * count / n (float)}, in the order of `names`.

  Raises:
    ValueError: if the shape disagrees with `names` or values are not 0/1.
  """
  names = list(names)
  arr = _check_matrix(labels, names, 'labels')
  if arr.dtype != bool:
    if not np.isin(arr, (0, 1)).all():
      raise ValueError('labels must be boolean or 0/1.')
    arr = arr.astype(bool)
  counts = arr.sum(axis=0)
  n = arr.shape[0]
  return [
    {'label': name, 'count': int(c), 'n': int(n), 'percent': 100.0 * c / n}
    for name, c in zip(names, counts)
  ]


def plot_label_prevalence(
  labels: Any,
  names: Sequence[str],
  *,
  sort: bool = True,
  title: str | None = None,
) -> mfigure.Figure:
  """Horizontal bars of label prevalence, each annotated with its percentage.

  Args:
    labels: [n, L] bool label matrix.
    names: L label names.
    sort: most prevalent label on top; False keeps the order of `names` (top
      to bottom).
    title: axes title; default 'Label prevalence (n = ...)'.

  Returns:
    A figure with one axes, whose i-th bar patch is the i-th plotted label.

  Raises:
    ValueError: as `prevalence_table`.
  """
  rows = prevalence_table(labels, names)
  if sort:
    rows = sorted(rows, key=lambda row: -row['percent'])
  # barh draws bottom-up; reverse so the first row ends up on top.
  rows = rows[::-1]
  fig = mfigure.Figure(figsize=(6.0, 0.8 + 0.28 * len(rows)),
                       layout='constrained')
  ax = fig.add_subplot()
  percents = [row['percent'] for row in rows]
  ax.barh([row['label'] for row in rows], percents, color='tab:blue',
          alpha=0.85)
  for i, row in enumerate(rows):
    ax.text(row['percent'], i, f" {row['percent']:.1f}% ({row['count']})",
            va='center', ha='left', fontsize=7)
  ax.set_xlim(0.0, min(100.0, max(max(percents), 1.0) * 1.25))
  ax.set_xlabel('Prevalence (%)', fontsize=8)
  ax.tick_params(labelsize=7)
  ax.set_title(title or f"Label prevalence (n = {rows[0]['n']})", fontsize=9)
  return fig


def plot_measurement_scatter(
  x: Any,
  y: Any,
  x_names: Sequence[str],
  y_names: Sequence[str],
  *,
  ncols: int = 4,
  identity: bool = False,
  max_points: int = 5000,
  title: str | None = None,
) -> mfigure.Figure:
  """Scatter plots of paired columns, e.g. a factor against its measurement.

  Panel j plots y[:, j] against x[:, j] and prints Pearson's r.

  Args:
    x: [n, k] values on the horizontal axes.
    y: [n, k] values on the vertical axes.
    x_names: k axis labels for x.
    y_names: k axis labels for y.
    ncols: panels per row.
    identity: draw the line y = x (when both share units).
    max_points: at most this many points are drawn per panel (the first
      ones); r uses all finite pairs.
    title: figure title.

  Returns:
    A figure with k axes.

  Raises:
    ValueError: if shapes disagree.
  """
  x_names, y_names = list(x_names), list(y_names)
  if len(x_names) != len(y_names):
    raise ValueError(f'{len(x_names)} x_names but {len(y_names)} y_names.')
  xs = _check_matrix(x, x_names, 'x').astype(np.float64)
  ys = _check_matrix(y, y_names, 'y').astype(np.float64)
  if xs.shape != ys.shape:
    raise ValueError(f'x {xs.shape} and y {ys.shape} differ in shape.')
  fig, axes = _panel_figure(len(x_names), ncols, (2.6, 2.4))
  for j, ax in enumerate(axes):
    ok = np.isfinite(xs[:, j]) & np.isfinite(ys[:, j])
    xj, yj = xs[ok, j], ys[ok, j]
    ax.scatter(xj[:max_points], yj[:max_points], s=4, alpha=0.5,
               color='tab:blue', rasterized=True, linewidths=0)
    if identity and xj.size:
      lo, hi = min(xj.min(), yj.min()), max(xj.max(), yj.max())
      ax.plot([lo, hi], [lo, hi], color='0.3', linestyle='--', linewidth=0.8)
    if xj.size > 2 and xj.std() > 0 and yj.std() > 0:
      r = np.corrcoef(xj, yj)[0, 1]
      ax.text(0.04, 0.95, f'r = {r:.3f}', transform=ax.transAxes, va='top',
              fontsize=7)
    ax.set_xlabel(x_names[j], fontsize=8)
    ax.set_ylabel(y_names[j], fontsize=8)
    ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def describe_table(values: Any, names: Sequence[str]) -> list[dict[str, Any]]:
  """Per-column summary statistics over finite entries.

  Args:
    values: [n, k] numbers.
    names: k column names.

  Returns:
    k rows {'name', 'n' (finite count), 'mean', 'std', 'min', 'median',
    'max'}; statistics are NaN for a column with no finite value.
  """
  names = list(names)
  arr = _check_matrix(values, names, 'values').astype(np.float64)
  rows = []
  for j, name in enumerate(names):
    col = arr[:, j][np.isfinite(arr[:, j])]
    stats = ((col.mean(), col.std(), col.min(), np.median(col), col.max())
             if col.size else (math.nan,) * 5)
    rows.append(dict(name=name, n=int(col.size),
                     **dict(zip(('mean', 'std', 'min', 'median', 'max'),
                                (float(s) for s in stats)))))
  return rows


def _format_cell(value: Any, floatfmt: str) -> str:
  if value is None:
    return ''
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, numbers.Integral):
    return str(int(value))
  if isinstance(value, numbers.Real):
    return format(float(value), floatfmt)
  return str(value).replace('|', r'\|').replace('\n', ' ')


def _is_number(value: Any) -> bool:
  return (isinstance(value, numbers.Real)
          and not isinstance(value, (bool, np.bool_)))


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[str] | None = None,
                   floatfmt: str = '.3g') -> str:
  """Formats rows of dicts as a GitHub-flavoured Markdown pipe table.

  Integers print as integers, other real numbers with `floatfmt`, missing
  keys and None as empty cells; numeric columns are right-aligned. Cells are
  padded so the raw text lines up.

  Args:
    rows: one mapping per row.
    columns: column keys in order; default every key in order of first
      appearance.
    floatfmt: format spec for non-integer numbers.

  Returns:
    The table, lines joined by newlines, ending with a newline.

  Raises:
    ValueError: if there are no columns.
  """
  if columns is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
  columns = [str(c) for c in columns]
  if not columns:
    raise ValueError('markdown_table needs at least one column.')
  cells = [[_format_cell(row.get(c), floatfmt) for c in columns]
           for row in rows]
  numeric = [
    any(c in row and row[c] is not None for row in rows)
    and all(_is_number(row[c]) for row in rows
            if c in row and row[c] is not None)
    for c in columns
  ]
  header = [c.replace('|', r'\|') for c in columns]
  widths = [max([3, len(h)] + [len(r[j]) for r in cells])
            for j, h in enumerate(header)]

  def line(items: Sequence[str]) -> str:
    padded = [item.rjust(w) if right else item.ljust(w)
              for item, w, right in zip(items, widths, numeric)]
    return '| ' + ' | '.join(padded) + ' |'

  rule = ['-' * (w - 1) + ':' if right else '-' * w
          for w, right in zip(widths, numeric)]
  return '\n'.join([line(header), line(rule)] + [line(r) for r in cells]) + '\n'
