"""Command-line tests: config errors fail fast; simulate mode writes a summary."""

import json
import os
import subprocess
import sys
import time

import pytest

from factorecg_jax import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=600):
  env = dict(os.environ, XLA_FLAGS='')
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
            '--config.data.mode=unifrm', '--config.optim.lr=-1')
  assert r.returncode != 0
  assert "--config.data.mode='unifrm'" in r.stderr
  assert '--config.optim.lr=-1' in r.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'simulated'))


def test_validate_accepts_shipped_configs():
  for name in ('demo', 'factorecg_paper'):
    path = os.path.join(ROOT, 'configs', name + '.py')
    full = config_checks.load_config(path)
    config_checks.validate(full)
    tiny = config_checks.load_config(path + ':tiny')
    config_checks.validate(tiny)
    assert tiny.train.num_steps < full.train.num_steps
  with pytest.raises(ValueError, match='unknown config variant'):
    config_checks.load_config(path + ':huge')
  with pytest.raises(FileNotFoundError, match='nowhere.py'):
    config_checks.load_config('configs/nowhere.py')


def test_simulate_mode_writes_summary(tmp_path):
  r = _main('--config=configs/demo.py:tiny', f'--workdir={tmp_path}',
            '--mode=simulate', '--config.simulate.num_records=48')
  assert r.returncode == 0, r.stderr[-3000:]
  out = tmp_path / 'simulated'
  for name in ('factors.png', 'labels.png', 'survival.png', 'strip.png',
               'summary.md', 'summary.json'):
    assert (out / name).stat().st_size > 0, name
  headline = json.loads((out / 'summary.json').read_text())
  assert headline['num_records'] == 48
  assert 0 < headline['one_year_mortality'] < 0.3
  assert set(headline['prevalence_percent']) == set(
      __import__('factorecg_jax.data.simulator', fromlist=['x']).LABEL_NAMES)
