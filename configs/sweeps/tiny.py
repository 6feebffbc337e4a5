"""Tiny sweep for tests: two KL weights x two seeds of the demo's tiny VAE.

  python experiments/sweep.py --sweep=configs/sweeps/tiny.py \
      --sweep_dir=/tmp/sweep_tiny

Four 4-step training runs (2 points x 2 seeds, a grid with the seed as an
axis), each in its own run directory with a checkpoint at steps 2 and 4, so
tests can kill, resume and rerun trials in seconds. Training only: the
objectives are final training metrics, reconstruction R^2 (up) and KL
(down), a two-objective study with a Pareto front.

Runtime (2-core CPU): the four trials take ~90 s with two workers
(tests/sweeps_test.py, measured 2026-12-02).
"""

import ml_collections


def get_sweep() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='tiny',
      base='configs/demo.py:tiny',
      # Explicit here (the tiny config's own values): a killed trial always
      # has the step-2 checkpoint to resume from.
      overrides={'train.num_steps': 4, 'train.checkpoint_every': 2},
      sampler='grid',
      space={'loss.beta': [1.0, 8.0]},
      seeds=(0, 1),
      objectives=(('train:eval/r2', 'maximize'),
                  ('train:eval/kl', 'minimize')),
      metrics=('train:eval/active_units', 'config:run_info.num_params'),
      stages=('train',),
  ), allow_dotted_keys=True)
