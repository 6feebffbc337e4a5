"""Sweeps and ablations on Optuna: many workers, one storage, one run dir each.

A sweep file `configs/sweeps/<name>.py` holds `get_sweep()`, returning a
`ml_collections.ConfigDict(..., allow_dotted_keys=True)` (or a plain dict):

  name='beta'                       study name; [A-Za-z0-9_.-]
  base='configs/demo.py'            config of every trial ('file.py:arg' too)
  overrides={'train.num_steps': 600}  dotted config path -> value, all trials
  sampler='grid'                    'grid' | 'tpe' | 'random'
  sampler_seed=0
  space={'loss.beta': [1, 4, 16],   values (grid; categorical for tpe/random)
         'optim.lr': dict(low=1e-4, high=1e-2, log=True)}   tpe/random range
                                    (int=True for an integer field)
  num_trials=20                     tpe/random: COMPLETE trials wanted
  seeds=(0, 1)                      config.seed; grid: an extra axis 'seed';
                                    tpe/random: every trial runs each seed
                                    and reports the mean
  objectives=(('evaluate:mig', 'maximize'), ('train:eval/r2', 'maximize'))
  metrics=('encode:num_active',)    extra columns
  stages=('evaluate',)              main.py --stages of a trial; ('train',)

Metric names are '<source>:<name>': 'train:eval/r2' (the run's final
training metrics, `train.final_metrics`), 'config:run_info.num_params' (a
path in the run's config.json) or '<stage>:<scalar>' (a scalar of that
stage's summary.json). `{dotted.path}` or `{dotted.path[0]}` in a name is
replaced by the run's config value, so one column can name a scalar whose
name depends on the point (e.g. 'ResNet ({blackbox.inputs[0]})').

`config.seed` seeds the initialisation, the order of training batches and
the sampling noise; `data.seed` (the simulated data set) stays as the base
config has it, so seeds measure training noise on one data set (sweep
'data.seed' in `space` to vary the data too).

Every (point, seed) is an ordinary run of `factorecg_jax.main --mode=all
--stages=...` in a directory named after its values,
`<sweep_dir>/trials/beta=8,seed=0-1a2b3c4d/` (tpe/random:
`<sweep_dir>/trials/<point>-<hash>/seed=0/`), so a rerun of the point lands
in the same directory and resumes from its last checkpoint. Next to the
run's own files the sweep keeps:

  .sweep.lock        an exclusive `fcntl.flock` while a worker runs it (held
                     by the training process too): a second worker handed
                     the same point prunes its trial instead of running it
  sweep_trial.json   params, command, every attempt (host, pid, start/end,
                     status, checkpoint step at start) and the result
  sweep_trial.log    the output of every attempt

The Optuna study (named after the sweep) lives in `<sweep_dir>/journal.log`
(`optuna.storages.JournalStorage` with `JournalFileSymlinkLock`, which
needs only an atomic symlink and so works on NFS of any version) or in a
database (`storage='postgresql://...'`). A worker first fails the RUNNING
trials whose lock is free (their worker died) and re-enqueues their params,
so the next trial on that point resumes training in the same directory;
then it asks for trials until the grid is COMPLETE (or running elsewhere)
or `num_trials` are COMPLETE. `aggregate` writes `<sweep_dir>/results/`:
trials and per-point tables (CSV, Markdown), trade-off figures and a
summary.json of the stage-summary shape with `"kind": "sweep"`.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import copy
import csv
import dataclasses
import datetime
import difflib
import errno
import fcntl
import hashlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import optuna

from factorecg_jax import config_checks
from factorecg_jax import console
from factorecg_jax import stages

SAMPLERS = ('grid', 'tpe', 'random')
DIRECTIONS = ('maximize', 'minimize')
JOURNAL_FILE = 'journal.log'
TRIALS_DIR = 'trials'
RESULTS_DIR = 'results'
TRIAL_FILE = 'sweep_trial.json'
LOCK_FILE = '.sweep.lock'
LOG_FILE = 'sweep_trial.log'
SEED = 'seed'  # the grid axis of `seeds` (it sets config.seed)
# Metric sources that are not stages.
TRAIN_SOURCE, CONFIG_SOURCE = 'train', 'config'
# A RUNNING trial that never took its run-dir locks (its worker died between
# `ask` and locking, a second's window) is failed after this long.
UNLOCKED_STALE_AFTER_S = 600
# A point whose trials failed this often is not retried automatically.
MAX_AUTO_RETRIES = 3
# Environment variables that make main.py join a multi-process JAX run
# (main.py's `_MULTIPROCESS_ENV`); a trial without a launcher is one process,
# even when the worker itself runs inside a SLURM job.
MULTIPROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
                    'TPU_WORKER_HOSTNAMES', 'OMPI_COMM_WORLD_SIZE')

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEYS = ('name', 'base', 'overrides', 'sampler', 'sampler_seed', 'space',
         'num_trials', 'seeds', 'objectives', 'metrics', 'stages')
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
_METRIC_RE = re.compile(r'^([A-Za-z_][A-Za-z0-9_-]*):(.+)$')
_TEMPLATE_RE = re.compile(r'\{([A-Za-z_][A-Za-z0-9_.]*)(?:\[(-?\d+)\])?\}')
_RANGE_KEYS = ('low', 'high', 'log', 'int', 'step')
_EXAMPLE_OBJECTIVES = "(('train:eval/r2', 'maximize'),)"


class SweepError(ValueError):
  """An invalid sweep file or a sweep that does not match its study."""


class RunFailed(RuntimeError):
  """A trial's training run failed or did not produce its objectives."""


# ------------------------------------------------------------ sweep files ---


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A validated sweep file (see the module docstring).

  Attributes:
    name: study name.
    base: the base config as written in the file ('configs/demo.py:tiny').
    base_path: the same, with an absolute file path (trial commands).
    overrides: dotted path -> value (coerced to the field's type).
    sampler: 'grid', 'tpe' or 'random'.
    sampler_seed: seed of the sampler.
    space: dotted path -> list of values (coerced) or range dict.
    num_trials: COMPLETE trials wanted (tpe/random).
    seeds: config.seed values (grid axis, or every seed per trial).
    objectives: ((metric, direction), ...).
    metrics: extra metric names.
    stages: main.py --stages of every trial.
    path: the sweep file.
    base_config: the loaded base config with the overrides applied.
  """

  name: str
  base: str
  base_path: str
  overrides: dict[str, Any]
  sampler: str
  sampler_seed: int
  space: dict[str, Any]
  num_trials: int
  seeds: tuple[int, ...]
  objectives: tuple[tuple[str, str], ...]
  metrics: tuple[str, ...]
  stages: tuple[str, ...]
  path: str = ''
  base_config: Any = dataclasses.field(default=None, compare=False,
                                       repr=False)

  @property
  def is_grid(self) -> bool:
    return self.sampler == 'grid'

  @property
  def directions(self) -> list[str]:
    return [d for _, d in self.objectives]

  @property
  def objective_names(self) -> list[str]:
    return [m for m, _ in self.objectives]

  @property
  def metric_names(self) -> list[str]:
    """Objectives, then the extra metrics (without repeats)."""
    return list(dict.fromkeys(self.objective_names + list(self.metrics)))

  @property
  def param_names(self) -> list[str]:
    """The swept config paths (without the seed axis)."""
    return list(self.space)

  @property
  def total(self) -> int:
    """Grid: the number of (point, seed) runs; tpe/random: num_trials."""
    if not self.is_grid:
      return self.num_trials
    return len(grid_points(self))

  def identity(self) -> dict[str, Any]:
    """What a study must keep: a different one means different results."""
    return _jsonable(dict(base=self.base, overrides=self.overrides,
                          objectives=[list(o) for o in self.objectives],
                          stages=list(self.stages)))


def _load_module(path: str):
  name = '_sweep_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(path: str, *, seeds: Sequence[int] | None = None,
               num_trials: int | None = None) -> Sweep:
  """Loads and validates a sweep file.

  Args:
    path: the sweep file (configs/sweeps/<name>.py), or 'file.py:arg' for
      `get_sweep(arg)` (a variant, e.g. ':paper'), as config files take it.
    seeds: replaces the file's seeds (the CLI's --seeds).
    num_trials: replaces the file's num_trials (tpe/random).

  Returns:
    The validated `Sweep`.

  Raises:
    FileNotFoundError: if the file does not exist.
    SweepError: naming every problem of the file.
  """
  file, _, arg = path.partition(':')
  if not os.path.exists(file):
    raise FileNotFoundError(f'Sweep file not found: {file}')
  module = _load_module(file)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{file} has no get_sweep() function.')
  if arg and not inspect.signature(module.get_sweep).parameters:
    raise SweepError(f'{file}: get_sweep() takes no variant, got {arg!r}.')
  raw = module.get_sweep(arg) if arg else module.get_sweep()
  if isinstance(raw, ml_collections.ConfigDict):
    raw = raw.to_dict()
  if not isinstance(raw, Mapping):
    raise SweepError(f'{path}: get_sweep() must return a ConfigDict or dict, '
                     f'not {type(raw).__name__}.')
  raw = dict(raw)
  if seeds is not None:
    raw['seeds'] = tuple(seeds)
  if num_trials is not None:
    raw['num_trials'] = num_trials
  return dataclasses.replace(validate(raw, source=file), path=path)


def _resolve_base(base: str, source: str) -> tuple[str | None, str]:
  """('file.py:arg' with an absolute file path, or None; error message)."""
  file, sep, arg = base.partition(':')
  tried = []
  for root in (os.getcwd(), _REPO, os.path.dirname(os.path.abspath(
      source)) if source else None):
    if root is None:
      continue
    candidate = file if os.path.isabs(file) else os.path.join(root, file)
    tried.append(candidate)
    if os.path.isfile(candidate):
      return os.path.abspath(candidate) + sep + arg, ''
  return None, (f"base config {base!r} not found (tried "
                f"{', '.join(dict.fromkeys(tried))})")


def _leaf_paths(config: Any, prefix: str = '') -> list[str]:
  out = []
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out += _leaf_paths(value, f'{prefix}{key}.')
    else:
      out.append(prefix + key)
  return out


def _suggest(path: str, known: Sequence[str]) -> str:
  """' Did you mean: ...?' for a misspelt dotted path (or '')."""
  close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
  last = path.rpartition('.')[2]
  close += [k for k in known if k.rpartition('.')[2] == last
            and k not in close][:3]
  return f' Did you mean: {", ".join(close)}?' if close else ''


def _field(config: Any, path: str) -> tuple[Any, str]:
  """(parent node, key) of a leaf path; raises KeyError if it is none."""
  node = config
  parts = path.split('.')
  for part in parts[:-1]:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(path)
    node = node[part]
  if (not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node
      or isinstance(node[parts[-1]], ml_collections.ConfigDict)):
    raise KeyError(path)
  return node, parts[-1]


def field_type(config: ml_collections.ConfigDict, path: str) -> type:
  """The type of the config field at `path` (placeholders included)."""
  node, key = _field(config, path)
  return node.get_type(key)


def coerce(value: Any, kind: type, what: str) -> Any:
  """`value` as the config field type `kind` would hold it.

  Args:
    value: a value from a sweep file or from Optuna.
    kind: the field's type (`field_type`).
    what: how to name the value in an error.

  Returns:
    float for float fields (ints widen), int for int fields (integral
    floats narrow), a tuple for tuple fields (a single string becomes a
    1-tuple), the value itself for bool and str fields.

  Raises:
    SweepError: if the value does not fit the field.
  """
  bad = SweepError(f'{what}={value!r} does not fit the config field of type '
                   f'{kind.__name__}')
  if isinstance(value, np.generic):
    value = value.item()
  if kind is bool:
    if not isinstance(value, bool):
      raise bad
    return value
  if kind is int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad
    if isinstance(value, float) and not value.is_integer():
      raise bad
    return int(value)
  if kind is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad
    return float(value)
  if kind is str:
    if not isinstance(value, str):
      raise bad
    return value
  if kind in (tuple, list):
    if isinstance(value, str):
      return (value,)
    if not isinstance(value, (tuple, list)):
      raise bad
    return tuple(value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise bad


def _apply(config: ml_collections.ConfigDict, values: Mapping[str, Any]
           ) -> ml_collections.ConfigDict:
  """A deep copy of `config` with dotted-path `values` set (type-checked)."""
  out = copy.deepcopy(config)
  for path, value in values.items():
    node, key = _field(out, path)
    node[key] = value
  return out


def _check_metric(name: str, what: str, known_stages: set[str] | None,
                  ran: set[str], config: Any) -> list[str]:
  """Problems of one metric name (syntax, source, placeholders)."""
  if not isinstance(name, str):
    return [f'{what} {name!r} must be a string like \'train:eval/r2\'']
  match = _METRIC_RE.match(name)
  if not match:
    return [f"{what} {name!r} must be '<source>:<name>', e.g. "
            "'train:eval/r2', 'evaluate:mig' or 'config:run_info.num_params'"]
  problems = []
  source, key = match.groups()
  if source == TRAIN_SOURCE or source == CONFIG_SOURCE:
    needed = stages.TRAIN
  else:
    needed = source
    if known_stages is not None and source not in known_stages:
      close = difflib.get_close_matches(source, sorted(known_stages), n=3)
      hint = f' Did you mean: {", ".join(close)}?' if close else ''
      known = ', '.join(sorted(known_stages))
      problems.append(f'{what} {name!r}: unknown source {source!r} (known: '
                      f'train, config, {known}).{hint}')
      return problems
  if needed not in ran:
    problems.append(f'{what} {name!r} reads {needed!r}, which the trial\'s '
                    f'stages {tuple(sorted(ran - {stages.TRAIN}))} do not run: '
                    f'add {needed!r} to stages')
  for path, _ in _TEMPLATE_RE.findall(key):
    try:
      _field(config, path)
    except KeyError:
      problems.append(f'{what} {name!r}: placeholder {{{path}}} is not a '
                      'config field.' + _suggest(path, _leaf_paths(config)))
  return problems


def validate(raw: Mapping[str, Any], source: str = '<sweep>') -> Sweep:
  """Checks a sweep file's dict; returns the `Sweep`.

  Raises:
    SweepError: naming every problem (unknown keys and config paths with
      close matches, a bad sampler, objective syntax, metrics of stages the
      trial does not run, values that do not fit their fields).
  """
  problems: list[str] = []
  unknown = [k for k in raw if k not in _KEYS]
  for key in unknown:
    close = difflib.get_close_matches(key, _KEYS, n=2)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    problems.append(f'unknown key {key!r} (known: {", ".join(_KEYS)}).{hint}')
  name = raw.get('name')
  if not isinstance(name, str) or not _NAME_RE.match(name):
    problems.append(f'name={name!r}: give a study name of letters, digits, '
                    "'_', '.' and '-'")
  sampler = raw.get('sampler', 'grid')
  if sampler not in SAMPLERS:
    close = difflib.get_close_matches(str(sampler), SAMPLERS, n=1)
    hint = f' Did you mean: {close[0]}?' if close else ''
    problems.append(f'sampler={sampler!r}: must be one of {SAMPLERS}.{hint}')
  sampler_seed = raw.get('sampler_seed', 0)
  if isinstance(sampler_seed, bool) or not isinstance(sampler_seed, int):
    problems.append(f'sampler_seed={sampler_seed!r}: must be an integer')
    sampler_seed = 0
  seeds = raw.get('seeds', (0,))
  if isinstance(seeds, int) and not isinstance(seeds, bool):
    seeds = (seeds,)
  try:
    seeds = tuple(int(s) for s in seeds)
    if len(set(seeds)) != len(seeds):
      problems.append(f'seeds={seeds}: repeated seeds')
  except (TypeError, ValueError):
    problems.append(f'seeds={seeds!r}: must be a tuple of integers')
    seeds = ()
  num_trials = raw.get('num_trials', 0) or 0
  if sampler in ('tpe', 'random') and not (
      isinstance(num_trials, int) and num_trials > 0):
    problems.append(f'num_trials={num_trials!r}: sampler {sampler!r} needs '
                    'the number of trials to complete (> 0)')

  # Base config and config paths.
  base = raw.get('base')
  base_path, config, known = None, None, []
  if not isinstance(base, str) or not base:
    problems.append("base: give the base config, e.g. 'configs/demo.py'")
  else:
    base_path, message = _resolve_base(base, source)
    if base_path is None:
      problems.append(message)
    else:
      try:
        config = config_checks.load_config(base_path)
        known = _leaf_paths(config)
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f'base config {base!r} failed to load: '
                        f'{type(e).__name__}: {e}')

  def check_path(path: str, what: str) -> type | None:
    if not isinstance(path, str):
      problems.append(f'{what}: keys must be dotted config paths, not '
                      f'{path!r}')
      return None
    if config is None:
      return None
    try:
      return field_type(config, path)
    except KeyError:
      problems.append(f'{what}: {path!r} is not a field of {base}.'
                      + _suggest(path, known))
      return None

  overrides = {}
  raw_overrides = raw.get('overrides', {}) or {}
  if not isinstance(raw_overrides, Mapping):
    problems.append('overrides must be a dict of dotted path -> value')
    raw_overrides = {}
  for path, value in raw_overrides.items():
    kind = check_path(path, 'overrides')
    if kind is not None:
      try:
        overrides[path] = coerce(value, kind, f'overrides[{path!r}]')
      except SweepError as e:
        problems.append(str(e))
  if SEED in overrides and seeds:
    problems.append("overrides sets 'seed', which `seeds` sets per run: "
                    'give seeds=(...) instead (or seeds=() to keep it)')

  space = {}
  raw_space = raw.get('space', {}) or {}
  if not isinstance(raw_space, Mapping):
    problems.append('space must be a dict of dotted path -> values')
    raw_space = {}
  for path, spec in raw_space.items():
    what = f'space[{path!r}]'
    kind = check_path(path, 'space')
    if path in raw_overrides:
      problems.append(f'{path!r} is both in space and in overrides')
    if path == SEED and seeds:
      problems.append("space has 'seed' and seeds is set: use one (seeds "
                      'adds the seed axis itself)')
    if isinstance(spec, Mapping):
      bad = [k for k in spec if k not in _RANGE_KEYS]
      if bad:
        problems.append(f'{what}: unknown range keys {bad} (known: '
                        f'{_RANGE_KEYS})')
      if sampler == 'grid':
        problems.append(f'{what}: a range needs sampler tpe or random; the '
                        'grid needs a list of values')
      low, high = spec.get('low'), spec.get('high')
      if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                 for v in (low, high)) or not low < high:
        problems.append(f'{what}: need numbers low < high, got low={low!r}, '
                        f'high={high!r}')
      elif spec.get('log') and low <= 0:
        problems.append(f'{what}: log=True needs low > 0')
      if kind is int and not spec.get('int'):
        problems.append(f'{what}: {path} is an integer field: add int=True')
      if kind not in (None, int, float):
        problems.append(f'{what}: a range needs a numeric field, {path} is '
                        f'{kind.__name__}')
      space[path] = {k: spec[k] for k in spec if k in _RANGE_KEYS}
    elif isinstance(spec, (list, tuple)) and len(spec):
      values = []
      for value in spec:
        try:
          values.append(value if kind is None else coerce(
              value, kind, f'{what} value'))
        except SweepError as e:
          problems.append(str(e))
      if len(set(map(repr, values))) != len(values):
        problems.append(f'{what}: repeated values {values}')
      space[path] = values
    else:
      problems.append(f'{what}: give a non-empty list of values or '
                      'dict(low=, high=, log=, int=)')
  if not space and sampler != 'grid':
    problems.append(f'sampler {sampler!r} needs a space to search')
  if not space and not seeds:
    problems.append('nothing to sweep: space is empty and seeds=()')

  # Stages, objectives, metrics.
  run_stages = raw.get('stages', (stages.TRAIN,))
  if isinstance(run_stages, str):
    run_stages = (run_stages,)
  run_stages = tuple(run_stages or (stages.TRAIN,))
  named = list(raw.get('metrics', ()) or ()) + [
      o[0] for o in raw.get('objectives', ()) or ()
      if isinstance(o, (list, tuple)) and o]
  sources = {m.partition(':')[0] for m in named if isinstance(m, str)}
  known_stages = None
  if (any(s != stages.TRAIN for s in run_stages)
      or sources - {TRAIN_SOURCE, CONFIG_SOURCE}):
    # Importing the stage modules imports JAX but starts no backend.
    known_stages = set(_stage_registry())
  ran = {stages.TRAIN}
  try:
    if known_stages is not None:
      ran = stages.with_requirements(run_stages)
  except KeyError as e:
    bad = [s for s in run_stages
           if s != stages.TRAIN and s not in (known_stages or ())]
    for stage in bad:
      close = difflib.get_close_matches(stage, sorted(known_stages), n=2)
      hint = f' Did you mean: {", ".join(close)}?' if close else ''
      problems.append(f'stages: unknown stage {stage!r} (known: train, '
                      f'{", ".join(sorted(known_stages))}).{hint}')
    if not bad:
      problems.append(f'stages: {e}')

  objectives = raw.get('objectives')
  parsed = []
  if (not isinstance(objectives, (list, tuple)) or not objectives
      or isinstance(objectives[0], str)):
    problems.append(
        f'objectives={objectives!r}: give a tuple of (metric, direction) '
        f"pairs, e.g. objectives={_EXAMPLE_OBJECTIVES}")
    objectives = ()
  for item in objectives:
    if not (isinstance(item, (list, tuple)) and len(item) == 2):
      problems.append(f'objective {item!r}: must be a (metric, '
                      "'maximize'|'minimize') pair")
      continue
    metric, direction = item
    if direction not in DIRECTIONS:
      close = [d for d in DIRECTIONS if d.startswith(str(direction)[:3])]
      hint = f' Did you mean: {close[0]}?' if close else ''
      problems.append(f'objective {metric!r}: direction {direction!r} must '
                      f'be one of {DIRECTIONS}.{hint}')
    problems += _check_metric(metric, 'objective', known_stages, ran,
                              config if config is not None else {})
    parsed.append((metric, direction))
  if len({m for m, _ in parsed}) != len(parsed):
    problems.append('objectives: a metric appears twice')
  metrics = raw.get('metrics', ()) or ()
  if isinstance(metrics, str):
    metrics = (metrics,)
  for metric in metrics:
    problems += _check_metric(metric, 'metric', known_stages, ran,
                              config if config is not None else {})

  if problems:
    raise SweepError(f'Invalid sweep file {source}:\n  - '
                     + '\n  - '.join(problems))
  try:
    base_config = _apply(config, overrides)
  except TypeError as e:
    raise SweepError(f'Invalid sweep file {source}: {e}') from e
  return Sweep(name=name, base=base, base_path=base_path,
               overrides=overrides, sampler=sampler,
               sampler_seed=int(sampler_seed), space=space,
               num_trials=int(num_trials), seeds=seeds,
               objectives=tuple(parsed), metrics=tuple(metrics),
               stages=run_stages, path=source, base_config=base_config)


_STAGES_LOADED = False


def _stage_registry() -> dict[str, Any]:
  global _STAGES_LOADED
  if not _STAGES_LOADED:
    stages.discover()
    _STAGES_LOADED = True
  return stages.STAGES


# ------------------------------------------- values, names and commands ---


def encode(value: Any) -> Any:
  """A value as Optuna stores it: tuples become their repr (a string)."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return value


def decode(sweep: Sweep, path: str, value: Any) -> Any:
  """An Optuna param value back as the config field's value (`coerce`)."""
  if path == SEED and path not in sweep.space:
    return int(value)
  kind = field_type(sweep.base_config, path)
  if kind in (tuple, list) and isinstance(value, str):
    value = ast.literal_eval(value)
  return coerce(value, kind, path)


def decode_params(sweep: Sweep, params: Mapping[str, Any]) -> dict[str, Any]:
  """Optuna params (`trial.params`) -> dotted path -> config value."""
  return {path: decode(sweep, path, value) for path, value in params.items()}


def grid_space(sweep: Sweep) -> dict[str, list[Any]]:
  """GridSampler's search space: encoded values, plus the seed axis."""
  space = {path: [encode(v) for v in values]
           for path, values in sweep.space.items()}
  if sweep.seeds:
    space[SEED] = list(sweep.seeds)
  return space


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
  """Every grid point as encoded Optuna params (seed included)."""
  space = grid_space(sweep)
  names = list(space)
  return [dict(zip(names, combo))
          for combo in itertools.product(*(space[n] for n in names))]


def distributions(
    sweep: Sweep) -> dict[str, optuna.distributions.BaseDistribution]:
  """The Optuna distribution of every param (`study.ask(...)`).

  Lists become `CategoricalDistribution`s of encoded values (tuples as
  strings); dict(low, high, log, int, step) ranges become
  `FloatDistribution` or `IntDistribution`. A grid adds a categorical
  'seed'.
  """
  out = {}
  for path, spec in sweep.space.items():
    if isinstance(spec, Mapping):
      if spec.get('int'):
        out[path] = optuna.distributions.IntDistribution(
            int(spec['low']), int(spec['high']), log=bool(spec.get('log')),
            step=int(spec.get('step') or 1))
      else:
        out[path] = optuna.distributions.FloatDistribution(
            float(spec['low']), float(spec['high']),
            log=bool(spec.get('log')), step=spec.get('step'))
    else:
      out[path] = optuna.distributions.CategoricalDistribution(
          [encode(v) for v in spec])
  if sweep.is_grid and sweep.seeds:
    out[SEED] = optuna.distributions.CategoricalDistribution(
        list(sweep.seeds))
  return out


def display(value: Any) -> str:
  """A short text form of a value: 8, 0.05, true, beat+strip."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, (tuple, list)):
    return '+'.join(display(v) for v in value) or 'none'
  if value is None:
    return 'none'
  return str(value)


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def _ordered(params: Mapping[str, Any]) -> list[str]:
  """Param paths sorted, the seed last."""
  return sorted(params, key=lambda p: (p == SEED, p))


def short_names(paths: Sequence[str]) -> dict[str, str]:
  """Dotted path -> its last part, or the whole path where that repeats."""
  last = collections.Counter(p.rpartition('.')[2] for p in paths)
  return {p: p.rpartition('.')[2] if last[p.rpartition('.')[2]] == 1
          else p for p in paths}


def point_key(params: Mapping[str, Any], max_readable: int = 80) -> str:
  """A run directory name: readable values and a hash of the exact ones.

  Args:
    params: dotted path -> config value (coerced, as `decode` gives them).
    max_readable: the readable part is cut to this many characters.

  Returns:
    e.g. 'beta=8,fixed_sd=0.05,seed=0-3f2a9c1e': the same params always
    give the same name, so a rerun of a point finds its directory.
  """
  short = short_names(list(params))
  readable = ','.join(f'{short[p]}={display(params[p])}'
                      for p in _ordered(params))
  readable = re.sub(r'[^A-Za-z0-9._+=,-]', '_', readable)[:max_readable]
  digest = hashlib.sha256(json.dumps(
      _jsonable({p: params[p] for p in params}), sort_keys=True).encode()
                          ).hexdigest()[:8]
  return f'{readable or "base"}-{digest}'


def params_text(params: Mapping[str, Any]) -> str:
  """'loss.beta=8, seed=0' for console lines."""
  return ', '.join(f'{p}={display(params[p])}' for p in _ordered(params))


def format_override(path: str, value: Any, kind: type) -> str:
  """One `--config.<path>=<value>` argument, as config_flags parses it.

  The argument goes to the process as is (no shell): floats and ints as
  their Python literals (an int field gets an int), bools as true/false,
  strings raw (config_flags takes a string field's text verbatim), tuples
  as their Python literal, which config_flags reads with
  `ast.literal_eval` (`--config.blackbox.inputs=('strip',)`).

  Args:
    path: dotted config path.
    value: the value (`coerce`d to `kind`).
    kind: the field's type.

  Raises:
    SweepError: for a value config_flags cannot parse for this field.
  """
  value = coerce(value, kind, path)
  if isinstance(value, bool):
    text = 'true' if value else 'false'
  elif isinstance(value, (int, float)):
    text = repr(value)
  elif isinstance(value, tuple):
    text = repr(value)
  elif isinstance(value, str):
    text = value
  else:
    raise SweepError(f'--config.{path}: cannot pass {value!r} on the '
                     'command line')
  return f'--config.{path}={text}'


@dataclasses.dataclass(frozen=True)
class Run:
  """One (point, seed) run of a trial.

  Attributes:
    params: dotted path -> value of the point (the seed not included).
    seed: config.seed, or None to keep the base config's.
    run_dir: its directory (absolute).
  """

  params: dict[str, Any]
  seed: int | None
  run_dir: str

  @property
  def values(self) -> dict[str, Any]:
    """Every config value the run sets: params and the seed."""
    return dict(self.params, **({} if self.seed is None
                                else {SEED: self.seed}))


def runs_of(sweep: Sweep, sweep_dir: str, params: Mapping[str, Any]
            ) -> list[Run]:
  """The runs of a trial with these decoded params.

  Grid: one run, `<sweep_dir>/trials/<key of params and seed>/`.
  tpe/random: one run per seed, `<sweep_dir>/trials/<key>/seed=<s>/`.
  """
  root = os.path.abspath(os.path.join(sweep_dir, TRIALS_DIR))
  params = dict(params)
  if sweep.is_grid:
    seed = params.pop(SEED, None) if sweep.seeds else None
    full = dict(params, **({} if seed is None else {SEED: seed}))
    return [Run(params, seed, os.path.join(root, point_key(full)))]
  folder = os.path.join(root, point_key(params))
  if not sweep.seeds:
    return [Run(params, None, folder)]
  return [Run(params, s, os.path.join(folder, f'seed={s}'))
          for s in sweep.seeds]


def run_config(sweep: Sweep, run: Run) -> ml_collections.ConfigDict:
  """The run's config: base, overrides, params and seed."""
  return _apply(sweep.base_config, run.values)


def trial_args(sweep: Sweep, run: Run) -> list[str]:
  """main.py arguments of a run besides --config/--workdir/--mode."""
  values = dict(sweep.overrides)
  values.update(run.values)
  args = [f'--stages={",".join(sweep.stages)}']
  for path in _ordered(values):
    args.append(format_override(path, values[path],
                                field_type(sweep.base_config, path)))
  return args


def trial_command(sweep: Sweep, run: Run,
                  launcher: Sequence[str] = ()) -> list[str]:
  """The whole command of a run (an argument list, no shell)."""
  return [*launcher, sys.executable, '-m', 'factorecg_jax.main',
          f'--config={sweep.base_path}', f'--workdir={run.run_dir}',
          '--mode=all', *trial_args(sweep, run)]


def resolve_metric(name: str, config: ml_collections.ConfigDict) -> str:
  """A metric name with its `{path}` / `{path[i]}` placeholders filled."""

  def fill(match):
    node, key = _field(config, match.group(1))
    value = node[key]
    if match.group(2) is not None:
      value = value[int(match.group(2))]
    return display(value)

  return _TEMPLATE_RE.sub(fill, name)


def _walk(tree: Any, path: str) -> Any:
  for part in path.split('.'):
    if not isinstance(tree, Mapping) or part not in tree:
      return None
    tree = tree[part]
  return tree


def collect(sweep: Sweep, run: Run
            ) -> tuple[dict[str, float | None], dict[str, str]]:
  """Reads every metric of a finished run from its directory.

  Returns:
    (metric name -> value or None, metric name -> why it is missing, naming
    what its source has).
  """
  from factorecg_jax.training import train  # pylint: disable=g-import-not-at-top
  config = run_config(sweep, run)
  out, problems, cache = {}, {}, {}
  for name in sweep.metric_names:
    source, key = _METRIC_RE.match(name).groups()
    key = resolve_metric(key, config)
    try:
      if source not in cache:
        if source == TRAIN_SOURCE:
          cache[source] = train.final_metrics(run.run_dir)
        elif source == CONFIG_SOURCE:
          cache[source] = stages.read_run_config(run.run_dir) or {}
        else:
          _stage_registry()
          cache[source] = (stages.read_summary(run.run_dir, source)
                           or {}).get('scalars', {})
    except (OSError, ValueError) as e:
      cache[source] = {}
      problems[name] = f'{name}: cannot read {source!r} outputs ({e})'
      out[name] = None
      continue
    table = cache[source]
    value = (_walk(table, key) if source == CONFIG_SOURCE
             else table.get(key))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      out[name] = float(value)
    else:
      out[name] = None
      have = sorted(table) if source != CONFIG_SOURCE else []
      close = difflib.get_close_matches(key, have, n=3, cutoff=0.4)
      hint = (f'; close: {", ".join(close)}' if close else
              (f'; it has: {", ".join(have[:12])}' if have else ''))
      problems[name] = f'{name}: {source} has no number {key!r}{hint}'
  return out, problems


# ----------------------------------------------------- storage and study ---


def make_storage(storage: str | None, sweep_dir: str):
  """The Optuna storage of a sweep.

  Args:
    storage: '' or None for `<sweep_dir>/journal.log`; a database URL
      ('sqlite:///sweeps.db', 'postgresql://user@host/db'); otherwise the
      path of a journal file.
    sweep_dir: the sweep's folder.

  Returns:
    A `JournalStorage` on a `JournalFileBackend` with a
    `JournalFileSymlinkLock` (an atomic symlink: safe on NFS of any
    version, unlike fcntl locks on some NFS servers), or an `RDBStorage`.
  """
  if storage and '://' in storage:
    return optuna.storages.RDBStorage(
        storage, engine_kwargs={'pool_pre_ping': True}
        if not storage.startswith('sqlite') else None)
  path = storage or os.path.join(sweep_dir, JOURNAL_FILE)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  journal = optuna.storages.journal
  return optuna.storages.JournalStorage(journal.JournalFileBackend(
      path, lock_obj=journal.JournalFileSymlinkLock(path)))


def storage_label(storage: str | None, sweep_dir: str) -> str:
  """A printable name of the storage (database passwords hidden)."""
  if storage and '://' in storage:
    return re.sub(r'://([^:/@]+):[^@]*@', r'://\1:***@', storage)
  return storage or os.path.join(sweep_dir, JOURNAL_FILE)


def make_sampler(sweep: Sweep, worker_index: int = 0
                 ) -> optuna.samplers.BaseSampler:
  """GridSampler (same seed in every worker), TPE or random.

  TPE and random seeds are offset by the worker index so that concurrent
  workers do not propose the same points; TPE's constant liar (the Optuna
  5 default) counts running trials as poor so they are not proposed again.
  """
  if sweep.is_grid:
    return optuna.samplers.GridSampler(grid_space(sweep),
                                       seed=sweep.sampler_seed)
  seed = sweep.sampler_seed + int(worker_index)
  if sweep.sampler == 'tpe':
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      return optuna.samplers.TPESampler(seed=seed)
  return optuna.samplers.RandomSampler(seed=seed)


def open_study(sweep: Sweep, sweep_dir: str, storage: str | None = None, *,
               worker_index: int = 0) -> optuna.Study:
  """Creates or loads the sweep's study (name = sweep name).

  Raises:
    SweepError: if the stored study was made from a different base,
      overrides, objectives or stages (its results would not compare).
  """
  try:
    study = optuna.create_study(
        study_name=sweep.name, storage=make_storage(storage, sweep_dir),
        sampler=make_sampler(sweep, worker_index),
        directions=sweep.directions, load_if_exists=True)
  except ValueError as e:
    raise SweepError(
        f'Study {sweep.name!r} in {storage_label(storage, sweep_dir)} does '
        f'not match the sweep file ({e}). Use another name or storage.'
    ) from e
  spec = sweep.identity()
  stored = study.user_attrs.get('sweep')
  if stored is None:
    study.set_user_attr('sweep', spec)
  elif stored != spec:
    diff = [f'{k}: stored {stored.get(k)!r}, file {spec.get(k)!r}'
            for k in spec if stored.get(k) != spec.get(k)]
    raise SweepError(
        f'Study {sweep.name!r} in {storage_label(storage, sweep_dir)} was '
        'made by a different sweep definition:\n  ' + '\n  '.join(diff)
        + '\nIts results would not compare: give the sweep another name, '
        'or use another --sweep_dir/--storage.')
  return study


# ------------------------------------------------------ locks and state ---


def try_lock(run_dir: str) -> int | None:
  """Takes `<run_dir>/.sweep.lock` (flock, non-blocking); fd or None.

  The lock is held as long as the returned descriptor is open in this or a
  child process; the kernel frees it when they exit, however they die.
  (On Lustre, flock needs the 'flock' mount option; NFS clients since Linux
  2.6.12 map flock to NFS byte-range locks.)
  """
  os.makedirs(run_dir, exist_ok=True)
  fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT,
               0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      return None
    raise
  owner = json.dumps(dict(host=platform.node(), pid=os.getpid(),
                          time=_now()))
  os.ftruncate(fd, 0)
  os.write(fd, owner.encode())
  return fd


def release(fd: int | None) -> None:
  if fd is not None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def lock_is_free(run_dir: str) -> bool:
  """Whether no live process holds the run directory's lock."""
  path = os.path.join(run_dir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR)
  except FileNotFoundError:
    return True
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      return False
    raise
  finally:
    os.close(fd)  # closing drops the probe's lock
  return True


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def read_state(run_dir: str) -> dict[str, Any]:
  """`<run_dir>/sweep_trial.json` (an empty record if absent)."""
  path = os.path.join(run_dir, TRIAL_FILE)
  if not os.path.exists(path):
    return dict(attempts=[], result=None)
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _write_json(path: str, record: Any) -> None:
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2, default=str)
  os.replace(tmp, path)


def write_state(run_dir: str, state: Mapping[str, Any]) -> None:
  _write_json(os.path.join(run_dir, TRIAL_FILE), state)


def _die_with_parent() -> None:
  """In the child: SIGTERM when the worker dies (Linux), even by SIGKILL."""
  if sys.platform.startswith('linux'):
    try:
      import ctypes  # pylint: disable=g-import-not-at-top
      pr_set_pdeathsig = 1
      ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig,
                                              signal.SIGTERM)
    except (OSError, AttributeError):
      pass


def _run_logged(cmd: Sequence[str], log_path: str, env: Mapping[str, str],
                pass_fds: Sequence[int], header: str,
                echo: Callable[[str], None] | None) -> tuple[int, list[str]]:
  """Runs `cmd`, appending its output to `log_path` (and echoing it).

  Returns:
    (exit status, the last 40 lines of output).
  """
  tail: collections.deque[str] = collections.deque(maxlen=40)
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(header)
    log.flush()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(env), pass_fds=tuple(pass_fds), text=True, bufsize=1,
        errors='replace', preexec_fn=_die_with_parent)
    try:
      for line in proc.stdout:
        log.write(line)
        log.flush()
        tail.append(line.rstrip('\n'))
        if echo is not None:
          echo(line.rstrip('\n'))
      return proc.wait(), list(tail)
    except BaseException:
      proc.terminate()
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      raise


def run_one(sweep: Sweep, run: Run, lock_fd: int, *, trial_number: int,
            worker: str, launcher: Sequence[str] = (),
            env: Mapping[str, str] | None = None,
            echo: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes, or reuses) one run whose lock the caller holds.

  A result already in sweep_trial.json for the same arguments and metrics
  is returned as is; otherwise main.py runs in the run directory (training
  resumes from its last checkpoint, finished stages are skipped) and its
  attempt is recorded.

  Returns:
    The result: {'values': metric -> value, 'seconds', 'finished',
    'args', 'cached': bool}.

  Raises:
    RunFailed: if main.py fails or an objective is missing.
  """
  state = read_state(run.run_dir)
  # We hold the lock, so an attempt still marked running lost its process.
  for attempt in state.get('attempts', []):
    if attempt.get('status') == 'running':
      attempt['status'] = 'died'
  args = trial_args(sweep, run)
  previous = state.get('result')
  if (previous and previous.get('args') == args and all(
      previous.get('values', {}).get(m) is not None
      for m in sweep.objective_names) and set(sweep.metric_names) <= set(
          previous.get('values', {}))):
    write_state(run.run_dir, state)
    return dict(previous, cached=True)
  command = trial_command(sweep, run, launcher)
  attempt = dict(attempt=len(state.get('attempts', [])) + 1,
                 trial=trial_number, worker=worker, host=platform.node(),
                 pid=os.getpid(), start=_now(), end=None, seconds=None,
                 status='running', returncode=None,
                 start_checkpoint=stages.latest_checkpoint_step(run.run_dir))
  state.update(sweep=sweep.name, params=_jsonable(run.params),
               seed=run.seed, args=args, command=command, result=None)
  state.setdefault('attempts', []).append(attempt)
  write_state(run.run_dir, state)
  env = dict(os.environ if env is None else env)
  if not launcher:
    for key in MULTIPROCESS_ENV:
      env.pop(key, None)
  header = (f'\n===== attempt {attempt["attempt"]} (trial {trial_number}, '
            f'{worker} on {attempt["host"]}) {attempt["start"]}\n$ '
            f'{shlex.join(command)}\n')
  start = time.perf_counter()
  status, problem = 'failed', ''
  try:
    rc, tail = _run_logged(command, os.path.join(run.run_dir, LOG_FILE), env,
                           (lock_fd,), header, echo)
    attempt['returncode'] = rc
    if rc in (-signal.SIGTERM, -signal.SIGINT):
      # scancel/preemption signal the whole job: the worker hands it back.
      raise KeyboardInterrupt(f'trial process got signal {-rc}')
    if rc != 0:
      problem = (f'main.py exited with status {rc}; last lines:\n    '
                 + '\n    '.join(tail[-15:]))
    else:
      values, missing = collect(sweep, run)
      lost = [why for name, why in missing.items()
              if name in sweep.objective_names]
      if lost:
        problem = 'objectives missing: ' + '; '.join(lost)
      else:
        status = 'finished'
        state['result'] = dict(values=values, seconds=round(
            time.perf_counter() - start, 2), finished=_now(), args=args,
                               warnings=list(missing.values()))
  except KeyboardInterrupt:
    status = 'interrupted'
    raise
  finally:
    attempt.update(status=status, end=_now(),
                   seconds=round(time.perf_counter() - start, 2),
                   end_checkpoint=stages.latest_checkpoint_step(run.run_dir))
    if problem:
      attempt['error'] = problem[:4000]
    write_state(run.run_dir, state)
  if status != 'finished':
    raise RunFailed(f'{problem}\n  log: {os.path.join(run.run_dir, LOG_FILE)}')
  return dict(state['result'], cached=False)


# ---------------------------------------------------------------- worker ---


def _point_id(sweep: Sweep, params: Mapping[str, Any]) -> str:
  return json.dumps(_jsonable(decode_params(sweep, params)), sort_keys=True)


def _trial_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
  """Params of a trial, also of a WAITING one (its enqueued params)."""
  return dict(trial.system_attrs.get('fixed_params') or trial.params)


def _complete_params(sweep: Sweep, params: Mapping[str, Any]) -> bool:
  names = set(distributions(sweep))
  return set(params) == names


def _successors(trials) -> set[int]:
  return {t.user_attrs.get('resumes_trial') for t in trials
          if t.user_attrs.get('resumes_trial') is not None}


def _tell(study: optuna.Study, trial: optuna.Trial | int,
          values: Sequence[float] | None = None,
          state: optuna.trial.TrialState | None = None) -> None:
  """`study.tell`, minus GridSampler's `study.stop()` outside `optimize`.

  After the last grid point GridSampler's `after_trial` calls `study.stop()`,
  which raises RuntimeError under ask-and-tell once the trial is stored
  (optuna issues 4121 and 5141; GridSampler's docstring notes it).
  """
  try:
    study.tell(trial, values, state=state)
  except RuntimeError as e:
    if 'Study.stop' not in str(e):
      raise


def reap_stale(study: optuna.Study, sweep: Sweep, sweep_dir: str,
               say: Callable[[str], None] = print) -> list[int]:
  """Fails RUNNING trials whose worker died; re-enqueues their params.

  A trial is stale when it took its run-dir locks (user attr
  'sweep_locked') and every lock is now free (no process holds it), or when
  it never took them and started over `UNLOCKED_STALE_AFTER_S` ago. The
  re-enqueued trial (user attr 'resumes_trial') resumes the point from its
  run directories' checkpoints.

  Returns:
    The numbers of the trials failed.
  """
  failed = []
  now = datetime.datetime.now()
  for t in study.get_trials(deepcopy=False,
                            states=(optuna.trial.TrialState.RUNNING,)):
    params = _trial_params(t)
    if not t.user_attrs.get('sweep_locked'):
      age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0
      if age < UNLOCKED_STALE_AFTER_S:
        continue
    elif _complete_params(sweep, params):
      runs = runs_of(sweep, sweep_dir, decode_params(sweep, params))
      if not all(lock_is_free(r.run_dir) for r in runs):
        continue
    try:
      _tell(study, t.number, state=optuna.trial.TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError,
            RuntimeError):
      continue  # another worker got there first
    failed.append(t.number)
    if not _complete_params(sweep, params):
      say(f'trial #{t.number} was RUNNING without params for '
          f'{UNLOCKED_STALE_AFTER_S} s: marked FAIL')
      continue
    study.enqueue_trial(params, user_attrs=dict(resumes_trial=t.number,
                                                reason='stale'))
    runs = runs_of(sweep, sweep_dir, decode_params(sweep, params))
    steps = [stages.latest_checkpoint_step(r.run_dir) for r in runs]
    resume = ('it resumes from checkpoint step '
              + ', '.join(str(s) for s in steps) if any(steps)
              else 'no checkpoint yet: it starts afresh')
    say(f'trial #{t.number} ({params_text(decode_params(sweep, params))}) '
        'was RUNNING but no process holds its run directory: marked FAIL '
        f'and re-enqueued ({resume})')
  return failed


@dataclasses.dataclass
class PointStatus:
  """Where a grid point stands in the study.

  Attributes:
    state: 'complete', 'running', 'waiting', 'failed' or 'todo'.
    grid_visited: GridSampler will not hand it out again (a finished or
      running trial of this grid holds its grid id).
    failures: failed trials of the point.
    last_failed: the latest failed trial without a successor, if any.
  """

  state: str = 'todo'
  grid_visited: bool = False
  failures: int = 0
  last_failed: int | None = None


_RANK = dict(complete=4, running=3, waiting=2, failed=1, todo=0)


def point_status(sweep: Sweep, trials) -> dict[str, PointStatus]:
  """Point id -> `PointStatus`, for every grid point."""
  out = {_point_id(sweep, p): PointStatus() for p in grid_points(sweep)}
  successors = _successors(trials)
  space = grid_space(sweep)
  state_names = {optuna.trial.TrialState.COMPLETE: 'complete',
                 optuna.trial.TrialState.RUNNING: 'running',
                 optuna.trial.TrialState.WAITING: 'waiting'}
  for t in trials:
    params = _trial_params(t)
    if not _complete_params(sweep, params):
      continue
    status = out.get(_point_id(sweep, params))
    if status is None:
      continue  # a point of an earlier version of the grid
    if 'grid_id' in t.system_attrs and t.system_attrs.get(
        'search_space') == space and t.state != optuna.trial.TrialState.WAITING:
      status.grid_visited = True
    name = state_names.get(t.state)
    if t.state == optuna.trial.TrialState.FAIL:
      status.failures += 1
      if t.number not in successors:
        name = 'failed'
        status.last_failed = max(t.number, status.last_failed or -1)
    if name and _RANK[name] > _RANK[status.state]:
      status.state = name
  return out


def _mean(values: Sequence[float | None]) -> float | None:
  good = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.mean(good)) if good else None


class Worker:
  """Runs trials of one study until nothing is left for it.

  Attributes:
    sweep, sweep_dir, study: what it works on.
    launcher: prefix of every trial command (e.g. srun ...).
    env: environment of the trial processes (default: this one's).
    name: how its console lines and attempts name it.
    stream_output: echo the trials' output besides logging it.
  """

  def __init__(self, sweep: Sweep, sweep_dir: str, study: optuna.Study, *,
               launcher: Sequence[str] = (),
               env: Mapping[str, str] | None = None, name: str = 'w0',
               stream_output: bool = False,
               say: Callable[[str], None] | None = None):
    self.sweep, self.sweep_dir, self.study = sweep, sweep_dir, study
    self.launcher = tuple(launcher)
    self.env = env
    self.name = name
    self.stream_output = stream_output
    self._say = say
    self.ran: list[int] = []  # trials this worker ran (or reused)
    self.failed: list[int] = []
    self.pruned: list[int] = []

  def say(self, message: str) -> None:
    if self._say is not None:
      self._say(message)
      return
    stamp = time.strftime('%H:%M:%S')
    print(f'[sweep {self.sweep.name} {self.name} {stamp}] {message}',
          flush=True)

  # -- one trial --------------------------------------------------------

  def run_trial(self, trial: optuna.Trial, position: str) -> None:
    """Runs an asked trial to a tell (COMPLETE, PRUNED or FAIL)."""
    sweep = self.sweep
    params = decode_params(sweep, trial.params)
    runs = runs_of(sweep, self.sweep_dir, params)
    label = f'trial {position} (#{trial.number}) {params_text(params)}'
    locks = []
    for run in runs:
      fd = try_lock(run.run_dir)
      if fd is None:
        for held in locks:
          release(held)
        trial.set_user_attr('duplicate_of', os.path.relpath(
            run.run_dir, self.sweep_dir))
        self._finish(trial, state=optuna.trial.TrialState.PRUNED)
        self.pruned.append(trial.number)
        self.say(f'{label}: already running elsewhere '
                 f'({os.path.relpath(run.run_dir, self.sweep_dir)} is '
                 'locked), pruned without running')
        return
      locks.append(fd)
    trial.set_user_attr('sweep_locked', True)
    trial.set_user_attr('run_dirs', [os.path.relpath(r.run_dir,
                                                     self.sweep_dir)
                                     for r in runs])
    start = time.perf_counter()
    results = []
    # The locks are held until the trial is told: a free lock on a RUNNING
    # trial is what tells other workers that its worker died.
    try:
      for i, (run, fd) in enumerate(zip(runs, locks)):
        where = os.path.relpath(run.run_dir, self.sweep_dir)
        step = stages.latest_checkpoint_step(run.run_dir)
        what = (f' seed {run.seed} ({i + 1}/{len(runs)})'
                if len(runs) > 1 else '')
        self.say(f'{label}{what}: started in {where}'
                 + (f' (resuming from step {step})' if step else ''))
        echo = None
        if self.stream_output:
          echo = lambda line: print(f'  [{self.name} #{trial.number}] '
                                    f'{line}', flush=True)
        results.append(run_one(
            sweep, run, fd, trial_number=trial.number, worker=self.name,
            launcher=self.launcher, env=self.env, echo=echo))
      values = [_mean([r['values'].get(m) for r in results])
                for m in sweep.objective_names]
      self.ran.append(trial.number)
      if any(v is None for v in values):
        trial.set_user_attr('reason', 'no objective value')
        self._finish(trial, state=optuna.trial.TrialState.FAIL)
        self.failed.append(trial.number)
        self.say(f'{label}: FAILED: an objective is NaN or missing')
        return
      told = self._finish(trial, values=values)
    except RunFailed as e:
      trial.set_user_attr('reason', 'error')
      trial.set_user_attr('error', str(e)[:2000])
      self._finish(trial, state=optuna.trial.TrialState.FAIL)
      self.failed.append(trial.number)
      self.say(f'{label}: FAILED after '
               f'{console.format_duration(time.perf_counter() - start)}: {e}')
      return
    except KeyboardInterrupt:
      # Interrupted (Ctrl-C, SIGTERM): hand the point to the next worker,
      # which resumes it from its checkpoint.
      try:
        self._finish(trial, state=optuna.trial.TrialState.FAIL)
        self.study.enqueue_trial(dict(trial.params), user_attrs=dict(
            resumes_trial=trial.number, reason='interrupted'))
      finally:
        self.say(f'{label}: interrupted; marked FAIL and re-enqueued')
      raise
    except Exception as e:  # a bug: fail the trial visibly, then stop
      trial.set_user_attr('reason', 'error')
      trial.set_user_attr('error', f'{type(e).__name__}: {e}'[:2000])
      self._finish(trial, state=optuna.trial.TrialState.FAIL)
      raise
    finally:
      for fd in locks:
        release(fd)
    done = len(self.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    shown = ', '.join(f'{m} {v:.4g}' for m, v in zip(
        sweep.objective_names, values))
    how = ('finished earlier, result reused'
           if all(r.get('cached') for r in results) else
           f'done in {console.format_duration(time.perf_counter() - start)}')
    if not told:
      how += (' (the trial had been closed meanwhile; the result stays in '
              'its run directory and is reused)')
    self.say(f'{label}: {how}: {shown} [{done}/{sweep.total} complete]')

  def _finish(self, trial: optuna.Trial, values: Sequence[float] | None = None,
              state: optuna.trial.TrialState | None = None) -> bool:
    """Tells the trial; False if another process had already finished it."""
    try:
      _tell(self.study, trial, values, state=state)
      return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
      self.say(f'trial #{trial.number}: could not be told ({e})')
      return False

  # -- the loop ---------------------------------------------------------

  def _ask(self) -> optuna.Trial:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      return self.study.ask(distributions(self.sweep))

  def _prune_duplicate(self, trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr('duplicate_of', why)
    self._finish(trial, state=optuna.trial.TrialState.PRUNED)
    self.pruned.append(trial.number)

  def _retry_failed(self, status: Mapping[str, PointStatus],
                    trials) -> None:
    """At start: re-enqueues points whose last trial failed (a rerun after
    a fix), up to `MAX_AUTO_RETRIES` failures per point."""
    by_number = {t.number: t for t in trials}
    for s in status.values():
      if s.state != 'failed' or s.last_failed is None:
        continue
      t = by_number[s.last_failed]
      params = decode_params(self.sweep, _trial_params(t))
      if s.failures >= MAX_AUTO_RETRIES:
        self.say(f'{params_text(params)}: failed {s.failures} times, not '
                 'retried (see its sweep_trial.log)')
        continue
      self.study.enqueue_trial(_trial_params(t), user_attrs=dict(
          resumes_trial=t.number, reason='retry'))
      s.state = 'waiting'
      self.say(f'{params_text(params)}: trial #{t.number} failed; '
               're-enqueued')

  def run(self, *, retry_failed: bool = True,
          max_trials: int | None = None) -> int:
    """Runs trials until none is left for this worker.

    Args:
      retry_failed: re-enqueue failed points once, at start.
      max_trials: stop after this many trials (None: no limit).

    Returns:
      0, or 1 if a trial failed.
    """
    runner = self._run_grid if self.sweep.is_grid else self._run_search
    with _sigterm_raises_interrupt():
      runner(retry_failed, max_trials)
    return 1 if self.failed else 0

  def _run_grid(self, retry_failed: bool, max_trials: int | None) -> None:
    sweep, total = self.sweep, self.sweep.total
    first, asked = True, 0
    while max_trials is None or asked < max_trials:
      reap_stale(self.study, sweep, self.sweep_dir, self.say)
      trials = self.study.get_trials(deepcopy=False)
      status = point_status(sweep, trials)
      if first and retry_failed:
        self._retry_failed(status, trials)
      first = False
      counts = collections.Counter(s.state for s in status.values())
      if counts['complete'] == total:
        if not self.ran:
          self.say(f'All {total} trials are finished; nothing to run.')
        else:
          self.say(f'All {total} trials are finished.')
        return
      todo = [p for p, s in status.items() if s.state in ('todo', 'waiting')]
      if not todo:
        self.say(f'Nothing left for this worker: {counts["complete"]}/'
                 f'{total} complete, {counts["running"]} running elsewhere, '
                 f'{counts["failed"]} failed.')
        return
      waiting = any(s.state == 'waiting' for s in status.values())
      if not waiting and all(status[p].grid_visited for p in todo):
        # GridSampler hands out a point once; one whose trial was pruned or
        # failed without a successor is enqueued explicitly.
        point = random.choice(todo)
        params = next(p for p in grid_points(sweep)
                      if _point_id(sweep, p) == point)
        self.study.enqueue_trial(params, user_attrs=dict(reason='todo'))
      asked += 1
      if asked > 4 * total + 20:
        self.say('Stopping: trials keep landing on finished points.')
        return
      trial = self._ask()
      point = _point_id(sweep, trial.params)
      if status.get(point, PointStatus()).state == 'complete':
        self._prune_duplicate(trial, 'complete')
        continue
      position = (f'{counts["complete"] + counts["running"] + 1}/{total}')
      self.run_trial(trial, position)

  def _run_search(self, retry_failed: bool, max_trials: int | None) -> None:
    sweep, total = self.sweep, self.sweep.total
    first, asked = True, 0
    states = optuna.trial.TrialState
    while max_trials is None or asked < max_trials:
      reap_stale(self.study, sweep, self.sweep_dir, self.say)
      trials = self.study.get_trials(deepcopy=False)
      if first and retry_failed:
        successors = _successors(trials)
        for t in trials:
          if (t.state == states.FAIL and t.number not in successors
              and t.user_attrs.get('reason') == 'error'):
            self.study.enqueue_trial(_trial_params(t), user_attrs=dict(
                resumes_trial=t.number, reason='retry'))
            self.say(f'trial #{t.number} failed; re-enqueued')
        trials = self.study.get_trials(deepcopy=False)
      first = False
      counts = collections.Counter(t.state for t in trials)
      complete, running = counts[states.COMPLETE], counts[states.RUNNING]
      if complete >= total:
        self.say(f'All {total} trials are finished'
                 + ('; nothing to run.' if not self.ran else '.'))
        return
      if complete + running >= total and not counts[states.WAITING]:
        self.say(f'Nothing left for this worker: {complete}/{total} '
                 f'complete, {running} running elsewhere.')
        return
      asked += 1
      trial = self._ask()
      self.run_trial(trial, f'{complete + running + 1}/{total}')


@contextlib.contextmanager
def _sigterm_raises_interrupt():
  """SIGTERM (scancel, preemption) raises KeyboardInterrupt in the worker, so
  its running trial is handed back (re-enqueued) before it exits."""

  def handler(signum, frame):
    del signum, frame
    raise KeyboardInterrupt('SIGTERM')

  try:
    old = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread: leave signals alone
    old = None
  try:
    yield
  finally:
    if old is not None:
      signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------- aggregation ---


def trial_rows(sweep: Sweep, sweep_dir: str, study: optuna.Study
               ) -> list[dict[str, Any]]:
  """One row per finished (point, seed) run of the COMPLETE trials.

  Columns: trial, the params, seed, trial_dir (relative to the sweep dir),
  runtime_s (all attempts), attempts, then every objective and metric.
  """
  rows, seen = [], set()
  for t in study.get_trials(deepcopy=False,
                            states=(optuna.trial.TrialState.COMPLETE,)):
    if not _complete_params(sweep, t.params):
      continue
    for run in runs_of(sweep, sweep_dir, decode_params(sweep, t.params)):
      if run.run_dir in seen:
        continue
      state = read_state(run.run_dir)
      result = state.get('result') or {}
      if not result:
        continue
      seen.add(run.run_dir)
      attempts = state.get('attempts', [])
      row = dict(trial=t.number)
      row.update({p: _cell(run.params.get(p)) for p in sweep.param_names})
      if run.seed is not None or SEED not in row:
        row['seed'] = run.seed
      row['trial_dir'] = os.path.relpath(run.run_dir, sweep_dir)
      row['runtime_s'] = round(sum(a.get('seconds') or 0 for a in attempts),
                               1)
      row['attempts'] = len(attempts)
      row.update({m: result.get('values', {}).get(m)
                  for m in sweep.metric_names})
      rows.append(row)
  return sorted(rows, key=lambda r: (_sort_key(sweep, r),
                                     r.get('seed') or 0))


def _cell(value: Any) -> Any:
  return display(value) if isinstance(value, (tuple, list)) else value


def _sort_key(sweep: Sweep, row: Mapping[str, Any]) -> tuple:
  key = []
  for p in sweep.param_names:
    spec = sweep.space[p]
    value = row.get(p)
    if isinstance(spec, list):
      cells = [_cell(v) for v in spec]
      key.append((cells.index(value) if value in cells else len(cells), 0))
    else:
      key.append((0, value if isinstance(value, (int, float)) else 0))
  return tuple(key)


def point_rows(sweep: Sweep, rows: Sequence[Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
  """Mean and SD (ddof 1; None for one seed) over seeds, per point."""
  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(p) for p in sweep.param_names),
                      []).append(row)
  out = []
  for key, members in groups.items():
    point = dict(zip(sweep.param_names, key))
    point['n'] = len(members)
    point['seeds'] = ','.join(str(r['seed']) for r in members
                              if r.get('seed') is not None)
    for m in sweep.metric_names:
      values = [r.get(m) for r in members]
      values = [v for v in values if v is not None and math.isfinite(v)]
      point[f'{m} mean'] = float(np.mean(values)) if values else None
      point[f'{m} sd'] = (float(np.std(values, ddof=1)) if len(values) > 1
                          else None)
    out.append(point)
  return out


def _write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  columns = list(dict.fromkeys(k for r in rows for k in r))
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: '' if row.get(k) is None else row.get(k)
                       for k in columns})
  os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def _fmt(value: Any, sd: Any = None) -> str:
  if value is None:
    return ''
  text = f'{value:.4g}'
  return text if sd is None else f'{text} ± {sd:.2g}'


def _best(sweep: Sweep, points: Sequence[Mapping[str, Any]], metric: str,
          direction: str) -> Mapping[str, Any] | None:
  scored = [p for p in points if p.get(f'{metric} mean') is not None]
  if not scored:
    return None
  pick = max if direction == 'maximize' else min
  return pick(scored, key=lambda p: p[f'{metric} mean'])


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_')[:60]


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _effect_figures(sweep: Sweep, points: Sequence[Mapping[str, Any]],
                    out_dir: str) -> dict[str, str]:
  """Each objective vs each swept param: mean ± SD over seeds, one line
  per combination of the other params."""
  from matplotlib import figure as mfigure  # pylint: disable=g-import-not-at-top
  figures = {}
  for metric, direction in sweep.objectives:
    for param in sweep.param_names:
      others = [p for p in sweep.param_names if p != param]
      groups: dict[tuple, list[Mapping[str, Any]]] = {}
      for point in points:
        if point.get(f'{metric} mean') is not None:
          groups.setdefault(tuple(point.get(q) for q in others),
                            []).append(point)
      if not groups:
        continue
      xs_all = [p[param] for g in groups.values() for p in g]
      numeric = all(_is_number(x) for x in xs_all)
      categories = list(dict.fromkeys(
          _cell(v) for v in sweep.space[param])) if isinstance(
              sweep.space[param], list) else sorted(set(map(str, xs_all)))
      fig = mfigure.Figure(figsize=(6.4, 4.2), layout='constrained')
      ax = fig.add_subplot()
      lines = sweep.is_grid and len(groups) <= 12
      for key, members in (groups.items() if lines else
                           [((), [p for g in groups.values() for p in g])]):
        members = sorted(members, key=lambda p: (
            p[param] if numeric else categories.index(p[param])
            if p[param] in categories else 0))
        x = [p[param] if numeric else categories.index(p[param])
             for p in members]
        y = [p[f'{metric} mean'] for p in members]
        err = [p[f'{metric} sd'] or 0.0 for p in members]
        label = ', '.join(f'{short_names(others)[q]}={display(v)}'
                          for q, v in zip(others, key)) or None
        ax.errorbar(x, y, yerr=err, marker='o', capsize=3,
                    linestyle='-' if lines else 'none', label=label)
      if numeric:
        positive = [x for x in xs_all if x > 0]
        if len(positive) == len(xs_all) and max(xs_all) >= 8 * min(xs_all):
          ax.set_xscale('log')
          if sweep.is_grid:  # label the swept values themselves
            ticks = sorted(set(xs_all))
            ax.set_xticks(ticks, labels=[display(v) for v in ticks])
            ax.minorticks_off()
      else:
        ax.set_xticks(range(len(categories)),
                      labels=[display(c) for c in categories])
      arrow = '↑' if direction == 'maximize' else '↓'
      ax.set_xlabel(param)
      ax.set_ylabel(f'{metric} {arrow}')
      seeds = max(p['n'] for g in groups.values() for p in g)
      ax.set_title(f'{metric} vs {param} (mean ± SD over {seeds} seed'
                   f'{"s" if seeds > 1 else ""})', fontsize=10)
      if lines and len(groups) > 1:
        ax.legend(fontsize=8, title=', '.join(short_names(others).values()),
                  title_fontsize=8)
      ax.grid(alpha=0.3)
      name = f'{_slug(metric)}__vs__{_slug(param)}'
      path = os.path.join(out_dir, name + '.png')
      _save(fig, path)
      figures[name] = path
  return figures


def _dominates(a: Sequence[float], b: Sequence[float],
               directions: Sequence[str]) -> bool:
  sign = [1 if d == 'maximize' else -1 for d in directions]
  better = [s * x >= s * y for s, x, y in zip(sign, a, b)]
  strictly = [s * x > s * y for s, x, y in zip(sign, a, b)]
  return all(better) and any(strictly)


def _pair_figures(sweep: Sweep, points: Sequence[Mapping[str, Any]],
                  out_dir: str) -> dict[str, str]:
  """A scatter of every pair of objectives (point means ± SD), the
  non-dominated points (on the means) marked."""
  from matplotlib import figure as mfigure  # pylint: disable=g-import-not-at-top
  figures = {}
  for (a, da), (b, db) in itertools.combinations(sweep.objectives, 2):
    good = [p for p in points if p.get(f'{a} mean') is not None
            and p.get(f'{b} mean') is not None]
    if not good:
      continue
    xy = [(p[f'{a} mean'], p[f'{b} mean']) for p in good]
    front = [i for i, v in enumerate(xy) if not any(
        _dominates(w, v, (da, db)) for j, w in enumerate(xy) if j != i)]
    fig = mfigure.Figure(figsize=(6.4, 4.8), layout='constrained')
    ax = fig.add_subplot()
    ax.errorbar([v[0] for v in xy], [v[1] for v in xy],
                xerr=[p[f'{a} sd'] or 0.0 for p in good],
                yerr=[p[f'{b} sd'] or 0.0 for p in good], fmt='o',
                capsize=3, alpha=0.7, label='points (mean ± SD)')
    ordered = sorted(front, key=lambda i: xy[i][0])
    ax.plot([xy[i][0] for i in ordered], [xy[i][1] for i in ordered], 's--',
            color='tab:red', label='non-dominated (means)')
    if len(good) <= 16:
      short = short_names(sweep.param_names)
      for p, v in zip(good, xy):
        ax.annotate(', '.join(f'{short[q]}={display(p.get(q))}'
                              for q in sweep.param_names), v, fontsize=7,
                    xytext=(4, 4), textcoords='offset points')
    ax.set_xlabel(f'{a} {"↑" if da == "maximize" else "↓"}')
    ax.set_ylabel(f'{b} {"↑" if db == "maximize" else "↓"}')
    ax.set_title(f'Trade-off: {a} vs {b}', fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    name = f'tradeoff__{_slug(a)}__{_slug(b)}'
    path = os.path.join(out_dir, name + '.png')
    _save(fig, path)
    figures[name] = path
  return figures


def _save(fig, path: str) -> None:
  tmp = f'{path}.{os.getpid()}.tmp.png'
  fig.savefig(tmp, dpi=120, facecolor='white')
  os.replace(tmp, path)


def _optuna_figures(sweep: Sweep, study: optuna.Study, out_dir: str,
                    say: Callable[[str], None]) -> dict[str, str]:
  """Optuna's Pareto front, param importances and (search) history."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as ovm  # pylint: disable=g-import-not-at-top
  complete = study.get_trials(deepcopy=False,
                              states=(optuna.trial.TrialState.COMPLETE,))
  names = sweep.objective_names
  jobs = []
  if 2 <= len(names) <= 3:
    jobs.append(('optuna_pareto_front', lambda: ovm.plot_pareto_front(
        study, target_names=names)))
  num_params = len({p for t in complete for p in t.params})
  if num_params >= 2 and len(complete) >= 4:
    for i, name in enumerate(names):
      jobs.append((f'optuna_importances__{_slug(name)}',
                   lambda i=i, name=name: ovm.plot_param_importances(
                       study, target=lambda t: t.values[i],
                       target_name=name)))
  elif complete:
    say(f'skipped Optuna param importances: {num_params} param(s) and '
        f'{len(complete)} complete trial(s) (needs >= 2 and >= 4)')
  if not sweep.is_grid:
    for i, name in enumerate(names):
      jobs.append((f'optuna_history__{_slug(name)}',
                   lambda i=i, name=name: ovm.plot_optimization_history(
                       study, target=lambda t: t.values[i],
                       target_name=name)))
  figures = {}
  for name, make in jobs:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ax = make()
      fig = (ax.flat[0] if hasattr(ax, 'flat') else ax).figure
      fig.set_size_inches(7, 5)
      path = os.path.join(out_dir, name + '.png')
      _save(fig, path)
      plt.close(fig)
      figures[name] = path
    except Exception as e:  # pylint: disable=broad-except
      say(f'skipped {name}: {type(e).__name__}: {e}')
      plt.close('all')
  return figures


def aggregate(sweep: Sweep, sweep_dir: str, study: optuna.Study, *,
              storage: str | None = None,
              say: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes `<sweep_dir>/results/` and returns its summary.json record.

  trials.csv/.md (one row per finished run), by_point.csv/.md (mean ± SD
  over seeds), one PNG per objective and swept param, one per pair of
  objectives, Optuna's own figures, and summary.json in the stage-summary
  shape (`stages.summary`) plus "kind": "sweep"; figure and file paths are
  relative to the sweep dir. Several workers may call it at once: a lock
  serialises them, and the last one sees every finished trial.
  """
  from factorecg_jax.viz import summary as summary_lib  # pylint: disable=g-import-not-at-top
  out_dir = os.path.join(sweep_dir, RESULTS_DIR)
  os.makedirs(out_dir, exist_ok=True)
  lock = os.open(os.path.join(out_dir, '.lock'), os.O_RDWR | os.O_CREAT,
                 0o644)
  fcntl.flock(lock, fcntl.LOCK_EX)
  try:
    start = time.perf_counter()
    rows = trial_rows(sweep, sweep_dir, study)
    points = point_rows(sweep, rows)
    files = {}
    for name, table in (('trials', rows), ('by_point', points)):
      path = os.path.join(out_dir, f'{name}.csv')
      _write_csv(path, table)
      files[f'{name}_csv'] = path
    _write_text(os.path.join(out_dir, 'trials.md'),
                f'# Sweep {sweep.name}: runs\n\n'
                + (summary_lib.markdown_table(rows) if rows else
                   'No finished runs yet.\n'))
    shown = []
    for p in points:
      row = {q: p.get(q) for q in sweep.param_names}
      row.update(n=p['n'], seeds=p['seeds'])
      row.update({m: _fmt(p.get(f'{m} mean'), p.get(f'{m} sd'))
                  for m in sweep.metric_names})
      shown.append(row)
    _write_text(os.path.join(out_dir, 'by_point.md'),
                f'# Sweep {sweep.name}: mean ± SD over seeds\n\n'
                + (summary_lib.markdown_table(shown) if shown else
                   'No finished runs yet.\n'))
    files['trials_md'] = os.path.join(out_dir, 'trials.md')
    files['by_point_md'] = os.path.join(out_dir, 'by_point.md')
    figures = {}
    if points:
      figures.update(_effect_figures(sweep, points, out_dir))
      figures.update(_pair_figures(sweep, points, out_dir))
      figures.update(_optuna_figures(sweep, study, out_dir, say))
    states = collections.Counter(
        t.state.name.lower() for t in study.get_trials(deepcopy=False))
    scalars = dict(num_runs=len(rows), num_points=len(points),
                   complete_trials=states.get('complete', 0),
                   failed_trials=states.get('fail', 0))
    headline = {'runs finished': f'{len(rows)} of {_expected_runs(sweep)}'}
    for metric, direction in sweep.objectives:
      best = _best(sweep, points, metric, direction)
      if best is None:
        continue
      scalars[f'best/{metric}'] = best[f'{metric} mean']
      at = params_text({q: best.get(q) for q in sweep.param_names})
      headline[f'best {metric} ({direction})'] = (
          f'{_fmt(best[f"{metric} mean"], best[f"{metric} sd"])} at {at}')
    if not storage or '://' not in storage:
      journal = storage or os.path.join(sweep_dir, JOURNAL_FILE)
      if os.path.exists(journal):
        files['journal'] = journal
    relative = lambda d: {k: os.path.relpath(v, sweep_dir)
                          for k, v in d.items()}
    record = stages.summary(
        scalars=scalars, headline=headline,
        tables=dict(trials=rows, by_point=points),
        figures=relative(figures), files=relative(files),
        details=dict(
            sweep=sweep.name, file=sweep.path, base=sweep.base,
            overrides=sweep.overrides, sampler=sweep.sampler,
            sampler_seed=sweep.sampler_seed, space=sweep.space,
            num_trials=sweep.num_trials, seeds=list(sweep.seeds),
            objectives=[list(o) for o in sweep.objectives],
            metrics=list(sweep.metrics), stages=list(sweep.stages),
            storage=storage_label(storage, sweep_dir),
            trial_states=dict(states)))
    record = _nan_to_none(_jsonable(record))
    record.update(kind='sweep', stage='sweep', created=_now(),
                  seconds=round(time.perf_counter() - start, 2))
    _write_json(os.path.join(out_dir, stages.SUMMARY_FILE), record)
    return record
  finally:
    fcntl.flock(lock, fcntl.LOCK_UN)
    os.close(lock)


def _expected_runs(sweep: Sweep) -> int:
  return sweep.total * (1 if sweep.is_grid else max(len(sweep.seeds), 1))


def _nan_to_none(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_nan_to_none(v) for v in value]
  return value
