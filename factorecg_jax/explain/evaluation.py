"""Objective evaluation of ECG attribution maps (pure functions).

Shapes: ECGs `x` [B, T, L] (median beats, T = 600, L = 12); `predict_fn(x
[N, T, L]) -> [N, K]` is a pure, jittable model function with K regression
targets; attributions are [M, B, T, L] for M methods (one target per record,
`target` an int or a [B] int array) or [M, B, K, T, L] for all targets (the
target's map is then selected). Every measure returns per-record scores
[M, B] so that `ranking_table` can bootstrap over records.

1. Perturbation faithfulness (`perturbation_curves`). Units are either the
   time samples of the lead-collapsed profile r(t) = sum_l |a(t, l)|
   (`unit='time'`, default; removing a time sample removes all leads, since
   the 12 leads are images of one dipole) or single (time, lead) points
   (`unit='point'`, relevance |a|). Orders: 'morf' (most relevant first),
   'lerf' (least relevant first), 'random' (one seeded permutation per record,
   the same for every method). At fraction phi of the grid the
   round(phi * U) first units of the order are removed (`mode='deletion'`,
   Samek et al. 2017, "Evaluating the visualization of what a deep neural
   network has learned", IEEE TNNLS) or, starting from the fully perturbed
   signal, restored (`mode='insertion'`, Petsiuk et al. 2018, RISE, BMVC).
   Fills of removed samples:
     'zero'   0;
     'mean'   the per-lead mean of that record;
     'linear' per lead, linear interpolation between the nearest kept
              samples on either side, constant beyond the last kept one, the
              lead mean if a lead keeps nothing;
     'noise'  N(lead mean, lead sd^2), one draw per (record, t, l);
     'road'   ROAD noisy linear imputation (Rong et al. 2022, "A Consistent
              and Efficient Evaluation Strategy for Attribution Methods",
              ICML): ROAD solves a sparse system in which each removed pixel
              equals the weighted mean of its neighbours. In 1-D with the two
              time neighbours of equal weight that system is solved exactly
              by linear interpolation between the nearest kept samples (and
              constant continuation at the ends), so 'road' is 'linear' plus
              N(0, (road_noise * lead sd)^2). ROAD adds absolute noise 0.01
              to standardised images; scaling by the lead sd makes it unit
              free (equal for standardised leads).
   Noise draws are fixed per record and shared by methods and fractions
   (common random numbers): curves differ between methods only through the
   order. Outputs: curves of the target prediction [M, B, F]; the relative
   change (f_k - f(x)) / |f(x)|; AOPC = 1/F sum_k (f(x) - f_k) over the F
   grid points including phi = 0 (Samek et al. 2017, eq. 12; for deletion a
   faithful map has a large AOPC, for insertion, whose curve climbs back to
   f(x), a small one), and its regression variant with
   |f(x) - f_k| (a regression output may move either way); the trapezoid
   area under the curve and under |f_k - f(x)| over the fraction axis. All
   methods x fractions x records are one jitted call: the perturbed inputs
   are built inside `lax.map` over chunks of `chunk_size` items (vmap within
   a chunk), so memory is bounded by the chunk.

   Ties: relevance is normalised by each record's maximum |relevance| and
   rounded to `tie_decimals` decimals before a stable sort, so values equal up
   to float last bits are ties, resolved by the lower unit index (time index;
   for points the row-major (t, l) index), for MoRF and LeRF alike.

2. Storås et al.'s protocol (`storas_curves`; Storås, Mæland et al. 2025,
   "Evaluating gradient-based explanation methods for neural network ECG
   analysis using heatmaps", JAMIA 32(1):79-88). Read from their code,
   github.com/smaeland/ecg-heatmapping-review at commit d90170c:
   `compare_heatmaps.py` (`compute_iterative_errors`, the `compute_errors`
   and `plot_comparison` commands) and `evaluate_attributions.py`
   (`RandomiseIteratively`):
   * relevance is |attribution|; the input is their (12, 600) channels-first
     array, flattened lead-major, and each iteration perturbs ONE (lead,
     time) point: `window_size=1` in the `compute_errors` call (the window
     code is there but unused), `channel_mode='individual'` (no lead
     merging), the point of the largest remaining relevance, exact ties to
     the lowest flat index (`np.where(attr == max)[0][0]`); its relevance is
     then zeroed. (They rescale |a| by a cumulative-sum percentile before,
     a positive constant that leaves the order unchanged.)
   * noise is ADDED (`add_or_replace_noise='add'`), N(0, sd^2) with
     sd = 0.2 * (max(x) - min(x)) over all leads and samples of the record,
     drawn when a point is perturbed and kept afterwards;
   * the error of iteration j (j = 0: unperturbed, j points perturbed) is
     |y - f(x_j)| / y with y the TRUE label (not the unperturbed
     prediction), a fraction, not percent; MAPE = mean over records per
     iteration, records with an infinite value removed; `num_iterations`
     200 in `compare_heatmaps.sh` (300 in the README example);
   * 'AUC-k' for k in (5, 10, 15, 25) is `np.trapz(mape[:k + 1])`: trapezoid
     with unit spacing over iterations 0..k of the record-mean curve.
   Here: `y_true` given reproduces that definition (`signed_denominator=True`
   divides by y itself as they do; the default divides by |y|, which differs
   only for negative labels such as ST level); without `y_true` the
   reference is the unperturbed prediction f(x) (then the j = 0 error is 0).
   Per-record areas are returned too (their mean equals the area of the mean
   curve). Two quirks of theirs are reproduced: once every positive
   relevance is used up their loop picks flat index 0 forever, so it
   perturbs that point once more if its relevance is 0 and then stalls
   (`reproduce_stall=True`); ties use the tolerance rule above instead of
   exact float equality. Not verified: the paper text itself (only the code
   was read), and whether the published figures used exactly this commit.
   Their `channel_mode='merge'` branch (V5 only) is unused and broken
   (`self.attrs`), so it is not offered.

3. Model-parameter randomisation (`cascading_randomization`; Adebayo et al.
   2018, "Sanity Checks for Saliency Maps", NeurIPS): layers are
   re-initialised from the output to the input, cumulatively, and the maps
   are compared with the original ones by the Spearman rank correlation of
   |a| per record (ranks with ties averaged) and the Pearson correlation of
   |a|, each averaged over records. A re-initialised leaf is drawn from
   N(0, s^2) with s the leaf's standard deviation (its RMS if the leaf is
   constant, e.g. a LayerNorm scale of ones; zero leaves stay zero), from
   `fold_in(key, leaf index)`, so a layer keeps the same random values at
   every later cascade step. `batch_stats` are left untouched unless
   `randomize_batch_stats=True` (then the layer's running means are set to 0
   and variances to 1, the freshly initialised state).

4. Ground-truth localisation (masks from `ground_truth.target_masks`, time
   masks [B, T]), all on the lead-collapsed profile (ECG_DOMAIN.md section 5):
   * relevance mass accuracy (Arras et al. 2022, "CLEVR-XAI: A benchmark
     dataset for the ground truth evaluation of neural network
     explanations", Information Fusion 81): positive relevance inside the
     mask / total positive relevance. `sign='positive'` (default, as Arras et
     al.) takes the positive part of each (t, l) value before summing over
     leads; `sign='abs'` uses |a| (for signed regression maps, whose sign
     depends on the direction of the target). 0 if there is no relevance;
   * relevance rank accuracy (Arras et al. 2022): with K = |mask| samples,
     the fraction of the K highest-ranked samples that lie inside the mask
     (ties by the rule of section 1; NaN for an empty mask);
   * pointing game (Zhang et al. 2018, "Top-down neural attention by
     excitation backprop", IJCV): a hit if some masked sample's relevance is
     within atol + rtol * max of the profile's maximum (a tolerant rule that
     cannot depend on float last bits); a profile without positive mass
     misses.

5. Ranking (`ranking_table`, `agreement`, `to_markdown`): per measure and
   method the mean over records, a bootstrap percentile CI (records
   resampled, `statistics.bootstrap_indices`, vectorised over resamples), the
   rank with near-ties resolved by the lower method index
   (`analysis.ranking`), and the best method; Kendall's tau between two
   rankings of the same methods (scipy.stats.kendalltau).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from factorecg_jax.analysis import ranking
from factorecg_jax.analysis import statistics

PredictFn = Callable[[jax.Array], jax.Array]

MODES = ('deletion', 'insertion')
ORDERS = ('morf', 'lerf', 'random')
FILLS = ('zero', 'mean', 'linear', 'noise', 'road')
UNITS = ('time', 'point')
SIGNS = ('positive', 'abs')

_EPS = 1e-12


# --------------------------------------------------------------------------
# Shared helpers.


def _targets(target, batch: int) -> jax.Array:
  t = jnp.asarray(target, jnp.int32)
  return jnp.broadcast_to(t, (batch,)) if t.ndim == 0 else t


def select_target(attributions: jax.Array, target) -> jax.Array:
  """The [M, B, T, L] maps of each record's target.

  Args:
    attributions: [M, B, T, L] (returned as is) or [M, B, K, T, L].
    target: int or [B] int target index per record.

  Returns:
    [M, B, T, L].
  """
  a = jnp.asarray(attributions)
  if a.ndim == 4:
    return a
  if a.ndim != 5:
    raise ValueError(f'attributions must be [M, B, T, L] or [M, B, K, T, L],'
                     f' got shape {a.shape}')
  t = _targets(target, a.shape[1])
  return jnp.take_along_axis(a, t[None, :, None, None, None], axis=2)[:, :, 0]


def lead_profile(attributions: jax.Array, sign: str = 'abs') -> jax.Array:
  """Lead-collapsed relevance profile: sum over leads of |a| or max(a, 0).

  Args:
    attributions: [..., T, L].
    sign: 'abs' or 'positive'.

  Returns:
    [..., T].
  """
  if sign not in SIGNS:
    raise ValueError(f'sign must be one of {SIGNS}, got {sign!r}')
  a = jnp.asarray(attributions)
  v = jnp.abs(a) if sign == 'abs' else jnp.maximum(a, 0.0)
  return v.sum(-1)


def _quantise(r: jax.Array, decimals: int) -> jax.Array:
  """r / max|r| rounded, per row of the last axis (ties within 10^-d)."""
  scale = jnp.max(jnp.abs(r), axis=-1, keepdims=True)
  return jnp.round(r / jnp.maximum(scale, _EPS) * 10.0 ** decimals)


def order_ranks(relevance: jax.Array, descending: bool = True,
                tie_decimals: int = 6) -> jax.Array:
  """Position of every unit in the (tolerance-stable) relevance order.

  Args:
    relevance: [..., U].
    descending: most relevant first (MoRF) if True, else least first.
    tie_decimals: values equal after normalising by the row maximum and
      rounding to this many decimals are ties, kept in index order.

  Returns:
    [..., U] int32 ranks, 0 = first to be perturbed.
  """
  q = _quantise(relevance, tie_decimals)
  order = jnp.argsort(-q if descending else q, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def _chunked_predict(make_input: Callable[[jax.Array], jax.Array],
                     predict_fn: PredictFn, items: jax.Array,
                     targets: jax.Array, chunk_size: int) -> jax.Array:
  """f(make_input(item))[target] for every item, `chunk_size` at a time.

  Args:
    make_input: item (int32 [D]) -> [T, L] input.
    predict_fn: [N, T, L] -> [N, K].
    items: [N, D] int32 item descriptors.
    targets: [N] int32 output column per item.
    chunk_size: items per model call.

  Returns:
    [N] predictions.
  """
  n = items.shape[0]
  c = max(1, min(int(chunk_size), n))
  pad = (-n) % c
  items_p = jnp.concatenate([items, jnp.repeat(items[:1], pad, 0)], 0)
  targets_p = jnp.concatenate([targets, jnp.repeat(targets[:1], pad, 0)], 0)

  def one_chunk(args):
    it, tg = args
    out = predict_fn(jax.vmap(make_input)(it))
    return jnp.take_along_axis(out, tg[:, None], axis=1)[:, 0]

  out = jax.lax.map(one_chunk, (items_p.reshape(-1, c, items.shape[1]),
                                targets_p.reshape(-1, c)))
  return out.reshape(-1)[:n]


def _linear_fill(x: jax.Array, removed: jax.Array) -> jax.Array:
  """Per lead, removed samples linearly interpolated from kept neighbours.

  Args:
    x: [T, L] signal.
    removed: [T, L] bool.

  Returns:
    [T, L]: kept samples unchanged; removed ones interpolated between the
    nearest kept sample before and after, the nearest kept value where only
    one side exists, the lead mean where the lead keeps nothing.
  """
  t_len = x.shape[0]
  idx = jnp.arange(t_len)[:, None]
  kept = ~removed
  prev = jax.lax.cummax(jnp.where(kept, idx, -1), axis=0)
  nxt = jax.lax.cummin(jnp.where(kept, idx, t_len), axis=0, reverse=True)
  has_p, has_n = prev >= 0, nxt < t_len
  p = jnp.clip(prev, 0, t_len - 1)
  q = jnp.clip(nxt, 0, t_len - 1)
  xp = jnp.take_along_axis(x, p, axis=0)
  xq = jnp.take_along_axis(x, q, axis=0)
  w = (idx - p) / jnp.maximum(q - p, 1)
  both = xp + (xq - xp) * w
  mean = jnp.broadcast_to(x.mean(0, keepdims=True), x.shape)
  filled = jnp.where(has_p & has_n, both,
                     jnp.where(has_p, xp, jnp.where(has_n, xq, mean)))
  return jnp.where(removed, filled, x)


def fill_removed(x: jax.Array, removed: jax.Array, fill: str,
                 noise: jax.Array | None = None,
                 road_noise: float = 0.01) -> jax.Array:
  """Replaces the removed samples of one record.

  Args:
    x: [T, L] record.
    removed: [T, L] bool (broadcastable), True where removed.
    fill: one of FILLS (module docstring).
    noise: [T, L] standard normal draws, needed for 'noise' and 'road'.
    road_noise: ROAD noise sd as a fraction of the lead sd.

  Returns:
    [T, L] perturbed record.
  """
  removed = jnp.broadcast_to(removed, x.shape)
  mean = x.mean(0, keepdims=True)
  sd = x.std(0, keepdims=True)
  if fill == 'zero':
    v = jnp.zeros_like(x)
  elif fill == 'mean':
    v = jnp.broadcast_to(mean, x.shape)
  elif fill == 'noise':
    v = mean + sd * noise
  elif fill == 'linear':
    v = _linear_fill(x, removed)
  elif fill == 'road':
    v = _linear_fill(x, removed) + road_noise * sd * noise
  else:
    raise ValueError(f'fill must be one of {FILLS}, got {fill!r}')
  return jnp.where(removed, v, x)


def fraction_counts(fractions: np.ndarray, units: int) -> np.ndarray:
  """Units perturbed at each fraction: floor(phi * U + 0.5), in [0, U]."""
  return np.clip(np.floor(np.asarray(fractions, np.float64) * units + 0.5),
                 0, units).astype(np.int32)


# --------------------------------------------------------------------------
# 1. Deletion / insertion curves.


@functools.partial(jax.jit, static_argnames=(
    'predict_fn', 'mode', 'order', 'fill', 'unit', 'chunk_size',
    'tie_decimals'))
def _perturbation_curves(predict_fn, x, a, targets, counts, key, road_noise,
                         *, mode, order, fill, unit, chunk_size,
                         tie_decimals):
  m, b, t_len, n_leads = a.shape
  rel = (jnp.abs(a).sum(-1) if unit == 'time'
         else jnp.abs(a).reshape(m, b, t_len * n_leads))
  n_units = rel.shape[-1]
  k_perm, k_noise = jax.random.split(key)
  if order == 'random':
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_units))(
        jax.random.split(k_perm, b))
    rank = jnp.broadcast_to(jnp.argsort(perms, axis=-1).astype(jnp.int32),
                            (m, b, n_units))
  else:
    rank = order_ranks(rel, descending=order == 'morf',
                       tie_decimals=tie_decimals)
  noise = jax.random.normal(k_noise, x.shape, x.dtype)
  n_frac = counts.shape[0]

  def make_input(item):
    mi, fi, bi = item[0], item[1], item[2]
    chosen = rank[mi, bi] < counts[fi]
    chosen = (chosen[:, None] if unit == 'time'
              else chosen.reshape(t_len, n_leads))
    removed = chosen if mode == 'deletion' else ~chosen
    return fill_removed(x[bi], removed, fill, noise[bi], road_noise)

  grid = jnp.stack(jnp.meshgrid(jnp.arange(m), jnp.arange(n_frac),
                                jnp.arange(b), indexing='ij'), -1)
  items = grid.reshape(-1, 3).astype(jnp.int32)
  preds = _chunked_predict(make_input, predict_fn, items, targets[items[:, 2]],
                           chunk_size)
  curve = preds.reshape(m, n_frac, b).transpose(0, 2, 1)
  base_items = jnp.stack([jnp.zeros(b, jnp.int32), jnp.zeros(b, jnp.int32),
                          jnp.arange(b, dtype=jnp.int32)], -1)
  base = _chunked_predict(lambda it: x[it[2]], predict_fn, base_items,
                          targets, chunk_size)
  return curve, base


def perturbation_curves(predict_fn: PredictFn, x: jax.Array,
                        attributions: jax.Array, target,
                        *, mode: str = 'deletion', order: str = 'morf',
                        fill: str = 'zero', unit: str = 'time',
                        num_steps: int = 20,
                        fractions: Sequence[float] | None = None,
                        key: jax.Array | None = None, chunk_size: int = 256,
                        road_noise: float = 0.01, tie_decimals: int = 6
                        ) -> dict[str, Any]:
  """Deletion or insertion curves of all methods in one jitted call.

  Args:
    predict_fn: pure jittable [N, T, L] -> [N, K] (hashable; the same
      function object avoids recompiling).
    x: [B, T, L] ECGs.
    attributions: [M, B, T, L] or [M, B, K, T, L].
    target: int or [B] int output index per record.
    mode: 'deletion' (remove in order from x) or 'insertion' (restore in
      order into the fully perturbed x).
    order: 'morf', 'lerf' or 'random'.
    fill: 'zero', 'mean', 'linear', 'noise' or 'road'.
    unit: 'time' (lead-collapsed time samples) or 'point' ((t, l) points).
    num_steps: grid 0, 1/num_steps, ..., 1 when `fractions` is None.
    fractions: explicit fraction grid in [0, 1] (F values).
    key: PRNG key for 'random' order and noisy fills (default PRNGKey(0)).
    chunk_size: perturbed inputs per `predict_fn` call.
    road_noise: ROAD noise sd as a fraction of the lead sd.
    tie_decimals: tie tolerance of the order (module docstring).

  Returns:
    dict: fractions [F], counts [F] (units perturbed), base [B] = f(x),
    curve [M, B, F] target predictions, relative_change [M, B, F]
    = (curve - base) / |base|, aopc [M, B] (Samek et al.), aopc_abs [M, B]
    (with |f(x) - f_k|), auc [M, B] and auc_abs_change [M, B] (trapezoid
    over the fractions), all numpy.
  """
  for name, value, allowed in (('mode', mode, MODES), ('order', order, ORDERS),
                               ('fill', fill, FILLS), ('unit', unit, UNITS)):
    if value not in allowed:
      raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
  x = jnp.asarray(x, jnp.float32)
  a = select_target(attributions, target).astype(jnp.float32)
  if a.shape[1:] != x.shape:
    raise ValueError(f'attributions {a.shape} do not match x {x.shape}')
  b, t_len, n_leads = x.shape
  fr = (np.linspace(0.0, 1.0, num_steps + 1) if fractions is None
        else np.asarray(fractions, np.float64))
  n_units = t_len if unit == 'time' else t_len * n_leads
  counts = fraction_counts(fr, n_units)
  key = jax.random.PRNGKey(0) if key is None else key
  curve, base = _perturbation_curves(
      predict_fn, x, a, _targets(target, b), jnp.asarray(counts), key,
      jnp.float32(road_noise), mode=mode, order=order, fill=fill, unit=unit,
      chunk_size=int(chunk_size), tie_decimals=int(tie_decimals))
  curve, base = np.asarray(curve, np.float64), np.asarray(base, np.float64)
  diff = base[None, :, None] - curve
  trapz = lambda y: np.trapezoid(y, fr, axis=-1) if fr.size > 1 else y[..., 0]
  return dict(
      fractions=fr, counts=counts, base=base, curve=curve,
      relative_change=-diff / np.maximum(np.abs(base), _EPS)[None, :, None],
      aopc=diff.mean(-1), aopc_abs=np.abs(diff).mean(-1), auc=trapz(curve),
      auc_abs_change=trapz(np.abs(diff)))


# --------------------------------------------------------------------------
# 2. Storås et al. (JAMIA 2025) iterative noise protocol.


@functools.partial(jax.jit, static_argnames=(
    'predict_fn', 'num_iterations', 'chunk_size', 'tie_decimals',
    'reproduce_stall'))
def _storas_curves(predict_fn, x, a, targets, key, noise_fraction, *,
                   num_iterations, chunk_size, tie_decimals, reproduce_stall):
  m, b, t_len, n_leads = a.shape
  # Their arrays are (leads, time) flattened row-major: lead-major order.
  rel = jnp.abs(a).transpose(0, 1, 3, 2).reshape(m, b, n_leads * t_len)
  rank = order_ranks(rel, descending=True, tie_decimals=tie_decimals)
  n_pos = (rel > 0).sum(-1)
  limit = (n_pos + (rel[..., 0] == 0) if reproduce_stall
           else jnp.full_like(n_pos, n_leads * t_len))
  sd = noise_fraction * (x.max((1, 2)) - x.min((1, 2)))
  eps = (jax.random.normal(key, x.shape, x.dtype).transpose(0, 2, 1)
         .reshape(b, -1) * sd[:, None])

  def make_input(item):
    mi, j, bi = item[0], item[1], item[2]
    n = jnp.minimum(j, limit[mi, bi])
    flat = x[bi].T.reshape(-1) + jnp.where(rank[mi, bi] < n, eps[bi], 0.0)
    return flat.reshape(n_leads, t_len).T

  grid = jnp.stack(jnp.meshgrid(jnp.arange(m), jnp.arange(num_iterations),
                                jnp.arange(b), indexing='ij'), -1)
  items = grid.reshape(-1, 3).astype(jnp.int32)
  preds = _chunked_predict(make_input, predict_fn, items, targets[items[:, 2]],
                           chunk_size)
  return preds.reshape(m, num_iterations, b).transpose(0, 2, 1), limit


def storas_curves(predict_fn: PredictFn, x: jax.Array,
                  attributions: jax.Array, target, key: jax.Array, *,
                  y_true: jax.Array | None = None,
                  endpoints: Sequence[int] = (5, 10, 15, 25),
                  num_iterations: int | None = None,
                  noise_fraction: float = 0.2,
                  signed_denominator: bool = False,
                  reproduce_stall: bool = True, chunk_size: int = 256,
                  tie_decimals: int = 6) -> dict[str, Any]:
  """Storås et al.'s iterative perturbation: errors and areas per method.

  Iteration j adds N(0, (noise_fraction * range(x))^2) noise to the j most
  relevant (lead, time) points (one new point per iteration); see the module
  docstring for what was read from their code.

  Args:
    predict_fn: pure jittable [N, T, L] -> [N, K].
    x: [B, T, L] ECGs.
    attributions: [M, B, T, L] or [M, B, K, T, L].
    target: int or [B] int output index per record.
    key: PRNG key of the noise (one field per record, shared by methods).
    y_true: [B] true labels: their definition |y - f(x_j)| / y. None: the
      reference is the unperturbed prediction f(x).
    endpoints: areas over iterations 0..k for each k.
    num_iterations: curve length (iterations 0..num_iterations - 1);
      default max(endpoints) + 1 (theirs: 200).
    noise_fraction: noise sd / (max - min) of the record (theirs: 0.2).
    signed_denominator: divide by the reference itself (as their code does)
      instead of its absolute value.
    reproduce_stall: stop perturbing, as their loop does, once the positive
      relevance is used up (plus flat index 0 if its relevance is 0).
    chunk_size: perturbed inputs per model call.
    tie_decimals: tie tolerance (module docstring).

  Returns:
    dict: pred [M, B, J] predictions, reference [B], ape [M, B, J] absolute
    (percentage as a fraction) errors, mape [M, J] mean over records with
    finite errors, area [M, B, E] per-record trapezoid areas, area_of_mape
    [M, E] (their 'AUC-k'), endpoints [E], limit [M, B] points their loop
    can perturb.
  """
  endpoints = tuple(int(e) for e in endpoints)
  if num_iterations is None:
    num_iterations = max(endpoints) + 1
  if max(endpoints) >= num_iterations:
    raise ValueError('every endpoint must be < num_iterations')
  x = jnp.asarray(x, jnp.float32)
  a = select_target(attributions, target).astype(jnp.float32)
  if a.shape[1:] != x.shape:
    raise ValueError(f'attributions {a.shape} do not match x {x.shape}')
  targets = _targets(target, x.shape[0])
  pred, limit = _storas_curves(
      predict_fn, x, a, targets, key, jnp.float32(noise_fraction),
      num_iterations=int(num_iterations), chunk_size=int(chunk_size),
      tie_decimals=int(tie_decimals), reproduce_stall=bool(reproduce_stall))
  pred = np.asarray(pred, np.float64)
  if y_true is None:
    ref = pred[0, :, 0]  # iteration 0 is the unperturbed input.
  else:
    ref = np.asarray(y_true, np.float64).reshape(-1)
  denom = ref if signed_denominator else np.abs(ref)
  with np.errstate(divide='ignore', invalid='ignore'):
    ape = np.abs(ref[None, :, None] - pred) / denom[None, :, None]
  finite = np.all(np.isfinite(ape), axis=-1)  # [M, B], as they drop records.
  n_ok = np.maximum(finite.sum(1), 1)[:, None]
  mape = np.where(finite[..., None], ape, 0.0).sum(1) / n_ok
  area = np.stack([np.trapezoid(ape[..., :k + 1], axis=-1)
                   for k in endpoints], -1)
  area_of_mape = np.stack([np.trapezoid(mape[..., :k + 1], axis=-1)
                           for k in endpoints], -1)
  return dict(pred=pred, reference=ref, ape=ape, mape=mape, area=area,
              area_of_mape=area_of_mape, endpoints=np.asarray(endpoints),
              limit=np.asarray(limit))


# --------------------------------------------------------------------------
# 3. Cascading model-parameter randomisation.


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _matches(path: str, prefix: str) -> bool:
  prefix = prefix.strip('/')
  return path == prefix or path.startswith(prefix + '/')


def randomize_layers(params: Any, prefixes: Sequence[str], key: jax.Array,
                     *, randomize_batch_stats: bool = False) -> Any:
  """Re-initialises the leaves under the given path prefixes.

  Args:
    params: a params pytree, or variables {'params': ..., 'batch_stats': ...}.
      Prefixes are '/'-joined key paths inside the params tree (e.g.
      'classifier', 'blocks_3/conv1').
    prefixes: layers to re-initialise.
    key: PRNG key; leaf i draws from fold_in(key, i) (i in tree order).
    randomize_batch_stats: also reset matching batch_stats (mean 0, var 1).

  Returns:
    A pytree of the same structure, shapes and dtypes.
  """
  is_vars = isinstance(params, Mapping) and 'params' in params
  tree = params['params'] if is_vars else params
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  new = []
  for i, (path, leaf) in enumerate(leaves):
    p = _path_str(path)
    if any(_matches(p, pre) for pre in prefixes):
      leaf = jnp.asarray(leaf)
      sd = jnp.std(leaf)
      sd = jnp.where(sd > 0, sd, jnp.sqrt(jnp.mean(jnp.square(leaf))))
      noise = jax.random.normal(jax.random.fold_in(key, i), leaf.shape)
      leaf = (noise * sd).astype(leaf.dtype)
    new.append(leaf)
  tree = jax.tree_util.tree_unflatten(treedef, new)
  if not is_vars:
    return tree
  out = dict(params)
  out['params'] = tree
  if randomize_batch_stats and 'batch_stats' in params:
    bs, bdef = jax.tree_util.tree_flatten_with_path(params['batch_stats'])
    reset = []
    for path, leaf in bs:
      p = _path_str(path)
      if any(_matches(p, pre) for pre in prefixes):
        leaf = (jnp.ones_like(leaf) if p.endswith('var')
                else jnp.zeros_like(leaf))
      reset.append(leaf)
    out['batch_stats'] = jax.tree_util.tree_unflatten(bdef, reset)
  return out


def _avg_ranks(v: jax.Array) -> jax.Array:
  """0-based ranks of a [N] vector, ties averaged."""
  s = jnp.sort(v)
  lo = jnp.searchsorted(s, v, side='left')
  hi = jnp.searchsorted(s, v, side='right')
  return (lo + hi - 1) / 2.0


def _pearson(u: jax.Array, v: jax.Array) -> jax.Array:
  u, v = u - u.mean(-1, keepdims=True), v - v.mean(-1, keepdims=True)
  return (u * v).sum(-1) / jnp.sqrt((u * u).sum(-1) * (v * v).sum(-1))


@jax.jit
def map_correlations(reference: jax.Array, other: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """Per-record Spearman and Pearson correlation of |maps|.

  Args:
    reference: [B, ...] maps.
    other: [B, ...] maps.

  Returns:
    (spearman [B], pearson [B]); NaN where a map is constant.
  """
  u = jnp.abs(reference).reshape(reference.shape[0], -1)
  v = jnp.abs(other).reshape(other.shape[0], -1)
  ru, rv = jax.vmap(_avg_ranks)(u), jax.vmap(_avg_ranks)(v)
  return _pearson(ru, rv), _pearson(u, v)


def cascading_randomization(attribute_fn: Callable[[Any, jax.Array],
                                                   jax.Array],
                            params: Any, x: jax.Array,
                            layer_order: Sequence[str], key: jax.Array, *,
                            cascade: bool = True,
                            randomize_batch_stats: bool = False,
                            return_maps: bool = False) -> dict[str, Any]:
  """Adebayo et al.'s model-parameter randomisation test.

  Args:
    attribute_fn: (params, x [B, T, L]) -> maps [B, T, L]; jitted here once.
    params: params pytree or {'params', 'batch_stats'} variables.
    x: [B, T, L] ECGs.
    layer_order: path prefixes from the output layer to the input.
    key: PRNG key of the re-initialisation.
    cascade: randomise layers cumulatively (True) or one at a time.
    randomize_batch_stats: see `randomize_layers`.
    return_maps: also return the maps [S, B, T, L].

  Returns:
    dict: steps [S] names ('original', then each layer), spearman [S] and
    pearson [S] (means over records, NaN-ignoring), spearman_per_record and
    pearson_per_record [S, B]; step 0 compares the original maps with
    themselves (1).
  """
  fn = jax.jit(attribute_fn)
  ref = fn(params, x)
  steps, maps = ['original'], [ref]
  for i, layer in enumerate(layer_order):
    chosen = layer_order[:i + 1] if cascade else [layer]
    p = randomize_layers(params, chosen, key,
                         randomize_batch_stats=randomize_batch_stats)
    steps.append(layer)
    maps.append(fn(p, x))
  sp, pe = zip(*(map_correlations(ref, m_) for m_ in maps))
  sp, pe = np.asarray(jnp.stack(sp)), np.asarray(jnp.stack(pe))
  out = dict(steps=steps, spearman=np.nanmean(sp, -1),
             pearson=np.nanmean(pe, -1), spearman_per_record=sp,
             pearson_per_record=pe)
  if return_maps:
    out['maps'] = np.asarray(jnp.stack(maps))
  return out


# --------------------------------------------------------------------------
# 4. Ground-truth localisation.


def _profile_and_mask(attributions, masks, sign):
  prof = lead_profile(attributions, sign)  # [M, B, T]
  masks = jnp.asarray(masks, bool)
  if masks.shape != prof.shape[-2:]:
    raise ValueError(f'masks {masks.shape} do not match profiles '
                     f'{prof.shape}')
  return prof, masks


def relevance_mass_accuracy(attributions: jax.Array, masks: jax.Array,
                            sign: str = 'positive') -> np.ndarray:
  """Share of relevance inside the mask (Arras et al. 2022).

  Args:
    attributions: [M, B, T, L] maps (select_target first for [M, B, K, ...]).
    masks: [B, T] bool ground-truth time masks.
    sign: 'positive' (positive part per (t, l)) or 'abs'.

  Returns:
    [M, B] in [0, 1]; 0 where the map has no relevance.
  """
  prof, masks = _profile_and_mask(attributions, masks, sign)
  total = prof.sum(-1)
  inside = jnp.where(masks[None], prof, 0.0).sum(-1)
  return np.asarray(jnp.where(total > 0, inside / jnp.maximum(total, _EPS),
                              0.0))


def relevance_rank_accuracy(attributions: jax.Array, masks: jax.Array,
                            sign: str = 'positive',
                            tie_decimals: int = 6) -> np.ndarray:
  """Share of the |mask| top-ranked samples inside the mask (Arras et al.).

  Args:
    attributions: [M, B, T, L].
    masks: [B, T] bool.
    sign: 'positive' or 'abs'.
    tie_decimals: tie tolerance of the ranking (ties to the lower index).

  Returns:
    [M, B] in [0, 1]; NaN where the mask is empty.
  """
  prof, masks = _profile_and_mask(attributions, masks, sign)
  rank = order_ranks(prof, descending=True, tie_decimals=tie_decimals)
  k = masks.sum(-1)  # [B]
  top = rank < k[None, :, None]
  hits = (top & masks[None]).sum(-1)
  return np.asarray(jnp.where(k > 0, hits / jnp.maximum(k, 1), jnp.nan))


def pointing_game(attributions: jax.Array, masks: jax.Array,
                  sign: str = 'positive', atol: float = 1e-12,
                  rtol: float = 1e-6) -> np.ndarray:
  """Whether the profile's maximum lies in the mask, with tolerant ties.

  Args:
    attributions: [M, B, T, L].
    masks: [B, T] bool.
    sign: 'positive' or 'abs'.
    atol: absolute tie tolerance.
    rtol: tie tolerance relative to the maximum.

  Returns:
    [M, B] float 1.0 (hit) / 0.0 (miss): hit iff some masked sample is
    within atol + rtol * max of the maximum and the maximum is > 0.
  """
  prof, masks = _profile_and_mask(attributions, masks, sign)
  top = prof.max(-1)
  in_max = jnp.where(masks[None], prof, -jnp.inf).max(-1)
  hit = (top > 0) & (in_max >= top - (atol + rtol * jnp.abs(top)))
  return np.asarray(hit, np.float64)


# --------------------------------------------------------------------------
# 5. Ranking of methods.


def ranking_table(scores: Mapping[str, Any], method_names: Sequence[str],
                  higher_is_better: Mapping[str, bool], *,
                  n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                  atol: float = ranking.ATOL, rtol: float = ranking.RTOL
                  ) -> list[dict[str, Any]]:
  """Mean, bootstrap CI, rank and best method per measure.

  Args:
    scores: measure name -> [M, B] per-record scores (NaN ignored).
    method_names: M names, in the order that wins near-ties.
    higher_is_better: measure name -> direction.
    n_boot: bootstrap resamples of the records.
    seed: seed of the resampling (same records for every method).
    level: CI level (percentile interval).
    atol: tie tolerance of the ranking.
    rtol: relative tie tolerance.

  Returns:
    One row per (measure, method): dict(measure, method, mean, low, high,
    level, rank (1 = best), best (bool), n (records with a finite score)).
  """
  rows = []
  for measure, s in scores.items():
    s = np.asarray(s, np.float64)
    if s.ndim != 2 or s.shape[0] != len(method_names):
      raise ValueError(f'{measure}: scores must be [M, B] with M = '
                       f'{len(method_names)}, got {s.shape}')
    finite = np.isfinite(s)
    clean = np.where(finite, s, 0.0)
    n = s.shape[1]
    idx = statistics.bootstrap_indices(n, n_boot, seed)  # [R, B]
    # Multiplicity of each record per resample: [R, B] instead of [M, R, B].
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * n).reshape(n_boot, n)
    with np.errstate(invalid='ignore', divide='ignore'):
      mean = clean.sum(1) / finite.sum(1)
      boot = (clean @ counts.T) / (finite.astype(np.float64) @ counts.T)
    alpha = (1.0 - level) / 2.0
    low = np.nanquantile(boot, alpha, axis=1)
    high = np.nanquantile(boot, 1.0 - alpha, axis=1)
    sign = 1.0 if higher_is_better[measure] else -1.0
    order = ranking.argsort_descending(sign * mean, atol=atol, rtol=rtol)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    for i, name in enumerate(method_names):
      rows.append(dict(measure=measure, method=name, mean=float(mean[i]),
                       low=float(low[i]), high=float(high[i]),
                       level=float(level), rank=int(rank[i]),
                       best=bool(order[0] == i), n=int(finite[i].sum())))
  return rows


def agreement(scores_a: Any, scores_b: Any, higher_is_better_a: bool = True,
              higher_is_better_b: bool = True) -> float:
  """Kendall's tau between two rankings of the same methods.

  Args:
    scores_a: [M] method scores of measure a (e.g. a perturbation AOPC).
    scores_b: [M] of measure b (e.g. relevance mass accuracy).
    higher_is_better_a: direction of a.
    higher_is_better_b: direction of b.

  Returns:
    tau-b in [-1, 1] (scipy.stats.kendalltau); 1 for identical orders.
  """
  a = np.asarray(scores_a, np.float64) * (1 if higher_is_better_a else -1)
  b = np.asarray(scores_b, np.float64) * (1 if higher_is_better_b else -1)
  return float(scipy.stats.kendalltau(a, b).statistic)


_ROW_KEYS = ('measure', 'method', 'mean', 'low', 'high', 'level', 'rank',
             'best', 'n')


def to_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
  """A Markdown table of `ranking_table` rows (best method in bold).

  Args:
    rows: `ranking_table` rows; keys a caller added (e.g. 'target') become
      leading columns, in the order of the first row.
    digits: decimals of the mean and CI.

  Returns:
    The table, one line per row, ending in a newline.
  """
  level = rows[0].get('level', 0.95) if rows else 0.95
  extra = [k for k in (rows[0] if rows else {}) if k not in _ROW_KEYS]
  head = extra + ['measure', 'method', 'mean', f'{100 * level:g} % CI',
                  'rank']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    name = f"**{r['method']}**" if r['best'] else r['method']
    cells = [str(r.get(k, '')) for k in extra] + [
        str(r['measure']), name, f"{r['mean']:.{digits}f}",
        f"[{r['low']:.{digits}f}, {r['high']:.{digits}f}]", str(r['rank'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
