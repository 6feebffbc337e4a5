"""Ablation: the black box's input, the median beat vs the 10-s strip.

  python experiments/sweep.py --sweep=configs/sweeps/input.py

Answers: how much the black-box ResNet gains from the whole 10-s strip
(rhythm, beat-to-beat variation) over the median beat the factors are
computed from, on the test split: AUROC for reduced EF and C-index for
1-year mortality of 'ResNet (beat)' and 'ResNet (strip)' (the downstream
stage's scalars; `{blackbox.inputs[0]}` in the metric names takes each
point's input). The factor models (logistic for reduced EF, Cox for
mortality) are columns too, as the reference both ResNets are compared
with. Each point trains the demo VAE and the two black-box ResNets
(reduced EF, mortality) on its input, then runs the downstream stage. The
VAE run is the same at both points (the input only changes the ResNets),
so the factor columns differ only by seed noise. Grid: 2 inputs x 1 seed.

Paper scale (GPU/TPU): `--sweep=configs/sweeps/input.py:paper` (base
configs/factorecg_paper.py with its full black-box sizes, seeds 0-2): 6
runs, each a VAE and two ResNets, one device each.

Runtime (2-core CPU, demo scale), estimated from stage times measured
on the quiet 2-core machine (2026-12-02; one worker, a second on 2 cores
gains nothing):
the beat point about 8 min (VAE ~5 min, two beat
ResNets ~2 min, downstream 45 s); the strip point trains its ResNets
on 5,000-sample strips, not timed here (expect several times longer);
not run end to end.
"""

import ml_collections

_RESNET = 'ResNet ({blackbox.inputs[0]})'


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  sweep = dict(
      name='input',
      base='configs/demo.py',
      overrides={'blackbox.targets': ('reduced_ef', 'mortality')},
      sampler='grid',
      space={'blackbox.inputs': [('beat',), ('strip',)]},
      seeds=(0,),
      objectives=(
          (f'downstream:reduced EF/{_RESNET}/AUROC', 'maximize'),
          (f'downstream:1-year mortality/{_RESNET}/C-index', 'maximize')),
      metrics=('downstream:reduced EF/factors: logistic/AUROC',
               'downstream:1-year mortality/factors: Cox/C-index'),
      stages=('downstream',),
  )
  if arg == 'paper':
    sweep.update(name='input_paper', base='configs/factorecg_paper.py',
                 overrides={'blackbox.targets': ('reduced_ef', 'mortality'),
                            'train.dtype': 'bfloat16'},
                 seeds=(0, 1, 2))
  elif arg:
    raise ValueError(f'unknown sweep variant {arg!r} (known: paper)')
  return ml_collections.ConfigDict(sweep, allow_dotted_keys=True)
