"""Ablation: KL weight beta x output sd fixed or learned.

  python experiments/sweep.py --sweep=configs/sweeps/beta.py

Answers: how the KL weight trades reconstruction (train:eval/r2) against
disentanglement (evaluate:mig, DCI disentanglement) and how many factors
stay active (encode:num_active by KL on held-out records,
train:eval/active_units in training's evaluation), with the likelihood's
output sd fixed at the demo's 0.05 mV (a scaled MSE) or learned by the
decoder's sd head (fixed_sd 0.0, the paper's Gaussian likelihood, which
needs longer runs). The paper chose beta 32 with a learned sd (~21 of 32
factors active). Grid: 7 betas x 2 sd settings x 2 seeds = 28 runs of the
demo config (1,000 steps, then the encode and evaluate stages).
Disentanglement scores vary across seeds about as much as across
hyperparameters (Locatello et al. 2019, ICML), hence two seeds even here;
results/ plots mean ± SD. For conclusions use --seeds=0,1,2,3,4.

Paper scale (GPU/TPU): `--sweep=configs/sweeps/beta.py:paper` runs the same
grid on configs/factorecg_paper.py (the ~104 M-parameter dense-head model,
50 epochs of 100k beats = 39,063 steps, bfloat16) with seeds 0-2: 42 runs,
one GPU or TPU chip each, e.g. `--workers=8 --devices_per_worker=1` on an
8-GPU host, or the same command on every host against one storage (a
journal file on a shared filesystem or `--storage=postgresql://...`).

The grid keeps the beta-VAE objective (`loss.objective` overridden):
configs/demo.py itself now puts its beta on the total correlation only
(beta-TC-VAE), so without the override the sweep would vary another
weight. `configs/sweeps/beta.py:wide` runs beta 64, 256, 1024 at the
fixed sd (the range that matters there) for both objectives (the
beta-TC-VAE with the demo's weight 4 on mutual information and
dimension-wise KL), seeds 0 and 1: 12 runs, the README's table.

Runtime (2-core CPU, demo scale), estimated from stage times measured
on the quiet 2-core machine (2026-12-02; one worker, a second on 2 cores
gains nothing):
about 7 min per trial (training 1,000 steps 4.5-5.5 min, encode
6 s, evaluate ~1.5 min), 28 trials ~3.3 h; not run end to end. The
600-step runs behind the demo choice (README "A disentangled demo?")
took 3.7-4.3 min of training + 0.5-1 min of evaluate each.
"""

import ml_collections


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  sweep = dict(
      name='beta',
      base='configs/demo.py',
      overrides={'loss.objective': 'beta_vae'},
      sampler='grid',
      space={'loss.beta': [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
             # The demo's fixed output sd (mV), and 0.0 = learned sd head.
             'loss.fixed_sd': [0.05, 0.0]},
      seeds=(0, 1),
      objectives=(('evaluate:mig', 'maximize'),
                  ('train:eval/r2', 'maximize')),
      metrics=('encode:num_active', 'train:eval/active_units',
               'evaluate:dci_disentanglement'),
      stages=('encode', 'evaluate'),
  )
  if arg == 'wide':
    # With the demo's fixed sd 0.05 mV the likelihood weighs squared error
    # 200x, so betas of 1-64 barely prune (README "A disentangled demo?"):
    # the range where the demo's factors change.
    sweep.update(name='beta_wide', overrides={},
                 space={'loss.beta': [64.0, 256.0, 1024.0],
                        'loss.fixed_sd': [0.05],
                        'loss.objective': ['beta_vae', 'beta_tcvae']},
                 seeds=(0, 1))
  elif arg == 'paper':
    sweep.update(name='beta_paper', base='configs/factorecg_paper.py',
                 overrides={'train.dtype': 'bfloat16'}, seeds=(0, 1, 2))
  elif arg:
    raise ValueError(f'unknown sweep variant {arg!r} (known: wide, paper)')
  return ml_collections.ConfigDict(sweep, allow_dotted_keys=True)
