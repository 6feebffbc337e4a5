"""Attribution heatmaps on ECGs, deletion curves and the method ranking.

Figures for the attribution stage (`stages/explain.py`):

* `plot_heatmap`: one ECG with one attribution map coloured under each
  lead's trace (between the trace and 0 mV), on ECG paper.
* `plot_methods`: the methods side by side for one ECG and target: one row
  per method, a few leads plus the lead-collapsed time profile, which is
  what the ground-truth scores read (ECG_DOMAIN.md section 5: attribution
  across leads is not unique, so the profile is the primary view).
* `plot_deletion_curves`: the target prediction while the most relevant
  samples are removed, per method (mean and its standard error over
  records).
* `plot_ranking`: methods x measures, coloured by rank, annotated with the
  mean score and bootstrap CI.

Maps are normalised per figure row by the 99th percentile of |value|
(`attribution_heat`), so colours compare positions within a map, not
magnitudes across methods.
Like `ecg_plot`, nothing here imports JAX or needs a display.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib
from matplotlib import figure as mfigure
import numpy as np

from factorecg_jax.viz import ecg_plot

HEAT_MODES = ('abs', 'signed', 'positive')
UNSIGNED_CMAP = 'YlOrRd'
# Figures scale maps by this percentile of |a| (gradients are spiky).
DISPLAY_PERCENTILE = 99.0
SIGNED_CMAP = 'RdBu_r'


def attribution_heat(attribution: Any, mode: str = 'abs',
                     per_lead: bool = False,
                     clip_percentile: float | None = None) -> np.ndarray:
  """Maps an attribution array to [0, 1] for shading.

  Args:
    attribution: [T] or [T, L] relevance (any units).
    mode: 'abs' (|a| / max |a|), 'positive' (max(a, 0) / max a) or
      'signed' ((a / max |a| + 1) / 2, so 0.5 means no relevance).
    per_lead: normalise each lead by its own maximum (default: one maximum
      over the whole map, so leads compare).
    clip_percentile: scale by this percentile of |a| instead of the
      maximum (values above it saturate), so that a few extreme samples do
      not wash out the rest of a sparse gradient map; None uses the maximum.

  Returns:
    float64 array of the input's shape in [0, 1]; an all-zero map gives
    zeros (0.5 when signed).

  Raises:
    ValueError: on an unknown mode or non-finite values.
  """
  if mode not in HEAT_MODES:
    raise ValueError(f'mode must be one of {HEAT_MODES}; got {mode!r}.')
  a = np.asarray(attribution, dtype=np.float64)
  if not np.isfinite(a).all():
    raise ValueError('attribution has non-finite values.')
  if mode == 'positive':
    a = np.maximum(a, 0.0)
  axis = 0 if (per_lead and a.ndim == 2) else None
  if clip_percentile is None:
    scale = np.max(np.abs(a), axis=axis, keepdims=axis is not None)
  else:
    scale = np.percentile(np.abs(a), clip_percentile, axis=axis,
                          keepdims=axis is not None)
    # A map that is zero almost everywhere falls back to its maximum.
    scale = np.where(scale > 0, scale,
                     np.max(np.abs(a), axis=axis, keepdims=axis is not None))
  scale = np.where(scale > 0, scale, 1.0)
  if mode == 'signed':
    return np.clip((a / scale + 1.0) / 2.0, 0.0, 1.0)
  return np.clip(np.abs(a) / scale, 0.0, 1.0)


def plot_heatmap(
    ecg: Any,
    attribution: Any,
    *,
    fs: float = 500.0,
    mode: str = 'abs',
    layout: str = '3x4',
    style: str = 'under',
    title: str | None = None,
    alpha: float = 0.85,
    clip_percentile: float | None = DISPLAY_PERCENTILE,
    **plot_kwargs: Any,
) -> mfigure.Figure:
  """One ECG on paper with its attribution coloured under the traces.

  Args:
    ecg: [T, 12] mV.
    attribution: [T, 12] or [T] (one profile for every lead) relevance.
    fs: sampling rate, Hz.
    mode: see `attribution_heat`; 'signed' uses a diverging colour map (red
      raises the prediction, blue lowers it).
    layout: `ecg_plot.LAYOUTS`.
    style: 'under' (colour between trace and 0 mV) or 'band' (full panel
      height behind the trace).
    title: figure title.
    alpha: opacity at the largest relevance.
    clip_percentile: see `attribution_heat`.
    **plot_kwargs: passed to `ecg_plot.plot_ecg` (markers, scale, ...).

  Returns:
    The figure.
  """
  ecg = np.asarray(ecg, dtype=np.float64)
  heat = attribution_heat(attribution, mode, clip_percentile=clip_percentile)
  signed = mode == 'signed'
  return ecg_plot.plot_ecg(
      ecg, fs=fs, layout=layout, title=title, heat=heat,
      heat_cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP, heat_alpha=alpha,
      heat_style=style, heat_signed=signed, **plot_kwargs)


def _under_curve(ax, time, trace, heat, cmap, signed, alpha, ylim):
  ecg_plot._draw_heat(  # pylint: disable=protected-access
      ax, time, heat, ylim, cmap, alpha, under=trace, signed=signed)
  ax.plot(time, trace, color='k', linewidth=0.6, zorder=3)


def plot_methods(
    ecg: Any,
    attributions: Mapping[str, Any],
    *,
    fs: float = 500.0,
    leads: Sequence[str] = ('II', 'V1', 'V5'),
    mode: str = 'abs',
    region: Any = None,
    title: str | None = None,
    clip_percentile: float | None = DISPLAY_PERCENTILE,
) -> mfigure.Figure:
  """The methods side by side for one ECG and target.

  Each row is one method: the chosen leads with the method's map coloured
  under the trace, then the lead-collapsed profile (sum of |a| over the 12
  leads, normalised), with the target's true region shaded grey when given.

  Args:
    ecg: [T, 12] mV.
    attributions: method name -> [T, 12] map (row order is the dict order).
    fs: sampling rate, Hz.
    leads: leads shown per method.
    mode: see `attribution_heat` (per row: one maximum over the 12 leads).
    region: optional [T] bool ground-truth mask of the target.
    title: figure title.
    clip_percentile: see `attribution_heat` (the profile is not clipped).

  Returns:
    The figure.

  Raises:
    ValueError: on shapes that do not match the ECG.
  """
  ecg = np.asarray(ecg, dtype=np.float64)
  if ecg.ndim != 2 or ecg.shape[1] != len(ecg_plot.LEADS):
    raise ValueError(f'ecg must be [T, 12]; got {ecg.shape}.')
  names = list(attributions)
  if not names:
    raise ValueError('attributions is empty.')
  lead_idx = [ecg_plot.LEADS.index(name) for name in leads]
  num_samples = ecg.shape[0]
  time = np.arange(num_samples) / fs
  ylim = (float(ecg[:, lead_idx].min()) - 0.1,
          float(ecg[:, lead_idx].max()) + 0.1)
  signed = mode == 'signed'
  cmap = SIGNED_CMAP if signed else UNSIGNED_CMAP
  ncols = len(lead_idx) + 1
  fig = mfigure.Figure(figsize=(2.3 * ncols, 0.95 * len(names) + 0.6))
  axes = fig.subplots(len(names), ncols, squeeze=False, sharex=True)
  for r, name in enumerate(names):
    a = np.asarray(attributions[name], dtype=np.float64)
    if a.shape != ecg.shape:
      raise ValueError(f'attribution {name!r} has shape {a.shape}; the ecg '
                       f'is {ecg.shape}.')
    heat = attribution_heat(a, mode, clip_percentile=clip_percentile)
    for c, lead in enumerate(lead_idx):
      ax = axes[r, c]
      _under_curve(ax, time, ecg[:, lead], heat[:, lead], cmap, signed, 0.9,
                   ylim)
      ax.set_ylim(ylim)
      ax.set_yticks([])
      if r == 0:
        ax.set_title(ecg_plot.LEADS[lead], fontsize=8)
    profile = np.abs(a).sum(axis=1)
    profile = profile / max(profile.max(), 1e-30)
    ax = axes[r, -1]
    if region is not None:
      mask = np.asarray(region, dtype=bool)
      ax.fill_between(time, 0, 1, where=mask, color='0.85', step='mid',
                      zorder=0, linewidth=0)
    ax.plot(time, profile, color='C3', linewidth=0.8, zorder=2)
    ax.set_ylim(0, 1.05)
    ax.set_yticks([])
    if r == 0:
      ax.set_title('profile (all leads)', fontsize=8)
    axes[r, 0].set_ylabel(name, rotation=0, ha='right', va='center',
                          fontsize=8)
  for ax in axes[-1]:
    ax.set_xlabel('Time (s)', fontsize=7)
    ax.tick_params(labelsize=6)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def plot_deletion_curves(
    fractions: Any,
    curves: Mapping[str, Any],
    *,
    title: str | None = None,
    ylabel: str = 'prediction change',
    xlabel: str = 'fraction of samples removed (most relevant first)',
) -> mfigure.Figure:
  """Deletion (or insertion) curves per method: mean +- SE over records.

  Args:
    fractions: [F] fraction of samples perturbed at each step.
    curves: method -> [F] or [B, F] values (e.g. |f(x) - f(x_k)|).
    title: axes title.
    ylabel: y axis label.
    xlabel: x axis label.

  Returns:
    The figure.
  """
  fractions = np.asarray(fractions, dtype=np.float64)
  fig = mfigure.Figure(figsize=(5.5, 3.6))
  ax = fig.subplots()
  colors = matplotlib.colormaps['tab10']
  for i, (name, values) in enumerate(curves.items()):
    v = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if v.shape[1] != len(fractions):
      raise ValueError(f'curve {name!r} has {v.shape[1]} steps, fractions '
                       f'has {len(fractions)}.')
    mean = v.mean(axis=0)
    se = v.std(axis=0, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0 * mean
    style = '--' if name == 'random' else '-'
    ax.plot(fractions, mean, style, color=colors(i % 10), label=name,
            linewidth=1.2)
    ax.fill_between(fractions, mean - se, mean + se, color=colors(i % 10),
                    alpha=0.15, linewidth=0)
  ax.set_xlabel(xlabel, fontsize=8)
  ax.set_ylabel(ylabel, fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(True, color='0.9', linewidth=0.5)
  ax.legend(fontsize=7, ncol=2, frameon=False)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def plot_ranking(
    methods: Sequence[str],
    measures: Sequence[str],
    ranks: Any,
    means: Any,
    *,
    lows: Any = None,
    highs: Any = None,
    title: str | None = None,
) -> mfigure.Figure:
  """Methods x measures coloured by rank (1 = best), annotated with scores.

  Args:
    methods: M method names (rows).
    measures: Q measure names (columns), e.g. 'qrs_ms AOPC'.
    ranks: [M, Q] ranks, 1 best (NaN where not scored).
    means: [M, Q] mean scores written in the cells.
    lows: optional [M, Q] lower CI bounds.
    highs: optional [M, Q] upper CI bounds.
    title: axes title.

  Returns:
    The figure.
  """
  ranks = np.asarray(ranks, dtype=np.float64)
  means = np.asarray(means, dtype=np.float64)
  m, q = len(methods), len(measures)
  if ranks.shape != (m, q) or means.shape != (m, q):
    raise ValueError(f'ranks and means must be [{m}, {q}]; got {ranks.shape} '
                     f'and {means.shape}.')
  fig = mfigure.Figure(figsize=(1.2 + 1.25 * q, 0.9 + 0.42 * m))
  ax = fig.subplots()
  cmap = matplotlib.colormaps['viridis_r'].with_extremes(bad='0.9')
  ax.imshow(np.ma.masked_invalid(ranks), cmap=cmap, vmin=1, vmax=max(m, 2),
            aspect='auto')
  for i in range(m):
    for j in range(q):
      if not np.isfinite(means[i, j]):
        continue
      text = f'{means[i, j]:.3g}'
      if lows is not None and highs is not None:
        text += f'\n[{np.asarray(lows)[i, j]:.2g}, {np.asarray(highs)[i, j]:.2g}]'
      dark = np.isfinite(ranks[i, j]) and ranks[i, j] <= (m + 1) / 2
      ax.text(j, i, text, ha='center', va='center', fontsize=6,
              color='white' if not dark else 'black')
  ax.set_xticks(range(q), [str(s) for s in measures], rotation=35,
                ha='right', fontsize=7)
  ax.set_yticks(range(m), [str(s) for s in methods], fontsize=7)
  ax.set_title(title or 'rank per measure (1 = best; colour = rank)',
               fontsize=9)
  fig.tight_layout()
  return fig
