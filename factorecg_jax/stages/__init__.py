"""Post-training stages: one module each, one entry point, one summary shape.

A stage is a module of this package (or a user's own file, loaded with
`--stage_modules=path/to/my_stage.py`) that registers itself:

  @stages.register('encode', requires=('train',), order=20,
                   description='factors of held-out records')
  def run(config, workdir) -> dict:
    ...
    return stages.summary(scalars=..., tables=..., figures=..., files=...)

It reads earlier stages' saved outputs (a checkpoint, an npz of factors),
writes its own under `<workdir>/<folder>/` (folder defaults to the stage
name) and returns a summary of the shared shape, which the runner completes
and saves as `<workdir>/<folder>/summary.json`:

  {"stage": "encode", "scalars": {name: number}, "headline": {label: value},
   "tables": {name: [row dicts]}, "figures": {name: path}, "files": {name:
   path}, "details": {...}, "fingerprint": "...", "seconds": 12.3,
   "created": "2026-12-01T20:00:00+00:00"}

Paths are relative to the workdir, so a report can read any stage's summary
without knowing the stage. `--mode` choices are the registered names plus
'train' and 'all' (main.py); `--mode=all` runs the stages that need nothing
(the simulated-data summary), trains (unless the run is already trained to
its resolved step count) and runs every applicable stage in order, skipping
a stage whose summary's fingerprint (config, checkpoint step and the
fingerprints of the stages it requires) is unchanged.

Modules of this package whose name starts with '_' are helpers, not stages;
every other module is imported by `discover()` (so a new stage is one file).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import json
import os
import pkgutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from factorecg_jax import console

TRAIN = 'train'  # pseudo-stage name: the training run of the workdir
SUMMARY_FILE = 'summary.json'
# The config sections training reads; the others (analysis, simulate, ...)
# only change stages.
TRAINING_SECTIONS = ('seed', 'task', 'model_name', 'model', 'loss', 'data',
                     'optim', 'train')
_SUMMARY_KEYS = ('scalars', 'headline', 'tables', 'figures', 'files',
                 'details')

RunFn = Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Stage:
  """A registered stage (see the module docstring).

  Attributes:
    name: the `--mode` name.
    run: `run(config, workdir) -> summary` (`summary(...)`'s shape).
    requires: stages (or 'train') whose outputs it reads; they run first
      in `--mode=all` and their fingerprints enter this stage's.
    order: position in `--mode=all` (ascending).
    folder: output folder under the workdir (default: the name).
    description: one line for `--help` and the report.
    applies: `applies(config) -> bool`; `--mode=all` skips a stage that
      does not apply (e.g. VAE factor stages for a ResNet run).
    always: run in `--mode=all` even when its fingerprint is unchanged (a
      cheap stage that reads every other stage's outputs, e.g. the report).
    sections: the top-level config entries its outputs depend on (None:
      the whole config). A stage that needs no trained model (the black-box
      ResNets) names its own, so changing the VAE's loss keeps it up to date.
  """

  name: str
  run: RunFn
  requires: tuple[str, ...] = (TRAIN,)
  order: int = 100
  folder: str = ''
  description: str = ''
  applies: Callable[[ml_collections.ConfigDict], bool] | None = None
  always: bool = False
  sections: tuple[str, ...] | None = None

  @property
  def out_dir(self) -> str:
    return self.folder or self.name

  def applies_to(self, config: ml_collections.ConfigDict) -> bool:
    return True if self.applies is None else bool(self.applies(config))


STAGES: dict[str, Stage] = {}


def register(name: str, *, requires: Sequence[str] = (TRAIN,),
             order: int = 100, folder: str = '', description: str = '',
             applies: Callable[[ml_collections.ConfigDict], bool]
             | None = None, always: bool = False,
             sections: Sequence[str] | None = None
             ) -> Callable[[RunFn], RunFn]:
  """Decorator registering `run(config, workdir)` as stage `name`.

  Registering a name twice replaces the earlier stage (a user's file may
  override a built-in one).
  """
  if name in (TRAIN, 'all', 'demo'):
    raise ValueError(f'{name!r} is a reserved mode name.')

  def wrap(fn: RunFn) -> RunFn:
    STAGES[name] = Stage(name=name, run=fn, requires=tuple(requires),
                         order=order, folder=folder,
                         description=description, applies=applies,
                         always=always,
                         sections=None if sections is None
                         else tuple(sections))
    return fn

  return wrap


def discover() -> dict[str, Stage]:
  """Imports every stage module of this package; returns the registry."""
  for info in pkgutil.iter_modules(__path__):
    if not info.name.startswith('_'):
      importlib.import_module(f'{__name__}.{info.name}')
  return STAGES


def load_stage_modules(specs: Sequence[str]) -> None:
  """Imports user stage modules: dotted module names or paths to .py files.

  Raises:
    FileNotFoundError: for a .py path that does not exist.
  """
  for spec in specs:
    spec = spec.strip()
    if not spec:
      continue
    if spec.endswith('.py'):
      if not os.path.exists(spec):
        raise FileNotFoundError(f'Stage module not found: {spec}')
      name = '_stage_' + os.path.splitext(os.path.basename(spec))[0]
      module_spec = importlib.util.spec_from_file_location(name, spec)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[name] = module
      module_spec.loader.exec_module(module)
    else:
      importlib.import_module(spec)


def ordered(config: ml_collections.ConfigDict | None = None) -> list[Stage]:
  """Registered stages in `--mode=all` order (applicable ones if config)."""
  out = sorted(STAGES.values(), key=lambda s: (s.order, s.name))
  if config is not None:
    out = [s for s in out if s.applies_to(config)]
  return out


def summary(*, scalars: Mapping[str, Any] | None = None,
            headline: Mapping[str, Any] | None = None,
            tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
            figures: Mapping[str, str] | None = None,
            files: Mapping[str, str] | None = None,
            details: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """A stage summary of the shared shape (see the module docstring).

  Args:
    scalars: metric name -> number (the values a sweep or report tabulates).
    headline: display label -> value for the console and the report's first
      screen (default: the scalars).
    tables: table name -> list of row dicts (same keys in every row).
    figures: figure name -> path (absolute or relative to the workdir).
    files: other outputs, name -> path.
    details: anything else JSON-able the stage wants to keep.
  """
  return dict(scalars=dict(scalars or {}),
              headline=dict(headline if headline is not None
                            else (scalars or {})),
              tables={k: [dict(r) for r in v] for k, v in
                      (tables or {}).items()},
              figures=dict(figures or {}), files=dict(files or {}),
              details=dict(details or {}))


def _json_normal(value: Any) -> Any:
  return json.loads(json.dumps(value, default=_to_plain))


def _to_plain(value: Any) -> Any:
  tolist = getattr(value, 'tolist', None)
  if tolist is not None:
    return tolist()
  return str(value)


def summary_path(workdir: str, stage: str | Stage) -> str:
  stage = STAGES[stage] if isinstance(stage, str) else stage
  return os.path.join(workdir, stage.out_dir, SUMMARY_FILE)


def read_summary(workdir: str, stage: str | Stage) -> dict[str, Any] | None:
  """A stage's saved summary, or None if it has not run."""
  path = summary_path(workdir, stage)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def latest_checkpoint_step(workdir: str) -> int | None:
  """The largest finished checkpoint step in `<workdir>/checkpoints`."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return None
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()]
  return max(steps) if steps else None


def read_run_config(workdir: str) -> dict[str, Any] | None:
  """The training run's `config.json`, or None if absent."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def training_complete(config: ml_collections.ConfigDict, workdir: str
                      ) -> bool:
  """Whether `workdir` holds this config's run, trained to its last step.

  Compares the `TRAINING_SECTIONS` of the config with the run's config.json
  (an epoch-based `train.num_steps = 0` takes the run's resolved count).
  """
  saved = read_run_config(workdir)
  step = latest_checkpoint_step(workdir)
  if not saved or step is None:
    return False
  steps = int(saved.get('train', {}).get('num_steps', -1))
  now = _json_normal(config.to_dict())
  if not now.get('train', {}).get('num_steps'):
    now.setdefault('train', {})['num_steps'] = steps  # resolved from epochs
  same = all(now.get(k) == saved.get(k) for k in TRAINING_SECTIONS)
  return step == steps and same


def fingerprint(stage: Stage, config: ml_collections.ConfigDict,
                workdir: str) -> str:
  """Hash of what a stage's outputs depend on (see the module docstring)."""
  upstream = {}
  for name in stage.requires:
    if name == TRAIN:
      upstream[name] = latest_checkpoint_step(workdir)
    elif name in STAGES:
      saved = read_summary(workdir, name) or {}
      upstream[name] = saved.get('fingerprint')
  values = _json_normal(config.to_dict())
  if stage.sections is not None:
    values = {k: values.get(k) for k in stage.sections}
  blob = json.dumps(dict(stage=stage.name, config=values, upstream=upstream),
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_up_to_date(stage: Stage, config: ml_collections.ConfigDict,
                  workdir: str) -> bool:
  saved = read_summary(workdir, stage)
  return bool(saved) and saved.get('fingerprint') == fingerprint(
      stage, config, workdir)


def _relative(path: str, workdir: str) -> str:
  """A path (absolute, or relative to the current directory) relative to
  the workdir when it lies inside it; otherwise unchanged."""
  path = str(path)
  rel = os.path.relpath(os.path.abspath(path), os.path.abspath(workdir))
  return path if rel.startswith('..') else rel


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: str
              ) -> dict[str, Any]:
  """Runs one stage now and saves its completed summary.json.

  Raises:
    KeyError: for an unknown stage name (the message lists the known ones).
  """
  if name not in STAGES:
    raise KeyError(f'Unknown stage {name!r}; known: {sorted(STAGES)}.')
  stage = STAGES[name]
  os.makedirs(os.path.join(workdir, stage.out_dir), exist_ok=True)
  start = time.perf_counter()
  out = dict(stage.run(config, workdir) or {})
  record = summary(**{k: out.get(k) for k in _SUMMARY_KEYS})
  record['headline'] = out.get('headline', record['scalars'])
  for key in ('figures', 'files'):
    record[key] = {k: _relative(v, workdir) for k, v in record[key].items()}
  record = _json_normal(record)
  record.update(
      stage=name, fingerprint=fingerprint(stage, config, workdir),
      checkpoint_step=latest_checkpoint_step(workdir),
      seconds=round(time.perf_counter() - start, 2),
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'))
  path = summary_path(workdir, stage)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)
  return record


def with_requirements(names: Sequence[str]) -> set[str]:
  """`names` and every stage (or 'train') they need, transitively.

  Raises:
    KeyError: for an unknown stage name (the message lists the known ones).
  """
  out: set[str] = set()
  todo = list(names)
  while todo:
    name = todo.pop()
    if name in out:
      continue
    if name != TRAIN and name not in STAGES:
      raise KeyError(f'Unknown stage {name!r}; known: {sorted(STAGES)}.')
    out.add(name)
    if name != TRAIN:
      todo.extend(STAGES[name].requires)
  return out


def run_all(config: ml_collections.ConfigDict, workdir: str, *,
            train_fn: Callable[[ml_collections.ConfigDict, str], Any],
            force: bool = False, only: Sequence[str] | None = None
            ) -> list[tuple[str, Any]]:
  """Every applicable stage and training, in order; up-to-date ones skip.

  Stages that need nothing (`requires=()`, e.g. the simulated-data summary)
  come first, then training, then the others by `order`. Stages marked
  `always` (the report) run every time.

  Args:
    config: the experiment config.
    workdir: run directory.
    train_fn: `train_fn(config, workdir)`, run unless `training_complete`.
    force: rerun everything, even what is up to date.
    only: if given, just these stages (and what they require, e.g. a sweep
      trial's `('evaluate',)` runs training and the evaluate stage); the
      name 'train' alone trains.

  Returns:
    [(name, summary)] for every stage (skipped ones give their saved
    summary; 'train' gives None).
  """
  applicable = ordered(config)
  plan = ([s for s in applicable if not s.requires] + [TRAIN]
          + [s for s in applicable if s.requires])
  if only is not None:
    wanted = with_requirements(only)
    plan = [p for p in plan if (p if p == TRAIN else p.name) in wanted]
  done = []
  for i, item in enumerate(plan):
    name = item if item == TRAIN else item.name
    label = f'{i + 1}/{len(plan)} {name}'
    if item == TRAIN:
      if not force and training_complete(config, workdir):
        console.info(f'[{label}] up to date (trained to step '
                     f'{latest_checkpoint_step(workdir)}), skipped')
      else:
        with console.stage(label):
          train_fn(config, workdir)
      done.append((TRAIN, None))
    elif not force and not item.always and is_up_to_date(item, config,
                                                          workdir):
      console.info(f'[{label}] up to date, skipped')
      done.append((name, read_summary(workdir, item)))
    else:
      with console.stage(label, item.description):
        done.append((name, run_stage(name, config, workdir)))
  return done
