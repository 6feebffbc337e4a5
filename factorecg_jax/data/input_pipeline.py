"""Numpy input pipeline: sources -> shuffled, batched, normalised batches.

The pipeline knows no model. A *source* (see `sources.py`) is a random-access
sequence of records with a vectorised `get_batch(indices)`; this module adds

- sampling: a seeded permutation per epoch; global batch k is the positions
  [k * B, (k + 1) * B) of the concatenated permutations, so it depends only on
  (seed, k) and a run restarted at `start_step` sees the same stream;
- per-process reading: each JAX process reads its contiguous slice of every
  global batch (rows [p * B / P, (p + 1) * B / P)), ready for
  `jax.make_array_from_process_local_data`;
- padding: evaluation batches are padded to full size and carry a `mask`;
- normalisation: 'none', 'per_lead' or 'global' mean/std estimated on a fixed
  subset of the training split;
- optional prefetching on a background thread (bounded queue).

Every batch is a dict: 'ecg' [B, T, 12] float32 (the model input, channels
last), 'mask' [B] float32, 'index' [B] int64 (record index in its split, -1 on
padding) and any requested record fields ('factors', 'labels', ...).
"""

import dataclasses
import queue
import threading
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from factorecg_jax.data import sources

# Re-exported so callers need only this module.
OnTheFlySource = sources.OnTheFlySource
TfdsSource = sources.TfdsSource

Batch = dict[str, Any]
NORMALIZATIONS = ('none', 'per_lead', 'global')


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Affine input normalisation `(x - mean) / std`, broadcast over leads.

  Attributes:
    kind: 'none', 'per_lead' or 'global'.
    mean: [12] (per lead) or [1] float32, mV.
    std: same shape as `mean`, mV, > 0.
  """

  kind: str
  mean: np.ndarray
  std: np.ndarray

  def __call__(self, x: np.ndarray) -> np.ndarray:
    """Normalises `x` [..., T, 12] (mV) to float32."""
    return ((x - self.mean) / self.std).astype(np.float32)

  def denormalize(self, x: np.ndarray) -> np.ndarray:
    """Maps normalised `x` [..., T, 12] back to mV."""
    return (x * self.std + self.mean).astype(np.float32)

  def as_dict(self) -> dict[str, Any]:
    """JSON-friendly form, for run directories."""
    return dict(
        kind=self.kind, mean=self.mean.tolist(), std=self.std.tolist()
    )


def identity_normalizer(num_leads: int = 12) -> Normalizer:
  """A normaliser that leaves inputs unchanged."""
  return Normalizer(
      'none', np.zeros(num_leads, np.float32), np.ones(num_leads, np.float32)
  )


def estimate_normalizer(
    source: Any,
    kind: str = 'per_lead',
    *,
    input_key: str = 'beat',
    num_records: int = 1024,
    batch_size: int = 256,
    seed: int = 0,
    min_std: float = 1e-6,
) -> Normalizer:
  """Estimates normalisation statistics on a fixed subset of `source`.

  The subset (`num_records` indices drawn without replacement with `seed`,
  read in sorted order) does not depend on the training seed or the process,
  so every process and every run on the same data gets the same statistics.

  Args:
    source: the training source.
    kind: 'none', 'per_lead' (mean/std per lead over records and time) or
      'global' (one mean/std over everything).
    input_key: record field holding the signal, [T, L] per record.
    num_records: size of the subset (all records if the source is smaller).
    batch_size: records read per `get_batch` call.
    seed: seed of the subset.
    min_std: lower bound on the standard deviation.

  Returns:
    A `Normalizer`.
  """
  if kind not in NORMALIZATIONS:
    raise ValueError(f'Unknown normalization {kind!r}; use {NORMALIZATIONS}.')
  if kind == 'none':
    return identity_normalizer()
  n = len(source)
  if n == 0:
    raise ValueError('Cannot estimate normalisation on an empty source.')
  m = min(n, num_records)
  subset = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
  total, total_sq, count = 0.0, 0.0, 0
  for start in range(0, m, batch_size):
    x = source.get_batch(subset[start : start + batch_size])[input_key]
    x = np.asarray(x, np.float64)
    # Per-lead sums over records and time; a global estimate pools leads.
    axes = tuple(range(x.ndim - 1)) if kind == 'per_lead' else None
    total = total + x.sum(axis=axes)
    total_sq = total_sq + np.square(x).sum(axis=axes)
    count += x.size // (x.shape[-1] if kind == 'per_lead' else 1)
  mean = np.atleast_1d(total / count)
  var = np.atleast_1d(total_sq / count) - np.square(mean)
  std = np.sqrt(np.maximum(var, 0.0))
  return Normalizer(
      kind,
      mean.astype(np.float32),
      np.maximum(std, min_std).astype(np.float32),
  )


def _process_slice(
    global_batch_size: int,
    process_index: int | None,
    process_count: int | None,
) -> slice:
  """Rows of every global batch that this process reads."""
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index {process_index} not in [0, {process_count}).'
    )
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} must be a positive multiple '
        f'of the number of processes ({process_count}).'
    )
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _assemble(
    source: Any,
    indices: np.ndarray,
    valid: np.ndarray,
    *,
    keys: Sequence[str],
    input_key: str,
    normalizer: Normalizer | None,
) -> Batch:
  """Reads `indices` and builds a batch dict ('ecg', extras, mask, index)."""
  rows = source.get_batch(indices)
  batch = {}
  for key in keys:
    if key == 'ecg':
      x = np.asarray(rows[input_key], np.float32)
      batch['ecg'] = normalizer(x) if normalizer is not None else x
    elif key not in ('mask', 'index'):
      batch[key] = rows[key]
  batch['mask'] = valid.astype(np.float32)
  batch['index'] = np.where(valid, indices, -1).astype(np.int64)
  return batch


def epoch_permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
  """The order of the records in `epoch`: [num_records] int64."""
  return np.random.default_rng([seed, epoch]).permutation(num_records)


def train_indices(
    seed: int, step: int, global_batch_size: int, num_records: int, cache=None
) -> np.ndarray:
  """Record indices of global batch `step`: [global_batch_size] int64.

  Positions [step * B, (step + 1) * B) of the concatenation of the epoch
  permutations; a batch may straddle two epochs.
  """
  positions = step * global_batch_size + np.arange(global_batch_size)
  epochs, offsets = np.divmod(positions, num_records)
  out = np.empty(global_batch_size, np.int64)
  for epoch in np.unique(epochs):
    epoch = int(epoch)
    if cache is not None and epoch in cache:
      perm = cache[epoch]
    else:
      perm = epoch_permutation(seed, epoch, num_records)
      if cache is not None:
        # Keep the current and the next epoch only.
        for old in [e for e in cache if e < epoch]:
          del cache[old]
        cache[epoch] = perm
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out


def prefetch(
    iterator: Iterator[Batch], size: int, *, join_timeout: float = 60.0
) -> Iterator[Batch]:
  """Runs `iterator` on a background thread, `size` items ahead.

  The order of items is unchanged, so prefetching never alters the stream.
  Errors raised by `iterator` are re-raised by the consumer. When the consumer
  stops (closes or drops the returned generator, or the interpreter exits)
  the thread is told to stop and joined: a daemon thread still inside a JAX
  call when Python finalises aborts the process ("terminate called ...
  FATAL: exception not rethrown").

  Args:
    iterator: any iterator.
    size: maximum number of items buffered; 0 returns `iterator` unchanged.
    join_timeout: seconds to wait for the thread to finish its current item
      when the consumer stops; a warning is logged if it is still running.

  Returns:
    An iterator over the same items.
  """
  if size <= 0:
    return iterator
  buffer = queue.Queue(maxsize=size)
  stop = threading.Event()
  end = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for item in iterator:
        if not put((item, None)):
          return
        if stop.is_set():
          return
      put((end, None))
    except BaseException as e:  # pylint: disable=broad-except
      put((end, e))

  thread = threading.Thread(target=work, daemon=True, name='prefetch')
  thread.start()

  def shutdown():
    stop.set()
    if thread is threading.current_thread() or not thread.is_alive():
      return
    thread.join(join_timeout)
    if thread.is_alive():
      logging.warning(
          'Prefetch thread still running %.0f s after the consumer stopped.',
          join_timeout,
      )

  def consume():
    try:
      while True:
        item, error = buffer.get()
        if error is not None:
          raise error
        if item is end:
          return
        yield item
    finally:
      shutdown()

  items = consume()
  # Also stop when the consumer is dropped before its first item; finalizers
  # still pending run at interpreter exit, before daemon threads are killed.
  weakref.finalize(items, shutdown)
  return items


def _thread_safe_prefetch(source: Any, size: int) -> int:
  """The prefetch size to use for `source`: 0 when it computes with JAX.

  A source whose `get_batch` runs JAX computations (the simulator: its
  `computes_with_jax` attribute is true) is read on the consumer's thread.
  JAX calls made from the prefetch thread while the training loop dispatches
  its step aborted a test process once in CI (jaxlib 0.10.2, CPU:
  "Fatal Python error: Aborted" with both threads inside JAX); and such a
  thread buys little, because the simulation runs on the same devices as the
  step it would overlap. Sources that read files keep their thread.
  """
  if size > 0 and getattr(source, 'computes_with_jax', False):
    return 0
  return size


def train_iterator(
    source: Any,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    keys: Sequence[str] = ('ecg',),
    process_index: int | None = None,
    process_count: int | None = None,
    normalizer: Normalizer | None = None,
    input_key: str = 'beat',
    prefetch_size: int = 0,
) -> Iterator[Batch]:
  """Infinite iterator of shuffled local training batches.

  Global batch k holds the records `train_indices(seed, k, B, len(source))`;
  this process yields rows [p * B / P, (p + 1) * B / P) of it. Batch k depends
  only on (seed, k, process_index, process_count), so restarting at
  `start_step=s` reproduces batches s, s + 1, ...

  Args:
    source: a source (`len`, `get_batch`).
    global_batch_size: B, rows of a global batch (a multiple of P).
    seed: sampling seed.
    start_step: index of the first batch yielded.
    keys: batch keys; 'ecg' is the normalised `input_key` field, others are
      record fields copied as they are. 'mask' and 'index' are always present.
    process_index: p, this process (default `jax.process_index()`).
    process_count: P, number of processes (default `jax.process_count()`).
    normalizer: applied to 'ecg' (None: unchanged).
    input_key: record field used as 'ecg' ('beat', 'beat_clean', 'strip').
    prefetch_size: batches prepared ahead on a background thread (0: none;
      ignored for sources that compute with JAX, see
      `_thread_safe_prefetch`).

  Yields:
    Dicts with 'ecg' [B / P, T, 12] float32, 'mask' [B / P] float32 (ones),
    'index' [B / P] int64 and the extra keys, each [B / P, ...].
  """
  rows = _process_slice(global_batch_size, process_index, process_count)
  num_records = len(source)
  if num_records == 0:
    raise ValueError('Cannot train on an empty source.')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')

  def generate():
    cache = {}
    step = start_step
    while True:
      indices = train_indices(
          seed, step, global_batch_size, num_records, cache=cache
      )[rows]
      yield _assemble(
          source,
          indices,
          np.ones(len(indices), bool),
          keys=keys,
          input_key=input_key,
          normalizer=normalizer,
      )
      step += 1

  return prefetch(generate(), _thread_safe_prefetch(source, prefetch_size))


def num_eval_batches(num_records: int, global_batch_size: int) -> int:
  """Number of (padded) evaluation batches covering `num_records`."""
  return -(-num_records // global_batch_size)


def eval_iterator(
    source: Any,
    *,
    global_batch_size: int,
    keys: Sequence[str] = ('ecg',),
    process_index: int | None = None,
    process_count: int | None = None,
    normalizer: Normalizer | None = None,
    input_key: str = 'beat',
    prefetch_size: int = 0,
) -> Iterator[Batch]:
  """Finite iterator over every record once, in order, in padded batches.

  Global batch j holds records [j * B, (j + 1) * B); rows past the end repeat
  record 0 with mask 0 and index -1, so every batch has the same shape and
  every process yields the same number of batches.

  Args:
    source: a source (`len`, `get_batch`).
    global_batch_size: B (a multiple of P).
    keys: batch keys, as in `train_iterator`.
    process_index: p (default `jax.process_index()`).
    process_count: P (default `jax.process_count()`).
    normalizer: applied to 'ecg' (None: unchanged).
    input_key: record field used as 'ecg'.
    prefetch_size: batches prepared ahead on a background thread (0: none;
      ignored for sources that compute with JAX, see
      `_thread_safe_prefetch`).

  Yields:
    Dicts as in `train_iterator`; 'mask' [B / P] float32 is 1 on real rows.
  """
  rows = _process_slice(global_batch_size, process_index, process_count)
  num_records = len(source)

  def generate():
    for j in range(num_eval_batches(num_records, global_batch_size)):
      positions = (j * global_batch_size + np.arange(global_batch_size))[rows]
      valid = positions < num_records
      yield _assemble(
          source,
          np.where(valid, positions, 0),
          valid,
          keys=keys,
          input_key=input_key,
          normalizer=normalizer,
      )

  return prefetch(generate(), _thread_safe_prefetch(source, prefetch_size))


def default_data_config() -> ml_collections.ConfigDict:
  """The `config.data` fields read by `get_datasets`, with defaults."""
  config = ml_collections.ConfigDict()
  # 'simulated': records computed on demand (no disk); 'tfds': a built data set.
  config.source = 'simulated'
  # TFDS name (source='tfds'), e.g. 'synthetic_ecg/uniform_10k'.
  config.name = 'synthetic_ecg/uniform_10k'
  # TFDS data_dir (None: the TFDS default, ~/tensorflow_datasets).
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Factor sampler of the simulated source: 'uniform' or 'realistic'.
  config.mode = 'uniform'
  # Data seed of the simulated source (the synthetic_ecg builder's seed).
  config.seed = 0
  # Simulated survival: 'age_sex' (hazard with age and sex) or 'ecg_only'
  # (the earlier draw, for reproducing results before age/sex existed).
  config.survival_model = 'age_sex'
  # Records: simulated-source sizes; for 'tfds', 0 takes the whole split.
  config.num_train = 10_000
  config.num_eval = 1_000
  # Record field fed to the model as 'ecg': 'beat', 'beat_clean' or 'strip'.
  config.input_key = 'beat'
  # 'none' | 'per_lead' | 'global', estimated on `normalization_records`.
  config.normalization = 'per_lead'
  config.normalization_records = 1024
  # Record fields added to every batch, e.g. ('factors', 'labels').
  config.extra_keys = ()
  # Split evaluated by `make_eval_iter`: 'validation' or 'test'.
  config.eval_split = 'validation'
  # Batches prepared ahead on a background thread (0: none).
  config.prefetch = 2
  # source='tfds': build a missing data set (None: only with one process).
  config.download = ml_collections.config_dict.placeholder(bool)
  return config


def _make_sources(data_config, fields: Sequence[str]) -> tuple[Any, Any]:
  """The training and evaluation sources described by `data_config`."""
  kind = data_config.source
  eval_split = data_config.get('eval_split', 'validation')
  if kind == 'simulated':
    common = dict(
        seed=data_config.get('seed', 0),
        mode=data_config.get('mode', 'uniform'),
        fields=tuple(fields),
        survival_model=data_config.get('survival_model', 'age_sex'),
    )
    return (
        sources.OnTheFlySource(data_config.num_train, split='train', **common),
        sources.OnTheFlySource(
            data_config.num_eval, split=eval_split, **common
        ),
    )
  if kind == 'tfds':
    # Registers the project's builders (synthetic_ecg, ptbxl, deepfake_ecg,
    # ecg_folder) so that TFDS finds (and can build) them by name.
    # pylint: disable=g-import-not-at-top,unused-import
    from factorecg_jax.data.deepfake_ecg import deepfake_ecg_dataset_builder
    from factorecg_jax.data.ecg_folder import ecg_folder_dataset_builder
    from factorecg_jax.data.ptbxl import ptbxl_dataset_builder
    from factorecg_jax.data.synthetic_ecg import synthetic_ecg_dataset_builder
    # pylint: enable=g-import-not-at-top,unused-import

    download = data_config.get('download')
    if download is None:
      # Several processes must not build one data set at once: on many hosts
      # it is built beforehand (see synthetic_ecg/README.md).
      download = jax.process_count() == 1

    def split(name, n):
      return f'{name}[:{n}]' if n else name

    common = dict(
        data_dir=data_config.get('data_dir'),
        fields=tuple(fields),
        download=download,
    )
    return (
        sources.TfdsSource(
            data_config.name,
            split('train', data_config.get('num_train', 0)),
            **common,
        ),
        sources.TfdsSource(
            data_config.name,
            split(eval_split, data_config.get('num_eval', 0)),
            **common,
        ),
    )
  raise ValueError(f"Unknown data source {kind!r}; use 'simulated' or 'tfds'.")


def get_datasets(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
) -> tuple[Iterator[Batch], Callable[[], Iterator[Batch]], dict[str, Any]]:
  """Training iterator, evaluation-iterator factory and data set info.

  Args:
    data_config: the `config.data` ConfigDict (fields in
      `default_data_config`).
    global_batch_size: rows of a global batch, across all processes.
    seed: sampling seed of the training stream.
    start_step: first training step (resumption).

  Returns:
    (train_iter, make_eval_iter, info): `train_iter` yields this process's
    slice of every global batch; `make_eval_iter()` returns a fresh padded
    evaluation iterator; `info` has num_train, num_eval, normalizer,
    input_key, keys, local_batch_size, steps_per_epoch, train_source,
    eval_source.
  """
  input_key = data_config.get('input_key', 'beat')
  extra_keys = tuple(data_config.get('extra_keys', ()) or ())
  keys = ('ecg',) + tuple(k for k in extra_keys if k != 'ecg')
  fields = (input_key,) + tuple(k for k in keys[1:] if k != input_key)
  train_source, eval_source = _make_sources(data_config, fields)
  process_count = jax.process_count()
  process_index = jax.process_index()
  normalizer = estimate_normalizer(
      train_source,
      data_config.get('normalization', 'per_lead'),
      input_key=input_key,
      num_records=data_config.get('normalization_records', 1024),
      # The local batch size: a simulated source then compiles one shape.
      batch_size=max(1, global_batch_size // process_count),
  )
  common = dict(
      global_batch_size=global_batch_size,
      keys=keys,
      process_index=process_index,
      process_count=process_count,
      normalizer=normalizer,
      input_key=input_key,
      prefetch_size=data_config.get('prefetch', 0),
  )
  train_iter = train_iterator(
      train_source, seed=seed, start_step=start_step, **common
  )

  def make_eval_iter() -> Iterator[Batch]:
    return eval_iterator(eval_source, **common)

  info = dict(
      num_train=len(train_source),
      num_eval=len(eval_source),
      normalizer=normalizer,
      input_key=input_key,
      keys=keys,
      local_batch_size=global_batch_size // process_count,
      steps_per_epoch=max(1, len(train_source) // global_batch_size),
      num_eval_batches=num_eval_batches(len(eval_source), global_batch_size),
      train_source=train_source,
      eval_source=eval_source,
  )
  return train_iter, make_eval_iter, info
