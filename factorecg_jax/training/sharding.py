"""Device mesh and shardings for data-parallel training.

One code path from one CPU to many hosts: the mesh spans `jax.devices()` along
a single `'data'` axis, parameters and optimizer state are replicated, batches
are split by rows. Each process contributes its own rows to a global batch via
`jax.make_array_from_process_local_data`; jitted functions then see the global
batch, so a mean over it is already global (no `pmean`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Returns a 1-D `('data',)` mesh over `devices` (default: all devices).

  Args:
    devices: devices to span; `None` means `jax.devices()` (all processes).
      A subset (e.g. `jax.devices()[:1]`) is only meaningful in one process.
  """
  devices = list(jax.devices() if devices is None else devices)
  # `Auto` axes let the Linen models run unannotated; the default became
  # `Explicit` in JAX 0.9, so it is named rather than assumed.
  return jax.make_mesh(
      (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
      devices=devices,
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def rows(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over the `'data'` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(
    global_batch_size: int, mesh: jax.sharding.Mesh, name: str = 'batch_size'
) -> int:
  """Checks that a global batch splits evenly; returns the per-process rows.

  Args:
    global_batch_size: rows per step summed over all processes.
    mesh: the mesh the batch is sharded over.
    name: config field named in the error message.

  Returns:
    The number of rows each process feeds, `global_batch_size //
    jax.process_count()`.

  Raises:
    ValueError: if `global_batch_size` is not positive or does not divide by
      the number of devices in `mesh` or by the number of processes.
  """
  num_devices = mesh.devices.size
  num_processes = jax.process_count()
  if global_batch_size <= 0:
    raise ValueError(f'{name}={global_batch_size} must be positive.')
  if global_batch_size % num_devices:
    raise ValueError(
        f'{name}={global_batch_size} must be divisible by the number of '
        f'devices ({num_devices}); pick a multiple of {num_devices}.'
    )
  if global_batch_size % num_processes:
    raise ValueError(
        f'{name}={global_batch_size} must be divisible by the number of '
        f'processes ({num_processes}).'
    )
  return global_batch_size // num_processes


def _as_jax_dtype(x: Any) -> np.ndarray:
  # int64/float64 host arrays (e.g. record ids) become int32/float32 unless
  # x64 is enabled, as `jnp.asarray` would do; done here explicitly so the
  # global array and the jitted step agree on dtypes.
  x = np.asarray(x)
  return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def make_global_batch(
    local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
  """Assembles each process's rows into globally row-sharded arrays.

  Args:
    local_batch: dict of host arrays, each `[local_rows, ...]`; this process's
      share of the global batch (rows for its addressable devices, in order).
      All processes must pass the same keys and row counts.
    mesh: the `('data',)` mesh; global rows = local rows * process count.

  Returns:
    Dict with the same keys of `jax.Array`s `[global_rows, ...]` sharded by
    rows over `mesh`.

  Raises:
    ValueError: if the arrays disagree on the number of rows, or the rows do
      not split evenly over this process's devices.
  """
  sharding = rows(mesh)
  num_rows = {k: np.shape(v)[0] for k, v in local_batch.items()}
  if len(set(num_rows.values())) > 1:
    raise ValueError(f'Batch arrays disagree on the number of rows: {num_rows}')
  local_devices = len(mesh.local_devices)
  for local_rows in set(num_rows.values()):
    if local_rows % local_devices:
      raise ValueError(
          f'Local batch of {local_rows} rows does not divide over the '
          f'{local_devices} devices of process {jax.process_index()}.'
      )
  return {
      k: jax.make_array_from_process_local_data(sharding, _as_jax_dtype(v))
      for k, v in local_batch.items()
  }
