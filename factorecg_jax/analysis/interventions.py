"""Intervention metrics: BetaVAE and FactorVAE scores against a generator.

Both scores fix one ground-truth factor, let the others vary, encode what the
generator renders, and ask a classifier which factor was fixed (Higgins et al.
2017, section 3; Kim & Mnih 2018, section 4). They need the generator, not just
a data set, so they take three plain callables:

* `sample_factors(key, n) -> [n, K]` continuous factors;
* `render(factors [n, K], key) -> observations` (any pytree of arrays with a
  leading axis n, e.g. `{'ecg': [n, 600, 12], 'factors': [n, K]}`);
* `encode(observations) -> [n, D]` codes (posterior means).

Fixing a factor sets it, for a whole group, to one value drawn from the
factor's own distribution (the first row's value, as disentanglement_lib
does); with `snap_bins` the value is first moved to the median of its
equal-frequency bin, so that fixed values come from a finite set as for a
discrete factor. `simulator_generator` binds factorecg_jax.data.simulator and
`oracle_encoder` reads the true factors back, which scores ~1 by
construction. Defaults are those of disentanglement_lib's standard study:
groups of 64, 10,000 training and 5,000 evaluation points, 10,000 points for
the FactorVAE variance estimate and a 0.05 pruning threshold.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model

from factorecg_jax import console
from factorecg_jax.data import simulator

SampleFn = Callable[[jax.Array, int], Any]
RenderFn = Callable[[Any, jax.Array], Any]
EncodeFn = Callable[[Any], Any]

BATCH_SIZE = 64
NUM_TRAIN = 10_000
NUM_EVAL = 5_000
NUM_VARIANCE_ESTIMATE = 10_000
PRUNE_THRESHOLD = 0.05
CHUNK_ROWS = 4096


def _bin_medians(
    sample_factors: SampleFn, key: jax.Array, num_bins: int, n: int = 10_000
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per factor (inner edges, bin medians) of equal-frequency bins."""
  f = np.asarray(sample_factors(key, n), np.float64)
  out = []
  for j in range(f.shape[1]):
    qs = np.linspace(0.0, 1.0, num_bins + 1)
    edges = np.quantile(f[:, j], qs[1:-1])
    idx = np.searchsorted(edges, f[:, j], side='right')
    med = np.array([np.median(f[idx == b, j]) if np.any(idx == b)
                    else np.nan for b in range(num_bins)])
    out.append((edges, med))
  return out


def _snap(values: np.ndarray, factor_idx: np.ndarray, bins) -> np.ndarray:
  """Moves values [G, ...] of factors factor_idx [G] to their bin medians."""
  out = values.copy()
  for j in np.unique(factor_idx):
    edges, med = bins[j]
    rows = factor_idx == j
    out[rows] = med[np.searchsorted(edges, values[rows], side='right')]
  return out


def _group_features(
    key: jax.Array,
    sample_factors: SampleFn,
    render: RenderFn,
    encode: EncodeFn,
    *,
    num_groups: int,
    rows_per_group: int,
    choices: np.ndarray,
    fix: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    reduce: Callable[[np.ndarray], np.ndarray],
    chunk_rows: int,
    desc: str = '',
) -> tuple[np.ndarray, np.ndarray]:
  """Labels [num_groups] and features [num_groups, F] of factor-fixed groups.

  Groups are generated in chunks of equal size (the last one is filled up
  and cut), so jitted `render`/`encode` compile for one shape only. A
  non-empty `desc` shows progress over the chunks.
  """
  per_chunk = max(1, chunk_rows // rows_per_group)
  labels, feats = [], []
  num_chunks = -(-num_groups // per_chunk)
  progress = console.Progress(num_chunks, desc, unit='chunks') if desc else None
  for c in range(num_chunks):
    k_label, k_factor, k_render = jax.random.split(jax.random.fold_in(key, c),
                                                   3)
    which = np.asarray(jax.random.randint(k_label, (per_chunk,), 0,
                                          len(choices)))
    factors = np.array(sample_factors(k_factor, per_chunk * rows_per_group),
                       np.float32)
    factors = factors.reshape(per_chunk, rows_per_group, -1)
    factors = fix(factors, choices[which], which)
    obs = render(factors.reshape(per_chunk * rows_per_group, -1), k_render)
    codes = np.asarray(encode(obs), np.float64)
    feats.append(reduce(codes.reshape(per_chunk, rows_per_group, -1)))
    labels.append(which)
    if progress is not None:
      progress.update(1)
  if progress is not None:
    progress.close()
  return (np.concatenate(labels)[:num_groups],
          np.concatenate(feats)[:num_groups])


def _choices(num_factors: int, factor_indices: Sequence[int] | None):
  if factor_indices is None:
    return np.arange(num_factors)
  return np.asarray(factor_indices, np.int64)


def _num_factors(sample_factors: SampleFn, key: jax.Array) -> int:
  return int(np.shape(sample_factors(key, 2))[1])


def beta_vae_score(
    key: jax.Array,
    sample_factors: SampleFn,
    render: RenderFn,
    encode: EncodeFn,
    *,
    batch_size: int = BATCH_SIZE,
    num_train: int = NUM_TRAIN,
    num_eval: int = NUM_EVAL,
    factor_indices: Sequence[int] | None = None,
    snap_bins: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    seed: int = 0,
) -> dict[str, float]:
  """BetaVAE score (Higgins et al. 2017, section 3 and appendix A.4).

  A point: pick a factor k uniformly, draw `batch_size` pairs of factor
  vectors whose k-th factors agree within each pair (all other factors free),
  render and encode both members, and take the mean absolute code difference
  over the pairs, [D]. A linear classifier (sklearn LogisticRegression,
  default settings, max_iter=1000) predicts k from it; the score is its
  accuracy on fresh evaluation points. Chance is 1 / (number of factors).

  Args:
    key: PRNG key; training and evaluation points use separate streams.
    sample_factors: (key, n) -> [n, K] factors.
    render: (factors [n, K], key) -> observations with leading axis n.
    encode: observations -> [n, D] codes.
    batch_size: pairs per point (64).
    num_train: training points (10,000).
    num_eval: evaluation points (5,000).
    factor_indices: factors that may be fixed (default all K); labels index
      into this list.
    snap_bins: if set, fixed values are bin medians of this many
      equal-frequency bins per factor.
    chunk_rows: observations rendered and encoded per call.
    seed: random_state of the classifier.

  Returns:
    dict: 'train_accuracy', 'eval_accuracy', 'num_factors' (classes).
  """
  choices = _choices(_num_factors(sample_factors, key), factor_indices)
  bins = (None if snap_bins is None else
          _bin_medians(sample_factors, jax.random.fold_in(key, 2), snap_bins))

  def fix(f, ks, _):
    # Rows [0, B) are the first members, [B, 2B) the second ones.
    g = np.arange(len(ks))
    values = f[g, :batch_size, ks]  # [G, B]
    if bins is not None:
      values = _snap(values, ks, bins)
      f[g, :batch_size, ks] = values
    f[g, batch_size:, ks] = values
    return f

  def reduce(codes):
    return np.mean(np.abs(codes[:, :batch_size] - codes[:, batch_size:]),
                   axis=1)

  make = functools.partial(
      _group_features, sample_factors=sample_factors, render=render,
      encode=encode, rows_per_group=2 * batch_size, choices=choices, fix=fix,
      reduce=reduce, chunk_rows=chunk_rows)
  y_train, x_train = make(jax.random.fold_in(key, 0), num_groups=num_train,
                          desc='  BetaVAE score, train points')
  y_eval, x_eval = make(jax.random.fold_in(key, 1), num_groups=num_eval,
                        desc='  BetaVAE score, eval points')
  model = linear_model.LogisticRegression(max_iter=1000, random_state=seed)
  model.fit(x_train, y_train)
  return dict(
      train_accuracy=float(np.mean(model.predict(x_train) == y_train)),
      eval_accuracy=float(np.mean(model.predict(x_eval) == y_eval)),
      num_factors=float(len(choices)))


def _encode_unfixed(key, sample_factors, render, encode, n, chunk_rows):
  """[n, D] codes of n freely drawn factor vectors, in equal chunks."""
  out = []
  for c in range(-(-n // chunk_rows)):
    k_factor, k_render = jax.random.split(jax.random.fold_in(key, c))
    f = np.asarray(sample_factors(k_factor, chunk_rows), np.float32)
    out.append(np.asarray(encode(render(f, k_render)), np.float64))
  return np.concatenate(out)[:n]


def factor_vae_score(
    key: jax.Array,
    sample_factors: SampleFn,
    render: RenderFn,
    encode: EncodeFn,
    *,
    batch_size: int = BATCH_SIZE,
    num_train: int = NUM_TRAIN,
    num_eval: int = NUM_EVAL,
    num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
    prune_threshold: float = PRUNE_THRESHOLD,
    factor_indices: Sequence[int] | None = None,
    snap_bins: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, float]:
  """FactorVAE score (Kim & Mnih 2018, section 4).

  Codes are divided by their standard deviations over freely drawn data
  (`num_variance_estimate` points); dimensions with sd < `prune_threshold`
  (collapsed to the prior) are dropped. A point: pick a factor k, draw
  `batch_size` factor vectors sharing one value of factor k, encode, and vote
  for the (kept) dimension of least normalised variance (ddof=1). The
  majority-vote classifier maps each dimension to the factor it most often
  won for; the score is its accuracy on fresh votes. Unlike
  disentanglement_lib, the winning index is mapped back to the full code
  before voting (it indexed the pruned vector), which only matters when
  dimensions are pruned. Chance is 1 / (number of factors).

  Args:
    key: PRNG key; variance, training and evaluation use separate streams.
    sample_factors, render, encode: the generator and encoder (see module).
    batch_size: factor vectors per point (64).
    num_train: training points (10,000).
    num_eval: evaluation points (5,000).
    num_variance_estimate: points for the global variances (10,000).
    prune_threshold: minimum global sd of a kept dimension (0.05).
    factor_indices: factors that may be fixed (default all).
    snap_bins: see `beta_vae_score`.
    chunk_rows: observations rendered and encoded per call.

  Returns:
    dict: 'train_accuracy', 'eval_accuracy', 'num_active_dims',
    'num_factors'.
  """
  choices = _choices(_num_factors(sample_factors, key), factor_indices)
  bins = (None if snap_bins is None else
          _bin_medians(sample_factors, jax.random.fold_in(key, 3), snap_bins))
  codes = _encode_unfixed(jax.random.fold_in(key, 0), sample_factors, render,
                          encode, num_variance_estimate, chunk_rows)
  global_var = np.var(codes, axis=0, ddof=1)
  active = np.flatnonzero(np.sqrt(global_var) >= prune_threshold)
  if not len(active):
    return dict(train_accuracy=0.0, eval_accuracy=0.0, num_active_dims=0.0,
                num_factors=float(len(choices)))

  def fix(f, ks, _):
    g = np.arange(len(ks))
    values = f[g, 0, ks]
    if bins is not None:
      values = _snap(values, ks, bins)
    f[g, :, ks] = values[:, None]
    return f

  def reduce(c):
    local = np.var(c, axis=1, ddof=1)  # [G, D]
    ratio = local[:, active] / global_var[active]
    return active[np.argmin(ratio, axis=1)][:, None]

  make = functools.partial(
      _group_features, sample_factors=sample_factors, render=render,
      encode=encode, rows_per_group=batch_size, choices=choices, fix=fix,
      reduce=reduce, chunk_rows=chunk_rows)
  num_dims = codes.shape[1]

  def votes(k, n, desc):
    labels, argmins = make(k, num_groups=n, desc=desc)
    v = np.zeros((len(choices), num_dims), np.int64)
    np.add.at(v, (labels, argmins[:, 0]), 1)
    return v

  train_votes = votes(jax.random.fold_in(key, 1), num_train,
                      '  FactorVAE score, train points')
  eval_votes = votes(jax.random.fold_in(key, 2), num_eval,
                     '  FactorVAE score, eval points')
  classifier = np.argmax(train_votes, axis=0)  # [D] factor of each dim
  dims = np.arange(num_dims)
  return dict(
      train_accuracy=float(train_votes[classifier, dims].sum()
                           / train_votes.sum()),
      eval_accuracy=float(eval_votes[classifier, dims].sum()
                          / eval_votes.sum()),
      num_active_dims=float(len(active)),
      num_factors=float(len(choices)))


# ----------------------------------------------------------------------------
# Bindings.


def simulator_generator(
    mode: str = 'uniform', noise: bool = True
) -> tuple[SampleFn, RenderFn]:
  """(sample_factors, render) of factorecg_jax.data.simulator.

  `render` returns `{'ecg': [n, 600, 12] float32 mV, 'factors': [n, 14]}`:
  the (noisy) median beat `clean_beat + beat_noise` of each factor vector,
  and the factors themselves for `oracle_encoder`. It is jitted once per
  batch size.

  Args:
    mode: factor sampler, 'uniform' (full ranges, the default for metrics)
      or 'realistic'.
    noise: add the simulator's nuisance noise (scaled by noise_level).

  Returns:
    (sample_factors, render).
  """
  def sample_factors(key, n):
    return simulator.sample_factors(key, n, mode)

  @jax.jit
  def _beats(factors, key):
    beats = jax.vmap(simulator.clean_beat)(factors)
    if noise:
      keys = jax.random.split(key, factors.shape[0])
      beats = beats + jax.vmap(simulator.beat_noise)(factors, keys)
    return beats

  def render(factors, key):
    factors = jnp.asarray(factors, jnp.float32)
    return {'ecg': _beats(factors, key), 'factors': factors}

  return sample_factors, render


def oracle_encoder(
    indices: Sequence[int] | None = None,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> EncodeFn:
  """An encoder returning the true factors (or a subset) as codes.

  Reads `observations['factors']` (as `simulator_generator` renders) or, for
  a plain array, the observations themselves. With `low`/`high` every factor
  is mapped affinely to [0, 1] (e.g. the simulator's FACTOR_LOW/HIGH), which
  keeps it an oracle but gives the BetaVAE classifier (unscaled, L2
  regularised) and the FactorVAE pruning comparable scales.

  Args:
    indices: factor columns to return (default all).
    low: optional [K] lower ends of the factor ranges.
    high: optional [K] upper ends.

  Returns:
    encode(observations) -> [n, len(indices)] codes.
  """
  def encode(obs):
    f = np.asarray(obs['factors'] if isinstance(obs, dict) else obs,
                   np.float64)
    if low is not None and high is not None:
      lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
      f = (f - lo) / (hi - lo)
    return f if indices is None else f[:, np.asarray(indices)]
  return encode
