"""Simulator throughput on this machine: median beats, records and strips.

  python experiments/benchmarks/simulator_bench.py [--beats=65536 --strips=8192]

Prints records per second for (a) clean + noisy 600-sample median beats,
(b) complete records (beats, measurements, labels, EF, survival), (c) 10-s
12-lead strips (clean + noisy), with compile time reported separately.
Goals (issue 2): >= 50,000 median beats/s and >= 5,000 strips/s on 2 cores.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from factorecg_jax.data import simulator as sim

import bench_report  # pylint: disable=g-bad-import-order


def _time(fn, *args, reps):
  """(compile s, best wall s, best process CPU s) over `reps` runs.

  CPU seconds count the work of all threads of this process: on a shared,
  noisy machine n / (cpu_s / cores) estimates the rate on idle cores.
  """
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t
  best, best_cpu = np.inf, np.inf
  for _ in range(reps):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
    best_cpu = min(best_cpu, time.process_time() - c)
  return compile_s, best, best_cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--beats', type=int, default=65536)
  parser.add_argument('--chunk', type=int, default=4096,
                      help='records per jitted call')
  parser.add_argument('--records', type=int, default=16384)
  parser.add_argument('--strips', type=int, default=8192)
  parser.add_argument('--reps', type=int, default=3)
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}, '
        f'{os.cpu_count()} CPUs')

  @jax.jit
  def beat_chunk(key):
    k_f, k_n = jax.random.split(key)
    f = sim.sample_factors(k_f, chunk)
    clean = jax.vmap(sim.clean_beat)(f)
    noise = jax.vmap(sim.beat_noise)(f, jax.random.split(k_n, chunk))
    return clean, clean + noise

  @jax.jit
  def strip_chunk(key):
    k_f, k_s = jax.random.split(key)
    f = sim.sample_factors(k_f, chunk)
    out = jax.vmap(sim.simulate_strip)(f, jax.random.split(k_s, chunk))
    return out['ecg'], out['clean'], out['qrs_onsets']

  def chunked(fn, n):
    # Records are made (and kept on the host) chunk by chunk, as a data
    # pipeline would; one chunk size compiles once.
    def run(key):
      return [jax.device_get(fn(jax.random.fold_in(key, i)))
              for i in range(max(1, n // chunk))]
    return run

  chunk = args.chunk
  beats = chunked(beat_chunk, args.beats)
  strips = chunked(strip_chunk, args.strips)

  key = jax.random.key(0)
  rows = []
  c, t, cpu = _time(beats, key, reps=args.reps)
  rows.append(('median beats (clean + noisy)', max(chunk, args.beats // chunk * chunk), c, t, cpu, 50_000))
  sim.calibrate_lambda('uniform')  # cached; not part of the timing
  fn = lambda k: sim.simulate_records(k, args.records, chunk_size=chunk)
  c, t, cpu = _time(fn, key, reps=args.reps)
  rows.append(('complete records (+ labels, EF, survival)', args.records, c,
               t, cpu, None))
  c, t, cpu = _time(strips, key, reps=args.reps)
  rows.append(('10-s strips (clean + noisy)', max(chunk, args.strips // chunk * chunk), c, t, cpu, 5_000))

  cores = len(os.sched_getaffinity(0))
  print(f'{"what":45s} {"n":>7s} {"compile s":>9s} {"per s":>10s} '
        f'{"per CPU-s":>10s} {"goal/s":>8s}')
  for name, n, c, t, cpu, goal in rows:
    print(f'{name:45s} {n:7d} {c:9.1f} {n / t:10.0f} {n / cpu:10.0f} '
          f'{goal if goal else "":>8}')
  print(f'"per CPU-s" x {cores} cores estimates the rate on idle cores when '
        'the machine is shared (load average now '
        f'{os.getloadavg()[0]:.1f}).')
  bench_report.write('simulator_bench', {
      'rows': [dict(what=name, n=n, compile_s=c, wall_s=t, cpu_s=cpu,
                    per_s=n / t, per_cpu_s=n / cpu, goal_per_s=goal)
               for name, n, c, t, cpu, goal in rows],
      'chunk': chunk, 'reps': args.reps})


if __name__ == '__main__':
  main()
