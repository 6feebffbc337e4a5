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


def _time(fn, *args, reps):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t
  best = np.inf
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return compile_s, best


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--beats', type=int, default=65536)
  parser.add_argument('--records', type=int, default=16384)
  parser.add_argument('--strips', type=int, default=8192)
  parser.add_argument('--reps', type=int, default=3)
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}, '
        f'{os.cpu_count()} CPUs')

  @jax.jit
  def beats(key):
    k_f, k_n = jax.random.split(key)
    f = sim.sample_factors(k_f, args.beats)
    clean = jax.vmap(sim.clean_beat)(f)
    noise = jax.vmap(sim.beat_noise)(f, jax.random.split(k_n, args.beats))
    return clean, clean + noise

  @jax.jit
  def strips(key):
    k_f, k_s = jax.random.split(key)
    f = sim.sample_factors(k_f, args.strips)
    out = jax.vmap(sim.simulate_strip)(f, jax.random.split(k_s, args.strips))
    return out['ecg'], out['clean'], out['qrs_onsets']

  key = jax.random.key(0)
  rows = []
  c, t = _time(beats, key, reps=args.reps)
  rows.append(('median beats (clean + noisy)', args.beats, c, t, 50_000))
  sim.calibrate_lambda('uniform')  # cached; not part of the timing
  fn = lambda k: sim.simulate_records(k, args.records,
                                      chunk_size=args.records)
  c, t = _time(fn, key, reps=args.reps)
  rows.append(('complete records (+ labels, EF, survival)', args.records, c,
               t, None))
  c, t = _time(strips, key, reps=args.reps)
  rows.append(('10-s strips (clean + noisy)', args.strips, c, t, 5_000))

  print(f'{"what":45s} {"n":>7s} {"compile s":>9s} {"per s":>10s} '
        f'{"goal":>8s}')
  for name, n, c, t, goal in rows:
    print(f'{name:45s} {n:7d} {c:9.1f} {n / t:10.0f} '
          f'{goal if goal else "":>8}')


if __name__ == '__main__':
  main()
