"""Ablation: number of latents (8, 16, 32, 64).

  python experiments/sweep.py --sweep=configs/sweeps/latents.py

Answers: how many factors become active as the latent space grows
(encode:num_active, train:eval/active_units) and whether extra capacity
buys reconstruction (train:eval/r2) or disentanglement (evaluate:mig); the
paper's 32 latents left ~21 active. With a KL penalty the active count
should saturate while the other latents collapse to the prior. Grid: 4
sizes x 1 seed of the demo config (1,000 steps, encode and evaluate).

Paper scale (GPU/TPU): `--sweep=configs/sweeps/latents.py:paper` (base
configs/factorecg_paper.py, bfloat16, seeds 0-2): 12 runs of 39,063 steps,
one device each (`--workers=4 --devices_per_worker=1`, or one command per
host against one storage).

Runtime (2-core CPU, demo scale), estimated from stage times measured
on the quiet 2-core machine (2026-12-02; one worker, a second on 2 cores
gains nothing):
about 7 min per trial, 4 trials ~30 min; not run end to end.
"""

import ml_collections


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  sweep = dict(
      name='latents',
      base='configs/demo.py',
      overrides={},
      sampler='grid',
      space={'model.latents': [8, 16, 32, 64]},
      seeds=(0,),
      objectives=(('train:eval/r2', 'maximize'),
                  ('evaluate:mig', 'maximize')),
      metrics=('encode:num_active', 'train:eval/active_units',
               'evaluate:dci_disentanglement'),
      stages=('encode', 'evaluate'),
  )
  if arg == 'paper':
    sweep.update(name='latents_paper', base='configs/factorecg_paper.py',
                 overrides={'train.dtype': 'bfloat16'}, seeds=(0, 1, 2))
  elif arg:
    raise ValueError(f'unknown sweep variant {arg!r} (known: paper)')
  return ml_collections.ConfigDict(sweep, allow_dotted_keys=True)
