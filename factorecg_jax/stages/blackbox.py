"""Stage `blackbox`: the black-box ResNets the ECG factors are compared with.

For every target of `config.blackbox.targets` (reduced EF, the 16 labels,
1-year mortality) and every input of `config.blackbox.inputs` (median beat,
10-s strip) this trains the Ribeiro-style ResNet of `configs/resnet.py` as an
ordinary run in `<workdir>/blackbox/<target>_<input>/` (resumable, skipped
when already trained), on the same simulated population as the VAE (the
run's `data.seed` and `data.mode`), evaluated on the first
`downstream.num_test` records of the validation split, the records the factor
models are tested on. When `downstream.ptbxl.name` names a built PTB-XL, one
more run per input (`ptbxl_superclass_beat`, `ptbxl_superclass_strip`)
learns its 5 diagnostic superclasses on folds 1-8 and predicts fold 10, the
records the PTB-XL factor models are tested on. Each run's final eval predictions
(`eval_predictions.npz`) are what the `downstream` stage compares.
"""

import os
from typing import Any

import ml_collections

from factorecg_jax import config_checks
from factorecg_jax import console
from factorecg_jax import stages
from factorecg_jax.stages import encode

FOLDER = 'blackbox'
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


# The target of the PTB-XL runs (configs/resnet.py:superclass).
PTBXL_TARGET = 'ptbxl_superclass'


def ptbxl_block(config: ml_collections.ConfigDict) -> Any:
  """`config.downstream.ptbxl` when a PTB-XL data set is named, else None."""
  pt = config.get('downstream', {}).get('ptbxl')
  return pt if pt and pt.get('name') else None


def applies(config: ml_collections.ConfigDict) -> bool:
  return encode.is_vae(config) and 'blackbox' in config and bool(
      config.blackbox.get('targets') or ptbxl_block(config))


def run_name(target: str, input_key: str) -> str:
  return f'{target}_{input_key}'


def run_dir(workdir: str, target: str, input_key: str) -> str:
  return os.path.join(workdir, FOLDER, run_name(target, input_key))


def resnet_config(config: ml_collections.ConfigDict, target: str,
                  input_key: str, *, sizes: Any = None,
                  num_eval: int | None = None) -> ml_collections.ConfigDict:
  """The ResNet config of one comparison run, on the VAE run's population.

  Args:
    config: the experiment (VAE) config with `blackbox` and `downstream`.
    target: a configs/resnet.py target ('reduced_ef', 'labels',
      'mortality', 'measures', ...).
    input_key: 'beat' or 'strip'.
    sizes: the block with `config`, `variant`, `num_train`, `num_steps` and
      `mortality_age_sex` (default `config.blackbox`; the explain stage
      passes its own).
    num_eval: validation records evaluated (default `downstream.num_test`,
      the records the factor models are tested on).
  """
  bb = config.blackbox if sizes is None else sizes
  path = bb.get('config', 'configs/resnet.py')
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(_ROOT, path)
  arg = ':'.join([target] + (['strip'] if input_key == 'strip' else [])
                 + (['age_sex'] if target == 'mortality' and bb.get(
                     'mortality_age_sex', True) else [])
                 + list(bb.get('variant', ()) or ()))
  out = config_checks.load_config(f'{path}:{arg}')
  out.seed = config.seed
  out.data.update(source=config.data.source, mode=config.data.mode,
                  seed=config.data.get('seed', 0))
  # Evaluated on the records the factor models are tested on.
  out.data.eval_split = 'validation'
  out.data.num_eval = int(config.downstream.num_test if num_eval is None
                          else num_eval)
  # Sizes for this comparison (0 keeps the ResNet config's own).
  # `sizes` may be a ConfigDict or a plain dict (the explain stage's).
  if bb.get('num_train'):
    out.data.num_train = int(bb['num_train'])
  if bb.get('num_steps'):
    steps = int(bb['num_steps'])
    out.train.num_steps = steps
    out.train.eval_every = min(int(out.train.eval_every), steps)
    out.train.checkpoint_every = min(int(out.train.checkpoint_every), steps)
  return out


def ptbxl_config(config: ml_collections.ConfigDict, input_key: str
                 ) -> ml_collections.ConfigDict:
  """The ResNet of PTB-XL's superclasses, on the data set of the downstream
  stage's PTB-XL comparison (`downstream.ptbxl`: name, data_dir, num_train,
  num_test; 0 takes the whole split): trained on folds 1-8 (the 'train'
  split), evaluated on fold 10 ('test'); `input_key` 'beat' or 'strip' (the
  builder's 10-s strips, stored unless built with `with_strip=False`)."""
  pt = ptbxl_block(config)
  sizes = ml_collections.ConfigDict(config.blackbox.to_dict())
  sizes.num_train = 0  # the simulated runs' size is not PTB-XL's
  sizes.mortality_age_sex = False
  out = resnet_config(config, 'superclass', input_key, sizes=sizes,
                      num_eval=int(pt.get('num_test', 0)))
  out.data.update(source='tfds', name=pt.name,
                  data_dir=pt.get('data_dir') or None, eval_split='test',
                  num_train=int(pt.get('num_train', 0)), download=False)
  return out


def _runs(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(target, input) of every comparison run."""
  runs = [(t, i) for t in config.blackbox.get('targets', ())
          for i in config.blackbox.inputs]
  if ptbxl_block(config):
    runs += [(PTBXL_TARGET, i) for i in config.blackbox.inputs]
  return runs


@stages.register('blackbox', requires=(), order=50, folder=FOLDER,
                 sections=('seed', 'data', 'blackbox', 'downstream'),
                 applies=applies,
                 description='black-box ResNets on beats and strips')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or finds trained) every comparison ResNet; returns the summary."""
  from factorecg_jax import demo  # pylint: disable=g-import-not-at-top
  from factorecg_jax.training import train  # pylint: disable=g-import-not-at-top
  runs, scalars, files = [], {}, {}
  todo = _runs(config)
  for k, (target, input_key) in enumerate(todo, start=1):
    name = run_name(target, input_key)
    cfg = (ptbxl_config(config, input_key) if target == PTBXL_TARGET
           else resnet_config(config, target, input_key))
    directory = run_dir(workdir, target, input_key)
    if stages.training_complete(cfg, directory):
      console.info(f'  ResNet {name} ({k}/{len(todo)}): trained, skipped')
    else:
      console.info(f'  ResNet {name} ({k}/{len(todo)})')
      train.train_and_evaluate(cfg, directory)
    headline, _ = demo.train_headline(directory)
    runs.append(dict(name=name, target=target, input=input_key,
                     task=cfg.task, workdir=os.path.join(FOLDER, name),
                     **{k: v for k, v in headline.items()}))
    for key, value in headline.items():
      if isinstance(value, float):
        scalars[f'{name}/{key}'] = value
    files[name] = os.path.join(directory, train.PREDICTIONS_FILE)
  return stages.summary(
      scalars=scalars,
      headline={f'ResNet {r["name"]}': _headline_metric(r) for r in runs},
      tables=dict(runs=runs), files=files)


def _headline_metric(row: dict[str, Any]) -> str:
  for key in ('eval macro AUROC', 'eval AUROC', 'eval C-index'):
    if key in row:
      return f'{key[5:]} {row[key]:.3f}'
  return f"loss {row.get('eval loss', float('nan')):.4g}"
