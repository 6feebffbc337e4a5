"""FactorECG as published (van de Leur et al. 2022; ecgxai 0.1.1).

Reproduces the official package's beta-VAE: causal-CNN encoder/decoder, 32
latents, Gaussian output with two 7200 x 7200 heads (~104 M parameters),
KL weight 32, Adam 1e-3, batch 128, 50 epochs, gradient-norm clip 1. The paper
trained on 1.1 M median beats; here the default data are 100k on-the-fly
simulated beats (no disk).

  python -m factorecg_jax.main --config=configs/factorecg_paper.py \
      --workdir=runs/factorecg_paper --mode=train

Expected: ~21 of 32 factors active. On a GPU/TPU use
`--config.train.dtype=bfloat16`. `configs/factorecg_paper.py:tiny` is a
seconds-long variant for tests.
"""

import ml_collections

from factorecg_jax.data import input_pipeline
from factorecg_jax.stages import explain as explain_stage


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = 'vae'
  config.model_name = 'vae'
  # Splatted into models.MODELS['vae'] (flax module fields).
  config.model = ml_collections.ConfigDict(dict(
      latents=32, channels=128, depth=7, kernel_size=5, reduced_size=64,
      decoder_in_channels=64, softplus_eps=1e-4,
      head='dense',  # 'dense': two 7200x7200 layers (paper) | 'conv': 1x1
      padding='chomp',  # 'chomp' as ecgxai | 'left': same outputs, cheaper
      decoder_transpose=False,  # ecgxai 0.1.1 builds ordinary convolutions
  ))
  # Passed to the task's loss/eval functions.
  config.loss = ml_collections.ConfigDict(dict(
      beta=32.0,
      fixed_sd=0.0,  # > 0: fixed output sd (mV) instead of the sd head
      # KL weight over training: 'constant' | 'linear' (0 -> beta over
      # kl_warmup_steps) | 'cyclical' (that ramp every kl_warmup_steps).
      kl_schedule='constant',
      kl_warmup_steps=0,
      # 'beta_vae' (beta * KL) | 'beta_tcvae' (MI + beta * TC + dim-wise KL,
      # Chen et al. 2018; dataset_size 0 = the training records read).
      objective='beta_vae',
      dataset_size=0,
      mi_dw_weight=1.0,  # beta_tcvae: weight of MI and dim-wise KL
  ))

  config.data = input_pipeline.default_data_config()
  config.data.num_train = 100_000
  config.data.num_eval = 5_000
  config.data.normalization = 'none'  # the paper's VAE models mV directly

  config.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.0,
      grad_clip_norm=1.0, warmup_steps=0, schedule='constant'))

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128
  config.train.num_epochs = 50.0
  # 0: derived when the run starts, ceil(num_epochs * training records /
  # global batch size), so `--config.train.batch_size=256` or another data
  # size keeps 50 epochs (39,063 steps at batch 128 on 100k records); the
  # resolved value is written to the run's config.json. A positive value
  # overrides the epochs.
  config.train.num_steps = 0
  config.train.log_every = 100
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  config.train.keep_checkpoints = 3
  config.train.eval_batch_size = 256
  config.train.check_finite_every = 0  # 0: at log steps only
  config.train.dtype = 'float32'

  # Factor analysis (--mode=encode / traverse / evaluate).
  config.analysis = ml_collections.ConfigDict(dict(
      split='validation',  # records encoded by --mode=encode
      num_records=5000,
      kl_threshold=0.01,  # nats; dims with mean KL above are "active"
      traversal_sds=(-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
      traversal_leads=('I', 'II', 'V1', 'V5'),
      # Units of traversal_sds: 'population' = SD of the factor's posterior
      # means over the encoded split (stays within the data), 'prior' = 1.
      traversal_scale='population',
      record_index=0,  # the record of the individual-level traversal
      metrics_num_train=10_000,  # encodings for the disentanglement metrics
      metrics_num_test=5_000,
      # BetaVAE / FactorVAE scores in --mode=evaluate (simulator as the
      # generator); sizes of disentanglement_lib's standard study.
      interventions=True,
      intervention_batch_size=64,
      intervention_num_train=10_000,
      intervention_num_eval=5_000,
      intervention_num_variance_estimate=10_000,
  ))

  # Interpretable models on the factors vs the black box (--mode=downstream;
  # the paper: 2,000 bootstrap resamples for every CI).
  config.downstream = ml_collections.ConfigDict(dict(
      num_train=10_000,  # training records of the factor models
      num_test=5_000,  # test records (validation split), shared with ResNets
      num_resamples=2000,
      horizon=1.0,  # years: 1-year mortality
      age_sex=True,  # mortality models on factors + age + sex (the paper)
      # Paired differences (factor model - ResNet, factor model - oracle):
      # within the margin (point estimate at most this far below) and
      # non-inferior by it (95 % CI's lower bound above -margin).
      margin=0.02,
      top_k=3,  # factors explained per task
      # External validation: the fitted models applied unchanged to the test
      # split of another factor sampler ('' to skip).
      external_mode='realistic',
      # PTB-XL diagnostic superclasses, if you built it
      # (experiments/build_dataset.py --dataset=ptbxl): name 'ptbxl/default'
      # and its data_dir; '' skips. 0: every record of the split.
      ptbxl=ml_collections.ConfigDict(dict(
          name='', data_dir='', num_train=0, num_test=0)),
  ))
  # The black-box ResNets (--mode=blackbox), one run per target and input
  # under <workdir>/blackbox/ (configs/resnet.py; 0 keeps its own sizes).
  config.blackbox = ml_collections.ConfigDict(dict(
      config='configs/resnet.py',
      targets=('labels', 'reduced_ef', 'mortality'),
      inputs=('beat', 'strip'),
      mortality_age_sex=True,
      variant=(),  # extra configs/resnet.py modifiers, e.g. ('tiny',)
      num_train=0, num_steps=0,
  ))
  # The attribution stage (--mode=explain): a ResNet regressing the nine
  # measures (configs/resnet.py:measures) in <workdir>/explain/resnet_beat/,
  # the nine methods of the preset on held-out beats, their perturbation and
  # ground-truth scores. All fields: stages/explain.py default_config().
  config.explain = explain_stage.default_config()
  config.explain.update(num_records=128)

  if arg == 'tiny':
    shrink_to_tiny(config)
    # Stays epoch-based like the full config: 0.25 x 256 records / 16 = 4.
    config.train.update(num_steps=0, num_epochs=0.25)
  elif arg:
    raise ValueError(f'unknown config variant {arg!r} (known: tiny)')
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
  """Seconds-long sizes for tests (shared by every config's `:tiny`)."""
  config.model.update(latents=4, channels=8, depth=2, kernel_size=3,
                      reduced_size=8, decoder_in_channels=4, head='conv',
                      padding='left')
  config.data.update(num_train=256, num_eval=64, prefetch=0,
                     normalization_records=64)
  config.train.update(batch_size=16, num_steps=4, log_every=2, eval_every=4,
                      checkpoint_every=2, eval_batch_size=32)
  config.optim.warmup_steps = 0
  config.downstream.update(num_train=256, num_test=64, num_resamples=50)
  config.blackbox.update(targets=('reduced_ef', 'mortality'),
                         inputs=('beat',), variant=('tiny',), num_train=0,
                         num_steps=0)
  config.explain.update(variant=('tiny',), num_train=0, num_steps=0,
                        num_records=8, num_resamples=50,
                        randomisation_records=2, review_records=1,
                        review_targets=('qrs_ms',), num_fractions=5,
                        figure_targets=('qrs_ms',),
                        randomisation_methods=('saliency',),
                        completeness_records=2)
  config.analysis.update(num_records=64, metrics_num_train=200,
                         metrics_num_test=100, intervention_batch_size=8,
                         intervention_num_train=40, intervention_num_eval=40,
                         intervention_num_variance_estimate=128)
