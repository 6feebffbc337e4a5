"""Runs the training loop on the tiny task in its own process.

Used by the multi-process and kill-and-resume tests:

  python tests/training/run_tiny.py --workdir=/tmp/w --num_steps=20 \
      [--devices=2 --num_processes=2 --process_id=0 --port=12345] \
      [--step_sleep=0.1] [--out=/tmp/params.npz] [--task=resnet]

`--task=tiny` (default) trains the tiny auto-encoder; `--task=resnet` the
tiny ResNet (BatchNorm, dropout) on the registered 'classify' task.
Prints `PARAMS_SHA256 <hex>` of the final parameters (and batch_stats) and,
with --out, saves them as an npz (each process to its own --out).
"""

import argparse
import hashlib
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument('--workdir', required=True)
parser.add_argument('--num_steps', type=int, default=20)
parser.add_argument('--checkpoint_every', type=int, default=5)
parser.add_argument('--batch_size', type=int, default=16)
parser.add_argument('--devices', type=int, default=8)
parser.add_argument('--num_processes', type=int, default=1)
parser.add_argument('--process_id', type=int, default=0)
parser.add_argument('--port', type=int, default=0)
parser.add_argument('--step_sleep', type=float, default=0.0)
parser.add_argument('--out', default='')
parser.add_argument('--task', choices=('tiny', 'resnet'), default='tiny')
args = parser.parse_args()

# Device count must be fixed before JAX is imported.
os.environ['XLA_FLAGS'] = (
    f'--xla_force_host_platform_device_count={args.devices}'
)
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

if args.num_processes > 1:
  jax.distributed.initialize(
      coordinator_address=f'localhost:{args.port}',
      num_processes=args.num_processes,
      process_id=args.process_id,
  )

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from absl import logging

from factorecg_jax.training import losses
from factorecg_jax.training import train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_task
# pylint: enable=g-import-not-at-top,wrong-import-position


def slow_datasets(data_config, **kwargs):
  """The tiny stream, slowed down so a test can kill the run mid-way."""
  train_iter, make_eval_iter, info = tiny_task.get_datasets(
      data_config, **kwargs
  )

  def slow():
    for batch in train_iter:
      time.sleep(args.step_sleep)
      yield batch

  return slow(), make_eval_iter, info


def main():
  logging.set_verbosity(logging.INFO)
  if args.task == 'resnet':
    config = tiny_task.resnet_runner_config(
        args.num_steps, args.checkpoint_every, args.batch_size
    )
    model, task = tiny_task.tiny_resnet(), losses.TASKS['classify']
  else:
    config = tiny_task.runner_config(
        args.num_steps, args.checkpoint_every, args.batch_size
    )
    model, task = tiny_task.TinyAE(latent=4), tiny_task.Task
  with tiny_task.fast_compile():
    state = train.train_and_evaluate(
        config, args.workdir, model=model, task=task,
        get_datasets=slow_datasets,
    )
  # Params are replicated, so every process holds them all. The tiny AE has
  # no batch_stats, so its digest is that of its params as before.
  leaves = jax.tree_util.tree_leaves_with_path(
      {'params': state.params, **state.model_state}
      if state.model_state else state.params)
  arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
  digest = hashlib.sha256()
  for name in sorted(arrays):
    digest.update(name.encode())
    digest.update(arrays[name].tobytes())
  print(f'PARAMS_SHA256 {digest.hexdigest()}', flush=True)
  if args.out:
    np.savez(args.out, **arrays)


if __name__ == '__main__':
  main()
