"""Ablation: causal-CNN depth x channels.

  python experiments/sweep.py --sweep=configs/sweeps/depth.py

Answers: how the encoder/decoder depth (dilations 1..2^(depth-1); receptive
field ~60, ~250 and ~1,000 samples at depth 3, 5 and 7, i.e. 0.1, 0.5 and 2
s at 500 Hz against a 1.2-s beat) and width (channels) trade reconstruction
(train:eval/r2) against speed (train:train/examples_per_sec). At demo scale
the parameter count barely moves (670-817 k: the decoder's input layer
dominates), so the cost shows as time, not size. Grid: 3 depths x 3
widths x 1 seed of the demo config (demo: depth 5, 16 channels; the paper:
depth 7, 128 channels), training only.

Paper scale (GPU/TPU): `--sweep=configs/sweeps/depth.py:paper` (base
configs/factorecg_paper.py, depths 5/7/9 x channels 64/128/256, bfloat16,
seeds 0-1): 18 runs of 39,063 steps, one device each.

Runtime (2-core CPU, demo scale), estimated from stage times measured
on the quiet 2-core machine (2026-12-02; one worker, a second on 2 cores
gains nothing):
about 5.5 min per trial (training only; depth 7 or 32 channels
slower, depth 3 or 8 channels faster), 9 trials ~50 min; not run end to
end.
"""

import ml_collections


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  sweep = dict(
      name='depth',
      base='configs/demo.py',
      overrides={},
      sampler='grid',
      space={'model.depth': [3, 5, 7], 'model.channels': [8, 16, 32]},
      seeds=(0,),
      objectives=(('train:eval/r2', 'maximize'),
                  ('train:train/examples_per_sec', 'maximize')),
      metrics=('config:run_info.num_params', 'train:eval/active_units'),
      stages=('train',),
  )
  if arg == 'paper':
    sweep.update(name='depth_paper', base='configs/factorecg_paper.py',
                 overrides={'train.dtype': 'bfloat16'},
                 space={'model.depth': [5, 7, 9],
                        'model.channels': [64, 128, 256]},
                 seeds=(0, 1))
  elif arg:
    raise ValueError(f'unknown sweep variant {arg!r} (known: paper)')
  return ml_collections.ConfigDict(sweep, allow_dotted_keys=True)
