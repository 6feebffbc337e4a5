"""Tests of the stage registry: discovery, summaries, --mode, up-to-date skips."""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from factorecg_jax import stages

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _config(**train):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = 'toy'
  config.train = ml_collections.ConfigDict(dict(num_steps=3, **train))
  config.analysis = ml_collections.ConfigDict(dict(scale=2.0))
  return config


@pytest.fixture
def toy_stages():
  """Two toy stages, the second reading the first's output; removed after."""
  calls = []

  @stages.register('toy_a', requires=(stages.TRAIN,), order=500,
                   description='a toy stage')
  def run_a(config, workdir):
    calls.append('toy_a')
    path = os.path.join(workdir, 'toy_a', 'value.json')
    with open(path, 'w') as f:
      json.dump({'value': config.analysis.scale * 21}, f)
    return stages.summary(scalars={'value': config.analysis.scale * 21},
                          figures={'plot': path}, tables={'t': [{'x': 1}]})

  @stages.register('toy_b', requires=('toy_a',), order=501)
  def run_b(config, workdir):
    calls.append('toy_b')
    with open(os.path.join(workdir, 'toy_a', 'value.json')) as f:
      value = json.load(f)['value']
    return stages.summary(scalars={'double': 2 * value})

  yield calls
  del stages.STAGES['toy_a'], stages.STAGES['toy_b']


def _fake_train(calls):
  def train(config, workdir):
    calls.append('train')
    os.makedirs(os.path.join(workdir, 'checkpoints',
                             str(config.train.num_steps)), exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(dict(config.to_dict(), run_info={}), f)
  return train


def test_built_in_stages_are_discovered():
  found = stages.discover()
  for name in ('simulate', 'encode', 'traverse', 'evaluate'):
    assert name in found
  order = [s.name for s in stages.ordered()]
  assert order.index('encode') < order.index('traverse')
  assert found['encode'].out_dir == 'factors'
  vae = ml_collections.ConfigDict(dict(task='vae'))
  other = ml_collections.ConfigDict(dict(task='classify'))
  assert found['encode'].applies_to(vae)
  assert not found['encode'].applies_to(other)


def test_reserved_names_are_refused():
  with pytest.raises(ValueError, match='reserved'):
    stages.register('all')(lambda c, w: {})


def test_summary_shape_and_relative_paths(toy_stages, tmp_path):
  record = stages.run_stage('toy_a', _config(), str(tmp_path))
  assert toy_stages == ['toy_a']
  saved = stages.read_summary(str(tmp_path), 'toy_a')
  assert saved == record
  assert saved['stage'] == 'toy_a'
  assert saved['scalars'] == {'value': 42.0}
  assert saved['headline'] == {'value': 42.0}  # defaults to the scalars
  assert saved['figures'] == {'plot': 'toy_a/value.json'}
  assert saved['tables'] == {'t': [{'x': 1}]}
  assert set(saved) >= {'fingerprint', 'seconds', 'created', 'files',
                        'details', 'checkpoint_step'}
  # A workdir given relative to the current directory stores the same.
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path.parent)
    relative = stages.run_stage('toy_a', _config(), tmp_path.name)
  finally:
    os.chdir(cwd)
  assert relative['figures'] == {'plot': 'toy_a/value.json'}
  with pytest.raises(KeyError, match='toy_a'):
    stages.run_stage('nope', _config(), str(tmp_path))


def test_run_all_skips_what_is_up_to_date(toy_stages, tmp_path):
  workdir = str(tmp_path)
  config = _config()
  train = _fake_train(toy_stages)
  stages.run_all(config, workdir, train_fn=train)
  assert toy_stages == ['train', 'toy_a', 'toy_b']
  assert stages.read_summary(workdir, 'toy_b')['scalars'] == {'double': 84.0}

  # Nothing changed: nothing runs again.
  done = stages.run_all(config, workdir, train_fn=train)
  assert toy_stages == ['train', 'toy_a', 'toy_b']
  assert dict(done)['toy_b']['scalars'] == {'double': 84.0}

  # An analysis setting changed: both stages rerun (b depends on a), not
  # training.
  config.analysis.scale = 3.0
  stages.run_all(config, workdir, train_fn=train)
  assert toy_stages[3:] == ['toy_a', 'toy_b']
  assert stages.read_summary(workdir, 'toy_b')['scalars'] == {'double': 126.0}

  # More training steps: training and everything after it rerun.
  config.train.num_steps = 5
  stages.run_all(config, workdir, train_fn=train)
  assert toy_stages[5:] == ['train', 'toy_a', 'toy_b']

  # --force reruns everything.
  stages.run_all(config, workdir, train_fn=train, force=True)
  assert toy_stages[8:] == ['train', 'toy_a', 'toy_b']


def test_only_runs_named_stages_and_their_requirements(toy_stages, tmp_path):
  workdir = str(tmp_path)
  config = _config()
  train = _fake_train(toy_stages)
  assert stages.with_requirements(['toy_b']) == {'toy_b', 'toy_a',
                                                 stages.TRAIN}
  with pytest.raises(KeyError, match='toy_c'):
    stages.with_requirements(['toy_c'])
  done = stages.run_all(config, workdir, train_fn=train, only=['toy_a'])
  assert toy_stages == ['train', 'toy_a']
  assert [name for name, _ in done] == ['train', 'toy_a']
  stages.run_all(config, workdir, train_fn=train, only=['train'])
  assert toy_stages == ['train', 'toy_a']  # trained already: skipped


def test_sections_limit_what_a_stage_depends_on(tmp_path):
  calls = []

  @stages.register('toy_free', requires=(), order=1,
                   sections=('seed', 'analysis'))
  def run_free(config, workdir):
    calls.append(config.analysis.scale)
    return stages.summary(scalars={'scale': config.analysis.scale})

  try:
    workdir = str(tmp_path)
    config = _config()
    train = _fake_train([])
    stages.run_all(config, workdir, train_fn=train, only=['toy_free'])
    # A training setting outside its sections: still up to date.
    config.train.num_steps = 7
    stages.run_all(config, workdir, train_fn=train, only=['toy_free'])
    assert calls == [2.0]
    # One of its sections changed: it reruns.
    config.analysis.scale = 4.0
    stages.run_all(config, workdir, train_fn=train, only=['toy_free'])
    assert calls == [2.0, 4.0]
  finally:
    del stages.STAGES['toy_free']


def test_training_complete_resolves_epochs(tmp_path):
  config = _config()
  _fake_train([])(config, str(tmp_path))
  assert stages.training_complete(config, str(tmp_path))
  epochs = _config()
  epochs.train.num_steps = 0  # the run resolved it to 3
  assert stages.training_complete(epochs, str(tmp_path))
  longer = _config()
  longer.train.num_steps = 4
  assert not stages.training_complete(longer, str(tmp_path))
  assert not stages.training_complete(config, str(tmp_path / 'empty'))


_TOY_STAGE = '''
"""A user's own stage, in a file outside the package."""
import os
from factorecg_jax import stages


@stages.register('count_files', requires=(), description='files so far')
def run(config, workdir):
  names = sorted(os.listdir(workdir))
  return stages.summary(scalars={'num_files': len(names)},
                        details={'seed': config.seed})
'''


def test_a_new_stage_is_one_file_run_through_mode(tmp_path):
  stage_file = tmp_path / 'my_stage.py'
  stage_file.write_text(textwrap.dedent(_TOY_STAGE))
  workdir = tmp_path / 'run'
  r = subprocess.run(
      [sys.executable, '-m', 'factorecg_jax.main',
       '--config=configs/demo.py:tiny', f'--workdir={workdir}',
       '--mode=count_files', f'--stage_modules={stage_file}'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS=''))
  assert r.returncode == 0, r.stderr[-3000:]
  saved = json.loads((workdir / 'count_files' / 'summary.json').read_text())
  assert saved['scalars'] == {'num_files': 1}  # its own folder
  assert saved['details'] == {'seed': 0}
  assert '[count_files] done in' in r.stdout
  assert '== count_files: results ==' in r.stdout

  bad = subprocess.run(
      [sys.executable, '-m', 'factorecg_jax.main',
       '--config=configs/demo.py:tiny', f'--workdir={workdir}',
       '--mode=count_filez', f'--stage_modules={stage_file}'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS=''))
  assert bad.returncode != 0
  assert 'Unknown --mode=count_filez' in bad.stderr
  assert 'count_files' in bad.stderr
