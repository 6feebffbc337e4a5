"""ECG factors of a trained VAE: encoding, active-factor selection, traversals.

FactorECG (van de Leur et al. 2022) reads a trained beta-VAE's latent means as
"ECG factors": it encodes every beat of a data set, keeps the dimensions the
model actually uses (mean KL to the prior above a threshold; 21 of 32 in the
paper) and shows what each one does by decoding latents moved along it, at the
model level (from the population mean) and at the individual level (from one
record's factors).

Pure functions over callables and arrays: `encode_fn(params, x)` is e.g.
`lambda p, x: model.apply({'params': p}, x, method='encode')`, `decode_fn(z)`
e.g. `functools.partial(jax.jit(decode), params)` (parameters stay arguments
of the compiled function); nothing here reads a config, a checkpoint or
training code. Arrays are channels-last, `[batch, time, leads]`.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
import csv
import functools
import os
from typing import Any

import jax
import numpy as np

from factorecg_jax.analysis import ranking

Array = Any
EncodeFn = Callable[..., tuple[Array, Array]]
DecodeFn = Callable[[Array], Any]

# Batch keys that are not per-record values worth keeping.
_DROPPED_KEYS = ('mask',)


def encode_dataset(
    encode_fn: EncodeFn,
    batches: Iterable[Mapping[str, Any]],
    *,
    params: Any = None,
    input_key: str = 'ecg',
    keep_keys: Sequence[str] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: Any = None,
) -> dict[str, np.ndarray]:
  """Encodes every real record of `batches` to its posterior mean and sd.

  `encode_fn` is jitted once here; all batches must share one shape (the
  input pipeline's eval iterator pads the last one and marks it with
  `mask`), so it compiles once. Padded rows (`mask == 0`) are dropped. The
  next batch is dispatched before the previous result is copied back, so
  host and device work overlap.

  Args:
    encode_fn: `x [B, T, L] -> (mu [B, D], sd [B, D])`, traceable by JAX,
      or `(params, x) -> (mu, sd)` when `params` is given; it receives
      `batch[input_key]` as given (already normalised if the model was
      trained on normalised inputs).
    batches: iterable of dicts with `input_key` `[B, T, L]` float32, and
      optionally `mask` `[B]` (1 = real row; default all real), `index`
      `[B]` int (record index in its split) and other per-record fields
      (`id`, `factors` `[B, K]`, `labels` `[B, C]`, ...); a dict entry
      such as `measurements` is flattened to `measurements.<name>`.
    params: model parameters passed to `encode_fn` as an argument. Prefer
      this to closing over them: closed-over arrays become constants baked
      into the compiled program (slow to compile, memory twice).
    input_key: the batch entry fed to `encode_fn`.
    keep_keys: other batch entries to return, filtered like `mu`; default
      every entry except `input_key` and `mask`.
    sharding: optional sharding to place each input batch with (e.g. rows
      over a `('data',)` mesh for data-parallel encoding); default: JAX's
      default placement.
    progress: optional `console.Progress`, advanced by one per batch.

  Returns:
    Dict of numpy arrays over the n real records in iteration order: `mu`
    `[n, D]` float32, `sd` `[n, D]` float32, and each kept batch entry
    `[n, ...]` (e.g. `index` `[n]` int64).

  Raises:
    ValueError: if there are no batches or no real records.
  """
  if params is None:
    jit_encode = jax.jit(encode_fn)
  else:
    jit_encode = functools.partial(jax.jit(encode_fn), params)
  outputs: dict[str, list[np.ndarray]] = {}
  pending = None  # (device result, host-side fields) of the previous batch

  def collect(item):
    (mu, sd), real, fields = item
    mu, sd = jax.device_get((mu, sd))
    outputs.setdefault('mu', []).append(np.asarray(mu, np.float32)[real])
    outputs.setdefault('sd', []).append(np.asarray(sd, np.float32)[real])
    for key, value in fields.items():
      outputs.setdefault(key, []).append(np.asarray(value)[real])

  num_batches = 0
  for batch in batches:
    x = batch[input_key]
    num_rows = np.shape(x)[0]
    mask = batch.get('mask')
    real = (np.ones(num_rows, bool) if mask is None
            else np.asarray(mask).reshape(num_rows) > 0)
    names = keep_keys
    if names is None:
      names = [k for k in batch if k != input_key and k not in _DROPPED_KEYS]
    fields = {}
    for k in names:
      if isinstance(batch[k], Mapping):  # e.g. 'measurements': name -> [B]
        fields.update({f'{k}.{s}': v for s, v in batch[k].items()})
      else:
        fields[k] = batch[k]
    if sharding is not None:
      x = jax.device_put(np.asarray(x), sharding)
    result = jit_encode(x)  # asynchronous dispatch
    if pending is not None:
      collect(pending)
    pending = (result, real, fields)
    num_batches += 1
    if progress is not None:
      progress.update(1)
  if pending is not None:
    collect(pending)
  if not num_batches:
    raise ValueError('No batches to encode.')
  out = {k: np.concatenate(v) for k, v in outputs.items()}
  if not len(out['mu']):
    raise ValueError('No real records to encode (every mask is 0).')
  return out


def kl_per_dim(mu: Array, sd: Array) -> np.ndarray:
  """Mean over records of KL(N(mu, sd^2) || N(0, 1)), per latent dimension.

  The exact Gaussian KL, `0.5 (mu^2 + sd^2 - 1) - log sd` (Kingma & Welling
  2014, appendix B), averaged over records in float64; unlike the training
  loss (losses.gaussian_kl) mu and sd are not clipped.

  Args:
    mu: [n, D] posterior means.
    sd: [n, D] posterior standard deviations, > 0.

  Returns:
    [D] float64, nats per record.

  Raises:
    ValueError: on mismatched or non-2-D shapes, no records, or sd <= 0.
  """
  mu = np.asarray(mu, np.float64)
  sd = np.asarray(sd, np.float64)
  if mu.ndim != 2 or mu.shape != sd.shape or not len(mu):
    raise ValueError(
        f'mu and sd must both be [n, D] with n > 0; got {mu.shape} and '
        f'{sd.shape}.'
    )
  if np.any(sd <= 0):
    raise ValueError('Posterior sds must be positive.')
  kl = 0.5 * (np.square(mu) + np.square(sd) - 1.0) - np.log(sd)
  return kl.mean(axis=0)


def active_factors(kl: Array, threshold: float) -> np.ndarray:
  """Dimensions whose mean KL exceeds `threshold`, most informative first.

  Args:
    kl: [D] mean KL per dimension (`kl_per_dim`), nats.
    threshold: strict lower bound, nats (the configs use 0.01).

  Returns:
    [k] int64 dimension indices with `kl > threshold`, sorted by KL
    descending; KLs within `ranking.RTOL` (relative) of each other are ties
    and keep index order, so the order never hangs on rounding.
  """
  kl = np.asarray(kl, np.float64).reshape(-1)
  order = ranking.argsort_descending(kl)
  return order[kl[order] > threshold].astype(np.int64)


def _decode_mean(decode_fn: DecodeFn, z: np.ndarray) -> np.ndarray:
  """`decode_fn(z)` as float32 numpy; a `(mean, sd)` output gives mean."""
  out = decode_fn(z)
  if isinstance(out, (tuple, list)):
    out = out[0]
  return np.asarray(jax.device_get(out), np.float32)


def _traversal_latents(
    z0: np.ndarray, dims: Sequence[int], sds: Sequence[float],
    scale: np.ndarray
) -> np.ndarray:
  """[n_dims, n_steps, D]: z0 with dim d moved by k * scale[d]."""
  dims = np.asarray(dims, np.int64).reshape(-1)
  sds = np.asarray(sds, np.float64).reshape(-1)
  num_dims = z0.shape[-1]
  if len(dims) and (dims.min() < 0 or dims.max() >= num_dims):
    raise ValueError(f'dims must lie in [0, {num_dims}); got {dims}.')
  if not len(sds) or not np.all(np.isfinite(sds)):
    raise ValueError(f'sds must be finite numbers; got {sds}.')
  z = np.broadcast_to(z0, (len(dims), len(sds), num_dims)).copy()
  for i, d in enumerate(dims):
    z[i, :, d] = z0[d] + sds * scale[d]
  return z


def _decode_traversal(decode_fn: DecodeFn, z: np.ndarray) -> np.ndarray:
  """Decodes [n_dims, n_steps, D] latents in one call."""
  n_dims, n_steps, num_latents = z.shape
  if not n_dims:
    raise ValueError('No dimensions to traverse.')
  beats = _decode_mean(
      decode_fn, z.reshape(n_dims * n_steps, num_latents).astype(np.float32)
  )
  return beats.reshape((n_dims, n_steps) + beats.shape[1:])


def population_sd(mu: Array) -> np.ndarray:
  """SD over records of each latent mean: [n, D] -> [D] float64 (ddof 0)."""
  return np.asarray(mu, np.float64).std(axis=0)


def population_traversal(
    decode_fn: DecodeFn,
    mu: Array,
    dims: Sequence[int],
    sds: Sequence[float],
    *,
    scale: float | Array | None = None,
) -> np.ndarray:
  """Model-level traversals: the population mean with one factor moved.

  Starts at the population mean of the posterior means, `mean_n mu[n]`, and
  sets dimension d to `mean(mu_d) + k * scale_d` for every k in `sds`.

  By default `scale_d` is the population SD of `mu_d` (the spread of the
  factor over the data), not the prior SD of 1. In a beta-VAE the aggregate
  posterior splits the prior's unit variance into Var(mu_d) + E[sd_d^2], so
  active factors typically have Var(mu_d) < 1: k = +-3 in prior units can
  leave the region the decoder was trained on, while k population SDs stays
  at the k-SD quantiles of what real ECGs encode to, which is what a
  clinician reads as "a high / low value of this factor". Inactive factors
  (mu_d ~ 0 for every record) then do not move at all. Pass `scale=1.0` to
  traverse in prior units instead.

  Args:
    decode_fn: `z [m, D] -> beats [m, T, L]` (or `(mean, sd)`, mean used),
      called once with m = len(dims) * len(sds); jit it for speed, with the
      parameters as an argument (`functools.partial(jax.jit(f), params)`).
      Its output units are the plot's (wrap it to de-normalise).
    mu: [n, D] posterior means of a data set.
    dims: latent dimensions to traverse.
    sds: steps, in units of `scale`, e.g. (-3, -2, -1, 0, 1, 2, 3).
    scale: None (population SD of mu, default), a number or [D].

  Returns:
    [len(dims), len(sds), T, L] float32 decoded beats.
  """
  mu = np.asarray(mu, np.float64)
  if mu.ndim != 2 or not len(mu):
    raise ValueError(f'mu must be [n, D] with n > 0; got {mu.shape}.')
  scale = population_sd(mu) if scale is None else scale
  scale = np.broadcast_to(np.asarray(scale, np.float64), mu.shape[1:])
  z = _traversal_latents(mu.mean(axis=0), dims, sds, scale)
  return _decode_traversal(decode_fn, z)


def individual_traversal(
    decode_fn: DecodeFn,
    z0: Array,
    dims: Sequence[int],
    sds: Sequence[float],
    scale: float | Array = 1.0,
) -> np.ndarray:
  """Individual-level traversals: one record's factors with one moved.

  Sets dimension d of `z0` to `z0_d + k * scale_d` for every k in `sds`, the
  other factors staying at the record's values, so the step 0 decodes the
  record's own reconstruction from its means.

  Args:
    decode_fn: as in `population_traversal`.
    z0: [D] the record's factors (its posterior means).
    dims: latent dimensions to traverse.
    sds: steps, in units of `scale`.
    scale: a number or [D]; `population_sd(mu)` moves each factor in units
      of its spread over the data (as `population_traversal` does), 1.0 in
      prior units.

  Returns:
    [len(dims), len(sds), T, L] float32 decoded beats.
  """
  z0 = np.asarray(z0, np.float64).reshape(-1)
  scale = np.broadcast_to(np.asarray(scale, np.float64), z0.shape)
  return _decode_traversal(decode_fn, _traversal_latents(z0, dims, sds, scale))


def save_factors(path: str, factors: Mapping[str, Any]) -> str:
  """Writes factors (and any per-record fields) to an npz file.

  Args:
    path: output file ('.npz' is added by numpy if missing); parent folders
      are created.
    factors: dict of arrays, e.g. from `encode_dataset`: `mu` `[n, D]`,
      `sd` `[n, D]`, `ids` `[n]` (ints or strings), `index` `[n]`, `factors`
      `[n, K]`, `labels` `[n, C]`, and any extra scalars/arrays. String
      arrays are stored as fixed-width unicode, so loading needs no pickle.

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if not path.endswith('.npz'):
    path += '.npz'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  arrays = {}
  for key, value in factors.items():
    value = np.asarray(value)
    if value.dtype == object or value.dtype.kind == 'S':
      value = value.astype(str)
    arrays[key] = value
  np.savez(path, **arrays)
  return path


def load_factors(path: str) -> dict[str, np.ndarray]:
  """Reads a `save_factors` file back: dict of numpy arrays."""
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def factors_table(
    factors: Mapping[str, Any],
    *,
    dims: Sequence[int] | None = None,
    factor_names: Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
  """Flat columns, one row per record (a pandas DataFrame or a CSV).

  Args:
    factors: dict with `mu`, `sd` `[n, D]`, and optionally `ids` (else
      `index`) `[n]`, true `factors` `[n, K]` and `labels` `[n, C]`.
    dims: latent dimensions to include (default all), e.g. the active ones.
    factor_names: K names of the true factors (default 'v0', ...).
    label_names: C names of the labels (default 'label_0', ...).

  Returns:
    Ordered dict of 1-D columns of length n: `id`, `mu_<d>` and `sd_<d>`
    per dimension (two digits), `true_<name>` per true factor and
    `label_<name>` per label (int 0/1).
  """
  mu = np.asarray(factors['mu'])
  sd = np.asarray(factors['sd'])
  n, num_latents = mu.shape
  dims = range(num_latents) if dims is None else [int(d) for d in dims]
  columns = {}
  ids = factors.get('ids', factors.get('index'))
  columns['id'] = np.arange(n) if ids is None else np.asarray(ids)
  for d in dims:
    columns[f'mu_{d:02d}'] = mu[:, d]
  for d in dims:
    columns[f'sd_{d:02d}'] = sd[:, d]
  if factors.get('factors') is not None:
    true = np.asarray(factors['factors']).reshape(n, -1)
    names = factor_names or [f'v{j}' for j in range(true.shape[1])]
    for j, name in enumerate(names):
      columns[f'true_{name}'] = true[:, j]
  if factors.get('labels') is not None:
    labels = np.asarray(factors['labels']).reshape(n, -1)
    names = label_names or [str(j) for j in range(labels.shape[1])]
    for j, name in enumerate(names):
      columns[f'label_{name}'] = labels[:, j].astype(np.int64)
  return columns


def write_csv(path: str, columns: Mapping[str, Any]) -> str:
  """Writes equal-length 1-D columns as a CSV with a header row.

  Floats are written with 7 significant digits (float32 precision).

  Returns:
    The path written.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  names = list(columns)
  values = [np.asarray(columns[k]) for k in names]
  lengths = {len(v) for v in values}
  if len(lengths) > 1:
    raise ValueError(f'Columns differ in length: {sorted(lengths)}.')

  def fmt(v):
    return f'{v:.7g}' if isinstance(v, (float, np.floating)) else v

  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(names)
    for row in zip(*[v.tolist() for v in values]):
      writer.writerow([fmt(v) for v in row])
  return path
