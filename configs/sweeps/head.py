"""Ablation: the decoder's Gaussian head, dense (the paper's) vs 1x1 conv.

  python experiments/sweep.py --sweep=configs/sweeps/head.py

Answers: whether the paper's two dense 7200x7200 output layers (mean and
sd over all 600 samples x 12 leads) buy reconstruction or factors that the
lean 1x1-conv head (per-sample, per-lead) does not, and what they cost in
speed (train:train/examples_per_sec) and size
(config:run_info.num_params). The dense head's size does not depend on
the model's width: at demo scale the model has 695 k parameters with the
conv head (decoder 652 k, encoder 44 k) and 104.4 M with the dense one
(150 x; about 1.3 GB of float32 weights and Adam state), so the dense arm's
1,000 CPU steps take far longer than the conv arm's. Grid: 2 heads x 1
seed of the demo config (encode and evaluate after training).

Paper scale (GPU/TPU): `--sweep=configs/sweeps/head.py:paper` (base
configs/factorecg_paper.py, 108.5 M parameters with the dense head,
bfloat16, seeds 0-2): 6 runs of 39,063 steps, one device each.

Runtime (2-core CPU, demo scale), estimated from stage times measured
on the quiet 2-core machine (2026-12-02; one worker, a second on 2 cores
gains nothing):
the conv arm about 7 min; the dense arm was not run (its two
7200x7200 layers cost ~40 GFLOP per step at batch 64, roughly 0.5 s per
step here, so ~10 min of training); ~20 min in all.
"""

import ml_collections


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  sweep = dict(
      name='head',
      base='configs/demo.py',
      overrides={},
      sampler='grid',
      space={'model.head': ['conv', 'dense']},
      seeds=(0,),
      objectives=(('train:eval/r2', 'maximize'),
                  ('train:train/examples_per_sec', 'maximize')),
      metrics=('config:run_info.num_params', 'encode:num_active',
               'train:eval/active_units', 'evaluate:mig'),
      stages=('encode', 'evaluate'),
  )
  if arg == 'paper':
    sweep.update(name='head_paper', base='configs/factorecg_paper.py',
                 overrides={'train.dtype': 'bfloat16'}, seeds=(0, 1, 2))
  elif arg:
    raise ValueError(f'unknown sweep variant {arg!r} (known: paper)')
  return ml_collections.ConfigDict(sweep, allow_dotted_keys=True)
