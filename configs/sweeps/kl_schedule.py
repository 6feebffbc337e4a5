"""Ablation: KL schedule (constant, linear, cyclical) x beta-VAE / beta-TC-VAE.

  python experiments/sweep.py --sweep=configs/sweeps/kl_schedule.py

Answers: whether annealing the KL weight (a linear warm-up, Bowman et al.
2016; cyclical annealing, Fu et al. 2019) or penalising only the total
correlation (beta-TC-VAE, Chen et al. 2018) gives more disentangled factors
(evaluate:mig, DCI) at the demo's beta 256 without losing reconstruction
(train:eval/r2) or active factors. The ramp (linear) and the cycle
(cyclical) are 250 steps, a quarter of the demo's 1,000 (4 cycles); the
constant schedule ignores it. Grid: 3 schedules x 2 objectives x 2 seeds =
12 runs of the demo config (encode and evaluate after training); two seeds
because disentanglement scores are seed-noisy.

Paper scale (GPU/TPU): `--sweep=configs/sweeps/kl_schedule.py:paper` (base
configs/factorecg_paper.py, beta 32, ramp/cycle 4,000 of 39,063 steps,
about 5 epochs; bfloat16; seeds 0-2): 18 runs, one device each.

Runtime (2-core CPU, demo scale), estimated from stage times measured
on the quiet 2-core machine (2026-12-02; one worker, a second on 2 cores
gains nothing):
about 7 min per trial (the TC estimator adds a
64 x 64 x 32 term, negligible), 12 trials ~1.4 h; not run end to end.
"""

import ml_collections


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  sweep = dict(
      name='kl_schedule',
      base='configs/demo.py',
      overrides={'loss.kl_warmup_steps': 250},
      sampler='grid',
      space={'loss.kl_schedule': ['constant', 'linear', 'cyclical'],
             'loss.objective': ['beta_vae', 'beta_tcvae']},
      seeds=(0, 1),
      objectives=(('evaluate:mig', 'maximize'),
                  ('train:eval/r2', 'maximize')),
      metrics=('encode:num_active', 'train:eval/active_units',
               'evaluate:dci_disentanglement'),
      stages=('encode', 'evaluate'),
  )
  if arg == 'paper':
    sweep.update(name='kl_schedule_paper',
                 base='configs/factorecg_paper.py',
                 overrides={'loss.kl_warmup_steps': 4000,
                            'train.dtype': 'bfloat16'},
                 seeds=(0, 1, 2))
  elif arg:
    raise ValueError(f'unknown sweep variant {arg!r} (known: paper)')
  return ml_collections.ConfigDict(sweep, allow_dotted_keys=True)
