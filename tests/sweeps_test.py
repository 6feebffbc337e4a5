"""Sweeps: sweep files, names and commands; workers, resumption, results.

The end-to-end tests run experiments/sweep.py as subprocesses on
configs/sweeps/tiny.py (2 KL weights x 2 seeds of 4-step tiny VAEs): two
workers at once on one journal file, a rerun, and a killed trial resumed.
"""

import json
import os
import shutil
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import optuna
import pytest

from factorecg_jax import config_checks
from factorecg_jax import sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'sweeps', 'tiny.py')
CLI = os.path.join(REPO, 'experiments', 'sweep.py')
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL


def _raw(**changes):
  """The tiny sweep file's dict with `changes`."""
  raw = dict(name='t', base='configs/demo.py:tiny',
             overrides={'train.num_steps': 4}, sampler='grid',
             space={'loss.beta': [1.0, 8.0]}, seeds=(0, 1),
             objectives=(('train:eval/r2', 'maximize'),),
             metrics=('train:eval/active_units',), stages=('train',))
  raw.update(changes)
  return raw


# ------------------------------------------------- pure helpers (no runs) ---


def test_grid_distributions_add_the_seed_axis():
  sweep = sweeps.validate(_raw(space={'loss.beta': [1, 8]}))
  dists = sweeps.distributions(sweep)
  assert dists['loss.beta'].choices == (1.0, 8.0)  # ints widened to floats
  assert dists['seed'].choices == (0, 1)
  assert sweeps.grid_space(sweep) == {'loss.beta': [1.0, 8.0],
                                      'seed': [0, 1]}
  assert len(sweeps.grid_points(sweep)) == sweep.total == 4


def test_search_distributions_ranges_and_encoded_tuples():
  sweep = sweeps.validate(_raw(
      sampler='tpe', num_trials=3, space={
          'optim.lr': dict(low=1e-4, high=1e-2, log=True),
          'model.latents': dict(low=2, high=8, int=True),
          'blackbox.inputs': [('beat',), ('beat', 'strip')]}))
  dists = sweeps.distributions(sweep)
  lr = dists['optim.lr']
  assert isinstance(lr, optuna.distributions.FloatDistribution)
  assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
  latents = dists['model.latents']
  assert isinstance(latents, optuna.distributions.IntDistribution)
  assert (latents.low, latents.high) == (2, 8)
  assert dists['blackbox.inputs'].choices == ("('beat',)",
                                              "('beat', 'strip')")
  assert 'seed' not in dists  # every trial runs each seed
  decoded = sweeps.decode_params(sweep, {'blackbox.inputs': "('beat', 'strip')",
                                         'model.latents': 4,
                                         'optim.lr': 1e-3})
  assert decoded == {'blackbox.inputs': ('beat', 'strip'),
                     'model.latents': 4, 'optim.lr': 1e-3}
  runs = sweeps.runs_of(sweep, '/s', decoded)
  assert [r.seed for r in runs] == [0, 1]
  assert [os.path.basename(r.run_dir) for r in runs] == ['seed=0', 'seed=1']
  assert len({os.path.dirname(r.run_dir) for r in runs}) == 1


def test_point_keys_are_readable_stable_and_distinct():
  key = sweeps.point_key({'loss.beta': 8.0, 'seed': 0})
  assert key.startswith('beta=8,seed=0-') and len(key.split('-')[-1]) == 8
  assert key == sweeps.point_key({'seed': 0, 'loss.beta': 8.0})
  assert key != sweeps.point_key({'loss.beta': 8.0, 'seed': 1})
  assert key != sweeps.point_key({'loss.beta': 4.0, 'seed': 0})
  # A float field's 8 and 8.0 are one point once decoded.
  sweep = sweeps.validate(_raw())
  assert (sweeps.point_key(sweeps.decode_params(sweep, {'loss.beta': 8,
                                                        'seed': 0})) == key)
  # Repeated last parts keep their full path; odd characters are replaced.
  key = sweeps.point_key({'model.depth': 3, 'other.depth': 5,
                          'blackbox.inputs': ('beat', 'strip'),
                          'data.name': 'a/b c'})
  assert key.startswith('inputs=beat+strip,name=a_b_c,model.depth=3,'
                        'other.depth=5-'), key
  assert '/' not in key and ' ' not in key


def test_overrides_parse_back_through_config_flags():
  # The arguments a trial gets, parsed by main.py's own flag definition.
  base = config_checks.load_config('configs/demo.py:tiny')
  values = {'loss.beta': 8, 'train.num_steps': 6.0, 'model.head': 'dense',
            'blackbox.inputs': ('strip',), 'downstream.external_mode': '',
            'blackbox.targets': ('reduced_ef', 'mortality'),
            'analysis.interventions': False, 'optim.lr': 1e-05,
            'explain.variant': ()}
  args = [sweeps.format_override(p, v, sweeps.field_type(base, p))
          for p, v in values.items()]
  assert "--config.blackbox.inputs=('strip',)" in args
  assert '--config.train.num_steps=6' in args  # an int field gets an int
  assert '--config.analysis.interventions=false' in args
  argv = ['prog', f'--config={REPO}/configs/demo.py:tiny', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  for path, value in values.items():
    node = config
    for part in path.split('.'):
      node = node[part]
    want = sweeps.coerce(value, sweeps.field_type(base, path), path)
    assert node == value and isinstance(node, type(want)), path
  with pytest.raises(sweeps.SweepError, match='does not fit'):
    sweeps.format_override('train.num_steps', 2.5, int)


def test_metric_placeholders_take_the_run_config():
  sweep = sweeps.validate(_raw(
      space={'blackbox.inputs': [('beat',), ('strip',)]},
      stages=('downstream',),
      objectives=(('downstream:reduced EF/ResNet ({blackbox.inputs[0]})/'
                   'AUROC', 'maximize'),)))
  run = sweeps.runs_of(sweep, '/s', {'blackbox.inputs': ('strip',),
                                     'seed': 0})[0]
  name = sweeps.resolve_metric(sweep.objective_names[0],
                               sweeps.run_config(sweep, run))
  assert name == 'downstream:reduced EF/ResNet (strip)/AUROC'
  assert any(a == "--config.blackbox.inputs=('strip',)"
             for a in sweeps.trial_args(sweep, run))


@pytest.mark.parametrize('changes, message', [
    (dict(space={'loss.bta': [1.0]}),
     r"'loss.bta' is not a field of configs/demo.py:tiny. Did you mean: "
     r'loss.beta'),
    (dict(overrides={'train.num_step': 3}), 'Did you mean: train.num_steps'),
    (dict(sampler='gird'), r"sampler='gird': must be one of .* Did you "
     'mean: grid'),
    (dict(objectives=('train:eval/r2', 'maximize')),
     r'give a tuple of \(metric, direction\) pairs'),
    (dict(objectives=(('eval/r2', 'maximize'),)), "must be '<source>:<name>'"),
    (dict(objectives=(('train:eval/r2', 'max'),)),
     "direction 'max' must be one of .* Did you mean: maximize"),
    (dict(metrics=('evaluate:mig',)), "add 'evaluate' to stages"),
    (dict(metrics=('evalute:mig',)), "unknown source 'evalute'.*Did you "
     'mean: evaluate'),
    (dict(stages=('evalute',)), "unknown stage 'evalute'.*Did you mean: "
     'evaluate'),
    (dict(space={'loss.beta': dict(low=1, high=8)}),
     'a range needs sampler tpe or random'),
    (dict(space={'model.head': [3]}), 'does not fit the config field of '
     'type str'),
    (dict(space={'seed': [0, 1]}), "space has 'seed' and seeds is set"),
    (dict(sampler='tpe'), "num_trials=0: sampler 'tpe' needs"),
    (dict(seed=(0,)), "unknown key 'seed'.*Did you mean: seeds"),
    (dict(base='configs/nope.py'), "base config 'configs/nope.py' not found"),
])
def test_sweep_file_errors_are_clear(changes, message):
  with pytest.raises(sweeps.SweepError, match=message):
    sweeps.validate(_raw(**changes))


def test_every_problem_is_reported_at_once():
  with pytest.raises(sweeps.SweepError) as info:
    sweeps.validate(_raw(sampler='gird', space={'loss.bta': [1.0]},
                         objectives=(('eval/r2', 'maximize'),)))
  assert str(info.value).count('\n  - ') == 3


@pytest.mark.parametrize('name', sorted(
    f for f in os.listdir(os.path.join(REPO, 'configs', 'sweeps'))
    if f.endswith('.py')))
def test_sweep_files_validate(name):
  sweep = sweeps.load_sweep(os.path.join(REPO, 'configs', 'sweeps', name))
  assert sweep.name == name[:-3]
  assert sweep.total >= 2
  with open(os.path.join(REPO, 'configs', 'sweeps', name)) as f:
    doc = f.read()
  assert 'python experiments/sweep.py --sweep=configs/sweeps/' + name in doc
  assert 'Runtime (2-core CPU' in doc and 'PENDING' not in doc


def test_a_changed_sweep_does_not_reuse_the_study(tmp_path):
  sweeps.open_study(sweeps.validate(_raw()), str(tmp_path))
  changed = sweeps.validate(_raw(overrides={'train.num_steps': 8}))
  with pytest.raises(sweeps.SweepError, match='different sweep definition'):
    sweeps.open_study(changed, str(tmp_path))
  # More seeds (or values) extend the same study.
  sweeps.open_study(sweeps.validate(_raw(seeds=(0, 1, 2))), str(tmp_path))


def test_run_dir_lock_is_exclusive(tmp_path):
  run_dir = str(tmp_path / 'run')
  fd = sweeps.try_lock(run_dir)
  assert fd is not None and not sweeps.lock_is_free(run_dir)
  assert sweeps.try_lock(run_dir) is None  # a second owner is refused
  sweeps.release(fd)
  assert sweeps.lock_is_free(run_dir)


def test_a_running_trial_keeps_its_lock_until_it_is_told(tmp_path,
                                                           monkeypatch):
  # Regression: a worker released its run-dir lock before telling Optuna,
  # and another worker's stale check failed the finished trial meanwhile.
  sweep = sweeps.validate(_raw(space={'loss.beta': [1.0, 8.0]}, seeds=(0,)))
  study = sweeps.open_study(sweep, str(tmp_path))
  other = sweeps.open_study(sweep, str(tmp_path))  # a second worker's view
  seen = []

  def fake_run_one(sweep_, run, lock_fd, **kwargs):
    del sweep_, lock_fd, kwargs
    seen.append(('reaped while running', sweeps.reap_stale(
        other, sweep, str(tmp_path), say=lambda m: None)))
    return dict(values={'train:eval/r2': 0.5,
                        'train:eval/active_units': 4.0}, cached=False,
                run_dir=run.run_dir)

  real_tell = sweeps._tell  # pylint: disable=protected-access

  def tell(study_, trial, values=None, state=None):
    params = sweeps.decode_params(sweep, study_.trials[-1].params)
    (run,) = sweeps.runs_of(sweep, str(tmp_path), params)
    seen.append(('lock free at tell', sweeps.lock_is_free(run.run_dir)))
    real_tell(study_, trial, values, state=state)

  monkeypatch.setattr(sweeps, 'run_one', fake_run_one)
  monkeypatch.setattr(sweeps, '_tell', tell)
  messages = []
  worker = sweeps.Worker(sweep, str(tmp_path), study, say=messages.append)
  assert worker.run() == 0
  assert seen == [('reaped while running', []), ('lock free at tell', False)
                  ] * 2
  assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
  assert messages[-1] == 'All 2 trials are finished.'
  again = sweeps.Worker(sweep, str(tmp_path), other, say=messages.append)
  assert again.run() == 0
  assert messages[-1] == 'All 2 trials are finished; nothing to run.'
  assert len(other.trials) == 2


# ------------------------------------------------- end to end (training) ---


def _env(cache):
  # One device per trial (conftest forces 8 in this process), fast compiles
  # and one compilation cache shared by every trial of the module.
  return dict(os.environ, XLA_FLAGS='', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
              JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', MPLBACKEND='Agg')


def _cli(sweep_file, sweep_dir, cache, *extra):
  return [sys.executable, CLI, f'--sweep={sweep_file}',
          f'--sweep_dir={sweep_dir}', *extra], _env(cache)


def _run_cli(sweep_file, sweep_dir, cache, *extra):
  cmd, env = _cli(sweep_file, sweep_dir, cache, *extra)
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return r.stdout


def _study(sweep_file, sweep_dir):
  return sweeps.open_study(sweeps.load_sweep(sweep_file), str(sweep_dir))


def _attempts(sweep_dir):
  root = os.path.join(sweep_dir, 'trials')
  return {d: sweeps.read_state(os.path.join(root, d))['attempts']
          for d in sorted(os.listdir(root))}


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """The tiny sweep run by two workers at once on one journal file."""
  root = tmp_path_factory.mktemp('sweep')
  sweep_dir, cache = root / 'tiny', root / 'jax_cache'
  procs = []
  for index in (0, 1):
    cmd, env = _cli(TINY, sweep_dir, cache, f'--worker_index={index}')
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return sweep_dir, cache, outputs


def test_two_workers_run_each_point_and_seed_exactly_once(tiny_sweep):
  sweep_dir, _, outputs = tiny_sweep
  with open(sweep_dir / 'results' / 'summary.json') as f:
    summary = json.load(f)
  assert summary['kind'] == 'sweep'
  rows = summary['tables']['trials']
  assert len(rows) == 4
  assert len({r['trial_dir'] for r in rows}) == 4
  assert sorted((r['loss.beta'], r['seed']) for r in rows) == [
      (1.0, 0), (1.0, 1), (8.0, 0), (8.0, 1)]
  assert all(np.isfinite(r['train:eval/r2']) for r in rows)
  attempts = _attempts(str(sweep_dir))
  assert len(attempts) == 4
  assert all([a['status'] for a in v] == ['finished']
             for v in attempts.values()), attempts
  # Both workers trained (they ran concurrently), neither twice the same.
  assert {a[0]['worker'] for a in attempts.values()} == {'w0', 'w1'}
  study = _study(TINY, sweep_dir)
  assert [t.state for t in study.trials].count(COMPLETE) == 4
  assert not [t for t in study.trials
              if t.state == optuna.trial.TrialState.RUNNING]
  assert any('Nothing left for this worker' in o or 'All 4 trials' in o
             for o in outputs)
  for path in summary['figures'].values():
    assert os.path.getsize(os.path.join(sweep_dir, path)) > 1000, path
  assert 'train_eval_r2__vs__loss_beta' in summary['figures']
  assert 'optuna_pareto_front' in summary['figures']
  with open(sweep_dir / 'results' / 'trials.csv') as f:
    assert len(f.read().strip().splitlines()) == 5  # header + 4 runs
  # The sweep's own page: trade-off table and plots, embedded.
  page = (sweep_dir / 'report' / 'index.html').read_text()
  assert page.count('<img ') >= len(summary['figures'])
  assert 'data:image/png;base64,' in page and 'loss.beta' in page


def test_by_point_gives_mean_and_sd_over_seeds(tiny_sweep):
  sweep_dir, _, _ = tiny_sweep
  with open(sweep_dir / 'results' / 'summary.json') as f:
    summary = json.load(f)
  points = summary['tables']['by_point']
  assert [p['loss.beta'] for p in points] == [1.0, 8.0]
  for point in points:
    values = [r['train:eval/r2'] for r in summary['tables']['trials']
              if r['loss.beta'] == point['loss.beta']]
    assert point['n'] == 2 and point['seeds'] == '0,1'
    np.testing.assert_allclose(point['train:eval/r2 mean'], np.mean(values),
                               rtol=1e-9)
    np.testing.assert_allclose(point['train:eval/r2 sd'],
                               np.std(values, ddof=1), rtol=1e-9)
  with open(sweep_dir / 'results' / 'by_point.md') as f:
    assert f.read().count(' ± ') >= 2


def test_rerun_runs_nothing(tiny_sweep):
  sweep_dir, cache, _ = tiny_sweep
  before = _attempts(str(sweep_dir))
  trials = len(_study(TINY, sweep_dir).trials)
  out = _run_cli(TINY, sweep_dir, cache, '--workers=2')
  assert out.count('All 4 trials are finished; nothing to run.') == 2, out
  assert _attempts(str(sweep_dir)) == before
  assert len(_study(TINY, sweep_dir).trials) == trials


def test_killed_trial_is_failed_reenqueued_and_resumed(tiny_sweep, tmp_path):
  src_dir, cache, _ = tiny_sweep
  tiny = sweeps.load_sweep(TINY)
  # One point of the tiny sweep (same base and overrides, so the same run
  # directory name) in a study of its own.
  sweep_file = tmp_path / 'stale.py'
  sweep_file.write_text(
      'def get_sweep():\n  return ' + repr(dict(
          name='stale', base=tiny.base, overrides=tiny.overrides,
          sampler='grid', space={'loss.beta': [1.0]}, seeds=(0,),
          objectives=tiny.objectives, metrics=tiny.metrics,
          stages=tiny.stages)) + '\n')
  sweep_dir = tmp_path / 'sweep'
  sweep = sweeps.load_sweep(str(sweep_file))
  # What a worker SIGKILLed after its step-2 checkpoint leaves: a RUNNING
  # trial that took its lock, a run dir trained to step 2, an attempt
  # marked running.
  study = sweeps.open_study(sweep, str(sweep_dir))
  trial = study.ask(sweeps.distributions(sweep))
  trial.set_user_attr('sweep_locked', True)
  (run,) = sweeps.runs_of(sweep, str(sweep_dir),
                          sweeps.decode_params(sweep, trial.params))
  shutil.copytree(os.path.join(src_dir, 'trials',
                               os.path.basename(run.run_dir)), run.run_dir)
  shutil.rmtree(os.path.join(run.run_dir, 'checkpoints', '4'))
  state = sweeps.read_state(run.run_dir)
  state['attempts'] = [dict(state['attempts'][0], trial=trial.number,
                            status='running', end=None, seconds=None)]
  state['result'] = None
  sweeps.write_state(run.run_dir, state)

  out = _run_cli(sweep_file, sweep_dir, cache)
  assert 'marked FAIL and re-enqueued' in out, out
  assert 'resuming from step 2' in out, out
  study = _study(str(sweep_file), sweep_dir)
  assert [t.state for t in study.trials] == [FAIL, COMPLETE]
  assert study.trials[1].user_attrs['resumes_trial'] == trial.number
  with open(os.path.join(run.run_dir, 'config.json')) as f:
    assert json.load(f)['run_info']['start_step'] == 2
  attempts = sweeps.read_state(run.run_dir)['attempts']
  assert [a['status'] for a in attempts] == ['died', 'finished']
  assert attempts[1]['start_checkpoint'] == 2
  assert attempts[1]['end_checkpoint'] == 4


@pytest.mark.parametrize('variant', ['beta.py:wide', 'beta.py:paper',
                                     'kl_schedule.py:paper'])
def test_sweep_variants_validate(variant):
  sweep = sweeps.load_sweep(os.path.join(REPO, 'configs', 'sweeps', variant))
  assert sweep.total >= 2
