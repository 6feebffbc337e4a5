"""Command-line tests: config errors fail fast; simulate mode writes a summary."""

import json
import os
import subprocess
import sys
import time

import pytest

from factorecg_jax import config_checks
from factorecg_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=600):
  # One device; XLA's optimisation passes off (these runs check the command
  # line and its outputs, not speed or trained values).
  env = dict(os.environ, XLA_FLAGS='', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  return subprocess.run(
      [sys.executable, '-m', 'factorecg_jax.main', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=timeout, env=env)


def test_misspelt_config_key_fails_before_compute(tmp_path):
  t = time.perf_counter()
  r = _main('--config=configs/demo.py', f'--workdir={tmp_path}',
            '--config.train.num_step=5')
  assert r.returncode != 0
  assert 'Unknown config key --config.train.num_step' in r.stderr
  assert 'train.num_steps' in r.stderr  # the suggestion
  assert time.perf_counter() - t < 60
  assert not os.listdir(tmp_path)  # nothing ran, nothing written


def test_invalid_value_fails_with_named_field(tmp_path):
  r = _main('--config=configs/demo.py', f'--workdir={tmp_path}',
            '--config.data.mode=unifrm', '--config.optim.lr=-1',
            '--config.downstream.margin=-0.02')
  assert r.returncode != 0
  assert "--config.data.mode='unifrm'" in r.stderr
  assert '--config.optim.lr=-1' in r.stderr
  assert '--config.downstream.margin=-0.02: must be >= 0' in r.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'simulated'))


def test_validate_accepts_shipped_configs():
  for name in ('demo', 'factorecg_paper'):
    path = os.path.join(ROOT, 'configs', name + '.py')
    full = config_checks.load_config(path)
    config_checks.validate(full)
    tiny = config_checks.load_config(path + ':tiny')
    config_checks.validate(tiny)
    steps = [train.resolve_num_steps(c.train, c.data.num_train)[0]
             for c in (tiny, full)]
    assert 0 < steps[0] < steps[1]
  with pytest.raises(ValueError, match='unknown config variant'):
    config_checks.load_config(path + ':huge')
  with pytest.raises(FileNotFoundError, match='nowhere.py'):
    config_checks.load_config('configs/nowhere.py')


_LIBRARY_LOG = ('checkpoint_manager.py', 'orbax', 'xla_bridge.py')


def _info_lines(text):
  """absl-formatted INFO lines ('I1201 20:24:05.383 ... file.py:12] ...')."""
  return [line for line in text.splitlines()
          if len(line) > 5 and line[0] == 'I' and line[1:5].isdigit()]


def test_simulate_mode_writes_summary(tmp_path):
  r = _main('--config=configs/demo.py:tiny', f'--workdir={tmp_path}',
            '--mode=simulate', '--config.simulate.num_records=48',
            '--verbosity=0')
  assert r.returncode == 0, r.stderr[-3000:]
  # --verbosity=0 brings the libraries' INFO logs back (jax's backend
  # search); the quiet default is checked on a training run below.
  library = [line for line in _info_lines(r.stderr)
             if 'xla_bridge.py' in line]
  assert library, r.stderr[-3000:]
  assert '[simulate] done in' in r.stdout
  out = tmp_path / 'simulated'
  for name in ('factors.png', 'labels.png', 'survival.png', 'strip.png',
               'summary.md', 'summary.json'):
    assert (out / name).stat().st_size > 0, name
  saved = json.loads((out / 'summary.json').read_text())
  headline = saved['scalars']
  assert saved['stage'] == 'simulate'
  assert saved['figures']['factors'] == 'simulated/factors.png'
  assert headline['num_records'] == 48
  assert 0 < headline['one_year_mortality'] < 0.3
  assert {r['label'] for r in saved['tables']['label_prevalence']} == set(
      __import__('factorecg_jax.data.simulator', fromlist=['x']).LABEL_NAMES)


def test_paper_config_steps_follow_epochs():
  config = config_checks.load_config(
      os.path.join(ROOT, 'configs', 'factorecg_paper.py'))
  assert config.train.num_steps == 0  # resolved when the run starts
  steps, how = train.resolve_num_steps(config.train, config.data.num_train)
  assert steps == -(-50 * 100_000 // 128) == 39_063
  assert 'num_epochs=50' in how
  config.train.batch_size = 256
  assert train.resolve_num_steps(config.train, 100_000)[0] == 19_532
  config.train.num_steps = 7  # an explicit count wins
  assert train.resolve_num_steps(config.train, 100_000) == (
      7, 'train.num_steps')
  config.train.update(num_steps=0, num_epochs=0)
  with pytest.raises(ValueError, match='num_epochs'):
    train.resolve_num_steps(config.train, 100_000)
  with pytest.raises(ValueError, match='num_epochs'):
    config_checks.validate(config)


def test_train_console_is_quiet_and_epochs_follow_batch_size(tmp_path):
  # The paper's tiny config is epoch-based: 0.25 epochs of 256 records.
  r = _main('--config=configs/factorecg_paper.py:tiny',
            f'--workdir={tmp_path}', '--mode=train',
            '--config.train.batch_size=8')
  assert r.returncode == 0, r.stderr[-3000:]
  text = r.stdout + r.stderr
  assert not _info_lines(text), _info_lines(text)[:5]
  assert not any(k in text for k in _LIBRARY_LOG), text[-3000:]
  assert '[train] started' in r.stdout
  assert '[train] done in' in r.stdout
  progress = [line for line in r.stdout.splitlines()
              if line.startswith('train ')]
  assert progress and progress[-1].startswith('train 8/8 100%'), progress
  assert any('ECGs/s' in line and 'ETA' in line for line in progress)
  assert '== train: results ==' in r.stdout
  assert 'eval R^2' in r.stdout
  assert str(tmp_path / 'metrics.jsonl') in r.stdout
  saved = json.loads((tmp_path / 'config.json').read_text())
  # 0.25 * 256 / 8 = 8 steps, not the 4 of batch 16.
  assert saved['train']['num_steps'] == 8
  assert saved['train']['batch_size'] == 8
  assert 'num_epochs=0.25' in saved['run_info']['num_steps_from']


def test_one_task_slurm_job_is_a_single_process():
  from factorecg_jax import main  # pylint: disable=g-import-not-at-top
  assert not main._is_multiprocess({})  # pylint: disable=protected-access
  assert not main._is_multiprocess({'SLURM_NTASKS': '1'})  # pylint: disable=protected-access
  assert main._is_multiprocess({'SLURM_NTASKS': '4'})  # pylint: disable=protected-access
  assert main._is_multiprocess({'JAX_COORDINATOR_ADDRESS': 'h:1234'})  # pylint: disable=protected-access
  assert not main._is_multiprocess({'OMPI_COMM_WORLD_SIZE': '1'})  # pylint: disable=protected-access
