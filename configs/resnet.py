"""The Ribeiro et al. (2020) 1-D ResNet on simulated ECGs: the black box.

Trains `models.MODELS['resnet_cpu']` (the ResNet at CPU sizes; on a GPU use
`--config.model_name=resnet_ribeiro`) on the on-the-fly simulator for one of
the targets the FactorECG factors are compared on:

  python -m factorecg_jax.main --config=configs/resnet.py:reduced_ef \
      --workdir=runs/resnet_reduced_ef --mode=train

The argument is ':'-separated: first the target, then modifiers.

  reduced_ef  'classify', EF <= 35 % (binary; eval/auroc)   [default]
  labels      'classify', the simulator's 16 ECG labels (eval/auroc is the
              macro AUROC, eval/auroc_dim_00.. per label)
  ef          'regress', EF in % (eval/mae in %, eval/r2)
  measures    'regress', the 9 interval/amplitude measurements of
              simulator.MEASURE_NAMES (HR, PR, QRS, QT, QTc Bazett, R, T and
              ST-J amplitude in V5, QRS axis; Storas et al. 2025): one head,
              eval/mae_<name> per target in its unit (eval/mae_qrs_ms, ...)
  mortality   'cox', survival head on time/event (eval/c_index,
              eval/auroc_1y)
  superclass  'classify', PTB-XL's 5 diagnostic superclasses (multi-label)
              from its TFDS builder (data.source 'tfds', data.name
              'ptbxl/default'; set data.data_dir to where you built it):
              trained on folds 1-8, evaluated on fold 10 (the 'test'
              split), every record of both (data.num_train/num_eval 0)
  strip       modifier: the 10-s strip [5000, 12] instead of the median beat
              [600, 12] as input (config.data.input_key)
  age_sex     modifier: age and sex joined to the pooled features
              (loss.extra_keys, data.extra_keys and model.num_extra together)
  tiny        modifier: seconds-long sizes for tests

e.g. `configs/resnet.py:mortality:strip:age_sex`, `configs/resnet.py:
reduced_ef:tiny`. Expected runtime and metrics: not yet measured on the
2-core machine (the tiny variant trains in seconds).
"""

import ml_collections

from factorecg_jax.data import input_pipeline
from factorecg_jax.data import simulator

# Simulator EF (%) over uniform factors (2,000 records): the scale of the
# 'ef' regression target, so that the model predicts a standard normal.
EF_MEAN, EF_STD = 46.6, 9.1
NUM_LABELS = 16  # simulator.NUM_LABELS (LABEL_NAMES)
# Scale of the 'measures' targets (simulator.MEASURE_NAMES, MEASURE_UNITS:
# bpm, ms x 4, mV x 3, deg): mean and SD over the uniform sampler, records
# 0..1999 of the seed-0 'train' split (sources.simulate_batch(0, 'train',
# range(2000), fields=('measures',))), rounded.
MEASURES_MEAN = (82.9, 178.9, 110.3, 391.2, 449.9, 1.398, 0.151, 0.006,
                 31.0)
MEASURES_STD = (22.0, 34.9, 23.2, 52.6, 47.6, 0.684, 0.263, 0.060, 54.0)

# PTB-XL's diagnostic superclasses (ptbxl_dataset_builder.SUPERCLASSES:
# NORM, MI, STTC, CD, HYP).
NUM_SUPERCLASSES = 5

TARGETS = ('reduced_ef', 'labels', 'ef', 'measures', 'mortality',
           'superclass')
MODIFIERS = ('strip', 'age_sex', 'tiny')


def _parse(arg: str | None) -> tuple[str, set[str]]:
  tokens = [t for t in (arg or '').split(':') if t]
  target = tokens.pop(0) if tokens and tokens[0] in TARGETS else 'reduced_ef'
  unknown = [t for t in tokens if t not in MODIFIERS]
  if unknown:
    raise ValueError(
        f'unknown config variant {unknown} in {arg!r} (targets: {TARGETS}, '
        f'modifiers: {MODIFIERS})'
    )
  return target, set(tokens)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  target, modifiers = _parse(arg)
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Task and its loss settings (passed to loss_fn / eval_fn as kwargs).
  config.loss = ml_collections.ConfigDict()
  # Batch keys joined into the ResNet's `extra` input ([batch, E]).
  config.loss.extra_keys = ('age', 'sex') if 'age_sex' in modifiers else ()
  if target in ('reduced_ef', 'labels', 'superclass'):
    config.task = 'classify'
    config.loss.target_key = target
    num_outputs = {'labels': NUM_LABELS,
                   'superclass': NUM_SUPERCLASSES}.get(target, 1)
    targets = (target,)
  elif target == 'ef':
    config.task = 'regress'
    config.loss.target_key = 'ef'
    config.loss.target_mean = (EF_MEAN,)
    config.loss.target_std = (EF_STD,)
    num_outputs, targets = 1, ('ef',)
  elif target == 'measures':
    config.task = 'regress'
    config.loss.target_key = 'measures'
    config.loss.target_mean = MEASURES_MEAN
    config.loss.target_std = MEASURES_STD
    # Names of the eval summary's per-target MAE (eval/mae_qrs_ms, ...).
    config.loss.target_names = simulator.MEASURE_NAMES
    num_outputs, targets = simulator.NUM_MEASURES, ('measures',)
  else:
    config.task = 'cox'
    num_outputs, targets = 1, ('time', 'event')

  config.model_name = 'resnet_cpu'
  # Splatted into the preset (overrides its sizes when given).
  config.model = ml_collections.ConfigDict(dict(
      num_outputs=num_outputs,
      num_extra=len(config.loss.extra_keys),  # age and sex: 1 column each
      pool='flatten',  # as published; 'avg' makes the head length-free
      dropout_rate=0.2,
      # 32: nn.Dropout's masks; 8 or 16: packed masks, faster train steps
      # on CPU, the rate rounded to 2**-bits (models/resnet.PackedDropout).
      dropout_bits=32,
  ))

  config.data = input_pipeline.default_data_config()
  config.data.num_train = 20_000
  config.data.num_eval = 2_000
  config.data.input_key = 'strip' if 'strip' in modifiers else 'beat'
  config.data.normalization = 'per_lead'
  config.data.extra_keys = targets + tuple(config.loss.extra_keys)
  if target == 'superclass':
    # PTB-XL through its builder: the benchmark's folds, every record.
    config.data.update(source='tfds', name='ptbxl/default', eval_split='test',
                       num_train=0, num_eval=0)

  config.optim = ml_collections.ConfigDict(dict(
      name='adamw', lr=1e-3, b1=0.9, b2=0.999, weight_decay=1e-4,
      grad_clip_norm=1.0, warmup_steps=100, schedule='cosine'))

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 64
  config.train.num_epochs = 10.0
  # 0: from num_epochs and the data read (ceil(10 x 20,000 / 64) = 3,125).
  config.train.num_steps = 0
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.eval_batch_size = 256
  config.train.check_finite_every = 0
  config.train.dtype = 'float32'

  if 'tiny' in modifiers:
    # The test-only sizes of resnet._TinyResNet on a few hundred records.
    config.model.update(stem_filters=4, filters=(8, 8), downsample=(4, 4),
                        kernel_size=5)
    config.data.update(num_train=256, num_eval=64, prefetch=0,
                       normalization_records=64)
    config.train.update(batch_size=16, num_epochs=0.0, num_steps=4,
                        log_every=2, eval_every=4, checkpoint_every=2,
                        eval_batch_size=32)
    config.optim.warmup_steps = 0
  return config
