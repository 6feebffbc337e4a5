"""The CPU demo: simulate a data set, train a small FactorECG VAE, explain it.

`make demo` runs this end to end on 2 CPU cores:

  python -m factorecg_jax.main --config=configs/demo.py --workdir=runs/demo \
      --mode=demo

Measured from a fresh clone on 2-core development machines (2026-12-02,
with the beta-VAE objective of then): 9 min 34 s on an AMD Zen 5 (fp32
matmul peak ~300-390 GFLOP/s) and 14 min 42 s on a Zen 4 (~170 GFLOP/s:
simulated-data summary 20 s; two black-box ResNets 2 min 21 s; VAE
training 5 min 31 s; encode and traversals 45 s; disentanglement metrics
1 min 27 s; downstream comparison 49 s; attribution stage 3 min 30 s;
report < 1 s), both with the factor models on 4,000 training records; the
20,000 used now took the downstream stage to 2 min 10 s on the Zen 4. On
a Zen 3 (~140 GFLOP/s, 2026-12-07) `make demo` with this config took 18
min 57 s from a fresh clone whose environment existed (simulated data 26
s; the ResNets 2 min 52 s; VAE training 6 min 24 s, beta-TC-VAE, held-out
R^2 0.90, about 8 % slower per step than the beta-VAE; encode and
traversals 53 s; disentanglement metrics 1 min 25 s, MIG 0.033, DCI 0.72;
downstream 2 min 39 s; attribution stage 4 min 05 s). Add 1.5-2.5 min of
environment creation. It writes to the workdir: simulated-data
summary, the training run (config.json, metrics.jsonl, TensorBoard events,
checkpoints), factors of held-out records, traversal figures,
disentanglement metrics, the black-box ResNet runs, the
factor-models-vs-black-box comparison, the attribution stage and
report/index.html. The model is the lean variant of the paper's
architecture (1x1-conv Gaussian head, fewer channels); the paper's own
settings are configs/factorecg_paper.py.
"""

import importlib.util
import os

import ml_collections


def _load_sibling(name):
  # Config files are loaded by path (absl config_flags), not as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + '.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


factorecg_paper = _load_sibling('factorecg_paper')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = factorecg_paper.get_config()
  # Depth 5 (dilations 1..16, receptive field ~250 samples = 0.5 s) rather
  # than 3: the encoder's max-pool needs features that see whole waves; at
  # 1,200 steps depth 3 reached R^2 0.73 (lr 2e-3) to 0.86 (lr 1e-2), depth 5
  # 0.95 (lr 5e-3 and 1e-2 alike).
  config.model.update(latents=32, channels=16, depth=5, kernel_size=5,
                      reduced_size=64, decoder_in_channels=32, head='conv',
                      padding='left')
  # A fixed output sd (scaled MSE) so the mean is learned within a thousand
  # CPU steps (the paper's learned sd needs long runs). With sd 0.05 mV the
  # likelihood weighs squared error 200x, so the KL terms need large weights
  # to prune and align latents: from the sweep at demo scale (600 steps,
  # README "A disentangled demo?"), beta-VAE beta 4 kept all 32 latents with
  # 14 named "heart rate" (MIG 0.011); beta 256 aligned them more (MIG
  # 0.023) but, weighing the whole KL, dropped what costs little squared
  # error (QTc, T amplitude: held-out R^2 0.11 and 0.33 from the factors).
  # The beta-TC-VAE (Chen et al. 2018) puts the 256 on the total
  # correlation only and 4 on the mutual information and dimension-wise KL:
  # at 600 steps R^2 0.83 (beta-VAE 256: 0.78), MIG 0.033, QTc 0.45, T
  # amplitude 0.45; at 1,000 steps (seeds 0 and 1) R^2 0.90, 25 of 32
  # latents with variance across records, and the logistic and Cox factor
  # models within 0.02 of the ResNet and of the oracle's C-index (Zen 3,
  # 2026-12-07; README "Known limitations"). Weight 16 on MI + dim-wise KL:
  # MIG 0.021 at 600 steps.
  config.loss.update(beta=256.0, fixed_sd=0.05, objective='beta_tcvae',
                     mi_dw_weight=4.0)
  config.data.update(num_train=20_000, num_eval=1_000, mode='uniform')
  config.optim.update(lr=5e-3, schedule='cosine', warmup_steps=50)
  # 1,000 steps: with the black-box and attribution ResNets the demo has
  # ~15 min on a 2-core Zen 4 (with 1,200 steps it took 16 min 15 s there;
  # a Zen 3 takes 19 min at 1,000).
  config.train.update(batch_size=64, num_epochs=0, num_steps=1000,
                      log_every=100, eval_every=500, checkpoint_every=500,
                      eval_batch_size=256)
  # Intervention metrics: a twentieth of disentanglement_lib's standard
  # sizes (batch 64 x 150 train / 100 eval points) to keep the demo in
  # minutes.
  config.analysis.update(num_records=1000, metrics_num_train=2000,
                         metrics_num_test=1000, intervention_num_train=150,
                         intervention_num_eval=100,
                         intervention_num_variance_estimate=1000)
  # Factor models vs black-box ResNets on median beats (CPU sizes). The
  # factor models are fitted on as many training records as the ResNets are
  # trained on (20,000): with 4,000 the logistic model's reduced-EF AUROC was
  # 0.843 (XGBoost 0.826), with 20,000 0.856 (0.846), ResNet 0.866.
  config.downstream.update(num_train=20_000, num_test=1000)
  config.blackbox.update(targets=('reduced_ef', 'mortality'),
                         inputs=('beat',), num_train=20_000, num_steps=500)
  # The attribution stage at CPU sizes: a measures ResNet of 500 steps, the
  # nine methods and the random control on 16 held-out beats; the sanity
  # checks and the review page on a few of them (at the paper config's
  # sizes the stage took 5 min 07 s here, over the demo's budget).
  config.explain.update(num_train=20_000, num_steps=500, num_records=16,
                        chunk_size=50, num_resamples=1000,
                        randomisation_records=4, completeness_records=4,
                        review_records=1)
  # Simulated-data summary of --mode=simulate / demo.
  config.simulate = ml_collections.ConfigDict(dict(
      num_records=2000, mode='uniform', strips=4))
  if arg == 'tiny':
    factorecg_paper.shrink_to_tiny(config)
    config.simulate.update(num_records=64, strips=1)
  elif arg:
    raise ValueError(f'unknown config variant {arg!r} (known: tiny)')
  return config
