"""Benchmark results as JSON: figures plus the machine, versions and date.

Every script in experiments/benchmarks/ prints its table and then calls
`write(name, results)`, which saves

  {"benchmark": name, "command": [...], "environment": {...},
   "results": {...}}

to `runs/benchmarks/<name>.json` (or `$BENCH_JSON_DIR/<name>.json`), so the
README's tables can say which script and command produced them and a later
run can be compared with them. `runs/` is not committed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'scipy', 'sklearn',
             'orbax.checkpoint', 'tensorflow_datasets', 'lifelines', 'torch',
             'neurokit2', 'ecgxai', 'captum', 'quantus', 'xgboost')


def _git_version() -> str:
  try:
    out = subprocess.run(['git', 'describe', '--always', '--dirty'],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=10, check=True)
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def environment() -> dict[str, Any]:
  """Machine, load, package versions (of modules already imported), date."""
  versions = {'python': platform.python_version()}
  for name in _PACKAGES:
    module = sys.modules.get(name)
    if module is not None:
      versions[name] = str(getattr(module, '__version__', 'unknown'))
  env = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'code_version': _git_version(),
      'host': platform.node(),
      'platform': platform.platform(),
      'cpu': _cpu_model(),
      'cpu_count': os.cpu_count(),
      'cpus_usable': len(os.sched_getaffinity(0))
                     if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
      'load_average_1min': round(os.getloadavg()[0], 2),
      'versions': versions,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  jax = sys.modules.get('jax')
  if jax is not None:
    devices = jax.devices()
    env['devices'] = {'platform': devices[0].platform,
                      'kind': devices[0].device_kind, 'count': len(devices)}
  return env


def gemm_peak_gflops(size: int = 4096, repeats: int = 5) -> float:
  """fp32 GFLOP/s of XLA's best case on this machine: one square matmul.

  The roofline of a compute-bound step: no implementation of a network's
  FLOPs in fp32 on these cores runs faster than FLOPs / this figure (XLA's
  matmul reaches the cores' FMA peak; the fastest of `repeats` is kept).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)),
                  jnp.float32)
  matmul = jax.jit(lambda m: m @ m)
  jax.block_until_ready(matmul(a))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def xla_flops(compiled) -> float:
  """FLOPs XLA's cost analysis counts for a compiled function (NaN if none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def _plain(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.ndarray):
    return value.tolist() if value.size <= 64 else f'array{value.shape}'
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def output_path(name: str) -> str:
  folder = os.environ.get('BENCH_JSON_DIR') or os.path.join(
      ROOT, 'runs', 'benchmarks')
  return os.path.join(folder, f'{name}.json')


def write(name: str, results: dict[str, Any],
          path: str | None = None) -> str:
  """Writes the results with their environment; prints and returns the path.

  Args:
    name: benchmark name (the script's, e.g. 'vae_step_bench').
    results: JSON-able figures (numpy scalars and small arrays are
      converted, NaN becomes null).
    path: output file; default `output_path(name)`.
  """
  path = path or output_path(name)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  record = {'benchmark': name, 'command': [sys.executable] + sys.argv,
            'environment': environment(), 'results': _plain(results)}
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
  print(f'results written to {path}')
  return path
