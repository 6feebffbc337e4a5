"""Random-access record sources: on-the-fly simulation and TFDS data sources.

A *source* is a sequence of records: `len(source)`, `source[i]` (a dict of
numpy arrays) and `source.get_batch(indices)` (the same dict with a leading
batch axis, built in one vectorised call).

The synthetic records follow one rule, shared by the on-the-fly source and the
`synthetic_ecg` TFDS builder so that both give the same record for the same
(seed, split, index):

  record i of split s = simulate(fold_in(fold_in(key(seed), SPLIT_IDS[s]), i))

where `simulate(key)` is `simulator.simulate_record(key, ...)`, which is also
the rule of `simulator.simulate_records(split_key(seed, s), indices=...)`. A
training run at 1M+ records therefore needs no disk: any record is recomputed
from its index. Records carry age and sex, which enter the survival hazard
unless `survival_model='ecg_only'` (the draw used before they existed).
"""

import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

from factorecg_jax.data import simulator

# Split names and the integer folded into the data seed for each of them.
SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
# Every field a synthetic record carries ('strip' only when asked for).
RECORD_FIELDS = (
    'id',
    'factors',
    'beat',
    'beat_clean',
    'strip',
    'measurements',
    'measures',
    'labels',
    'ef',
    'reduced_ef',
    'age',
    'sex',
    'time',
    'event',
)
# Fields that are a function of other stored fields: the synthetic_ecg
# builder does not store them, and `TfdsSource` derives them on reading
# ('measures' = `simulator.measures_from_measurements(record['measurements'])`,
# pure selection, so on disk and on the fly agree bit for bit).
DERIVED_FIELDS = ('measures',)
DEFAULT_FIELDS = tuple(
    f for f in RECORD_FIELDS if f != 'strip' and f not in DERIVED_FIELDS
)


def _simulated_fields(fields: Iterable[str]) -> tuple[str, ...]:
  """Fields produced by the simulator (everything except the index)."""
  unknown = set(fields) - set(RECORD_FIELDS)
  if unknown:
    raise ValueError(
        f'Unknown record fields {sorted(unknown)}; known: {RECORD_FIELDS}.'
    )
  return tuple(f for f in RECORD_FIELDS if f in fields and f != 'id')


def split_id(split: str) -> int:
  """The integer folded into the data seed for `split`."""
  if split not in SPLIT_IDS:
    raise ValueError(f'Unknown split {split!r}; known: {tuple(SPLIT_IDS)}.')
  return SPLIT_IDS[split]


def split_key(seed: int, split: str) -> jax.Array:
  """The PRNG key of a split: record i has key `fold_in(split_key, i)`.

  `simulator.simulate_records(split_key(seed, s), indices=idx)` gives the
  same records as `simulate_batch(seed, s, idx)`.
  """
  return jax.random.fold_in(jax.random.key(seed), split_id(split))


def simulate_batch(
    seed: int,
    split: str,
    indices: np.ndarray,
    *,
    mode: str = 'uniform',
    rr_std: float = 0.05,
    fields: Sequence[str] = DEFAULT_FIELDS,
    survival_model: str = 'age_sex',
) -> dict[str, Any]:
  """Simulates the synthetic records `indices` of `split`.

  The simulator runs in compiled calls of a fixed size
  (`simulator.BLOCK`), so it compiles once per program, not once per
  request, and a record's bits do not depend on the request.

  Args:
    seed: data seed (the `seed` of the builder config).
    split: 'train', 'validation' or 'test'.
    indices: [n] int, record indices in the split, each < 2**31.
    mode: factor sampler, 'uniform' or 'realistic'.
    rr_std: beat-to-beat RR variability of the strips (relative).
    fields: record fields to return (subset of `RECORD_FIELDS`).
    survival_model: hazard of 'time'/'event': 'age_sex' (default) or
      'ecg_only' (the earlier draw); see `simulator.simulate_record`.

  Returns:
    Dict of numpy arrays with leading axis n: the requested fields, e.g.
    'beat' [n, 600, 12] float32 mV, 'factors' [n, 14], 'measurements' a dict of
    [n] arrays, 'measures' [n, 9] float32 (`simulator.MEASURE_NAMES`), 'age'
    [n] float32 years, 'sex' [n] int32 (1 = male), and 'id' [n] int64 when
    requested.
  """
  indices = np.asarray(indices, dtype=np.int64).reshape(-1)
  sim_fields = _simulated_fields(fields)
  if len(indices):
    batch = simulator.simulate_records(
        split_key(seed, split), indices=indices, mode=mode,
        fields=sim_fields, rr_std=rr_std,
        survival_model=survival_model)
  else:
    spec = record_spec(mode=mode, fields=sim_fields)
    batch = jax.tree.map(lambda s: np.zeros((0,) + s.shape, s.dtype), spec)
  if 'id' in fields:
    batch['id'] = indices
  return batch


@functools.lru_cache(maxsize=None)
def _record_spec(mode: str, rr_std: float, fields: tuple[str, ...]):
  spec = jax.eval_shape(
      lambda: simulator._simulate_indices(  # pylint: disable=protected-access
          jax.random.key(0),
          np.zeros(1, np.uint32),
          np.float32(1.0),
          np.float32(rr_std),
          mode=mode,
          shape_k=1.0,
          fields=fields,
          exact_noise=False,
      )
  )
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape[1:], np.dtype(s.dtype)), spec
  )


def record_spec(
    *,
    mode: str = 'uniform',
    rr_std: float = 0.05,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> dict[str, Any]:
  """Shapes and dtypes of one synthetic record, without simulating it.

  Args:
    mode: factor sampler, 'uniform' or 'realistic'.
    rr_std: beat-to-beat RR variability of the strips.
    fields: record fields (subset of `RECORD_FIELDS`).

  Returns:
    Dict (nested like a record) of `jax.ShapeDtypeStruct` with numpy dtypes;
    'id' is a scalar int64.
  """
  spec = dict(_record_spec(mode, float(rr_std), _simulated_fields(fields)))
  if 'id' in fields:
    spec['id'] = jax.ShapeDtypeStruct((), np.dtype(np.int64))
  return spec


def _take(batch: Mapping[str, Any], j: int) -> dict[str, Any]:
  """Row j of a batch dict, as a record dict."""
  return jax.tree.map(lambda x: x[j], dict(batch))


class OnTheFlySource:
  """Synthetic records simulated on demand; nothing is stored.

  Record i equals record i of the same split of the `synthetic_ecg` TFDS
  builder built with the same seed and mode.

  Attributes:
    num_records: number of records (the source's length).
    seed: data seed.
    split: 'train', 'validation' or 'test'.
    mode: factor sampler, 'uniform' or 'realistic'.
    fields: record fields returned (subset of `RECORD_FIELDS`); unrequested
      fields are not computed.
    survival_model: hazard of 'time'/'event', 'age_sex' or 'ecg_only' (the
      draw of records made before age and sex existed).
    computes_with_jax: True: `get_batch` runs jitted JAX code, so the input
      pipeline reads this source on its consumer's thread, never on a
      prefetch thread.
  """

  computes_with_jax = True

  def __init__(
      self,
      num_records: int,
      seed: int = 0,
      split: str = 'train',
      mode: str = 'uniform',
      fields: Sequence[str] = DEFAULT_FIELDS,
      rr_std: float = 0.05,
      survival_model: str = 'age_sex',
  ):
    if num_records < 0 or num_records > 2**31:
      raise ValueError(f'num_records must be in [0, 2**31], got {num_records}.')
    split_id(split)
    _simulated_fields(fields)
    if survival_model not in simulator.SURVIVAL_MODELS:
      raise ValueError(
          f'survival_model must be one of {simulator.SURVIVAL_MODELS}, got '
          f'{survival_model!r}.'
      )
    self.num_records = int(num_records)
    self.seed = int(seed)
    self.split = split
    self.mode = mode
    self.fields = tuple(fields)
    self.rr_std = float(rr_std)
    self.survival_model = survival_model

  def __len__(self) -> int:
    return self.num_records

  def __repr__(self) -> str:
    return (
        f'OnTheFlySource(num_records={self.num_records}, seed={self.seed}, '
        f'split={self.split!r}, mode={self.mode!r}, fields={self.fields}, '
        f'survival_model={self.survival_model!r})'
    )

  def _check(self, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (
        indices.min() < 0 or indices.max() >= self.num_records
    ):
      raise IndexError(
          f'Record index out of range [0, {self.num_records}): '
          f'{indices.min()}..{indices.max()}.'
      )
    return indices

  def get_batch(self, indices: np.ndarray) -> dict[str, Any]:
    """Records `indices` stacked along a leading axis (one jitted call).

    Args:
      indices: [n] int record indices.

    Returns:
      Dict of numpy arrays with leading axis n (see `simulate_batch`).
    """
    return simulate_batch(
        self.seed,
        self.split,
        self._check(indices),
        mode=self.mode,
        rr_std=self.rr_std,
        fields=self.fields,
        survival_model=self.survival_model,
    )

  def __getitem__(self, i: int) -> dict[str, Any]:
    if not isinstance(i, (int, np.integer)):
      raise TypeError(f'Index must be an integer, got {type(i)}.')
    if i < 0:
      i += self.num_records
    return _take(self.get_batch(np.array([i])), 0)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    batch = self.get_batch(np.asarray(indices))
    return [_take(batch, j) for j in range(len(indices))]


def _stack(records: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]):
  """Stacks decoded records field by field with the feature dtypes."""
  out = {}
  for name, sub in spec.items():
    values = [r[name] for r in records]
    if isinstance(sub, Mapping):
      out[name] = _stack(values, sub)
    else:
      out[name] = np.asarray(values, dtype=sub.dtype).reshape(
          (len(values),) + tuple(sub.shape)
      )
  return out


def _feature_spec(tensor_info: Mapping[str, Any], fields) -> dict[str, Any]:
  """Numpy shape/dtype spec from a TFDS tensor-info tree, for some fields."""

  def convert(info):
    if isinstance(info, Mapping):
      return {k: convert(v) for k, v in info.items()}
    return jax.ShapeDtypeStruct(tuple(info.shape), np.dtype(info.np_dtype))

  names = tensor_info.keys() if fields is None else fields
  missing = set(names) - set(tensor_info)
  if missing:
    raise KeyError(f'Fields {sorted(missing)} are not in the data set.')
  return {k: convert(tensor_info[k]) for k in names}


class TfdsSource:
  """A split of a TFDS data set read by random access (`tfds.data_source`).

  The data set is read (and, with `download`, built if missing) as
  `array_record`; no TensorFlow is needed. Scalars come back as numpy arrays
  with the feature dtypes.

  Attributes:
    name: TFDS name, e.g. 'synthetic_ecg/uniform_10k'.
    split: split string, slices allowed ('train[:1000]').
    fields: the record fields returned.
    data_source: the underlying `tfds.data_source`.
  """

  def __init__(
      self,
      name: str,
      split: str,
      data_dir: str | None = None,
      fields: Sequence[str] | None = None,
      download: bool = True,
  ):
    # TFDS is imported here so that the on-the-fly path never loads it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.name = name
    self.split = split
    # TFDS picks ArrayRecord by itself only when no data_dir is given; a
    # missing data set is then built in the only format readable here.
    self.data_source = tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=download,
        builder_kwargs=dict(file_format='array_record'),
    )
    info = self.data_source.dataset_info.features.get_tensor_info()
    # 'measures' of a data set that stores only 'measurements' (synthetic_ecg)
    # is selected from them on reading.
    self._derive = ()
    if (fields is not None and 'measures' in fields and 'measures' not in info
        and 'measurements' in info):
      self._derive = ('measures',)
      read = [f for f in fields if f != 'measures']
      if 'measurements' not in read:
        read.append('measurements')
      self._spec = _feature_spec(info, read)
      self.fields = tuple(fields)
    else:
      self._spec = _feature_spec(info, fields)
      self.fields = tuple(self._spec)

  def __len__(self) -> int:
    return len(self.data_source)

  def __repr__(self) -> str:
    return (
        f'TfdsSource(name={self.name!r}, split={self.split!r}, '
        f'num_records={len(self)})'
    )

  def get_batch(self, indices: np.ndarray) -> dict[str, Any]:
    """Records `indices` read in one batched call and stacked.

    Args:
      indices: [n] int record indices.

    Returns:
      Dict of numpy arrays with leading axis n, dtypes as in the features.
    """
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if any(i < 0 or i >= len(self) for i in indices):
      raise IndexError(f'Record index out of range [0, {len(self)}).')
    getitems = getattr(self.data_source, '__getitems__', None)
    if getitems is not None:
      records = getitems(indices)
    else:
      records = [self.data_source[i] for i in indices]
    batch = _stack(records, self._spec)
    if self._derive:
      batch['measures'] = simulator.measures_from_measurements(
          batch['measurements'])
      batch = {f: batch[f] for f in self.fields}
    return batch

  def __getitem__(self, i: int) -> dict[str, Any]:
    return _take(self.get_batch(np.array([i])), 0)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    batch = self.get_batch(np.asarray(indices))
    return [_take(batch, j) for j in range(len(indices))]
