"""The demo config trained for real: reconstruction, factors, interventions.

One module-scoped training run of configs/demo.py (its full step count, a few
CPU minutes), then the analysis modes on it, with the intervention metrics at
reduced sizes.
"""

import importlib.util
import json
import os

import pytest

from factorecg_jax import runs
from factorecg_jax.training import train
from factorecg_jax.training import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_config():
  path = os.path.join(REPO, 'configs', 'demo.py')
  spec = importlib.util.spec_from_file_location('configs_demo_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  config = _demo_config()
  # Smaller analysis sizes than the demo's; training is the demo's own.
  config.analysis.update(
      num_records=500, metrics_num_train=1000, metrics_num_test=500,
      intervention_num_train=300, intervention_num_eval=150,
      intervention_num_variance_estimate=1000)
  workdir = str(tmp_path_factory.mktemp('demo_run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _metrics(workdir):
  return writer.read_metrics(workdir)


def test_training_loss_falls_and_reconstruction_generalises(demo_run):
  config, workdir = demo_run
  rows = _metrics(workdir)
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) >= 3
  assert losses[-1] < losses[0] - 0.3 * abs(losses[0])
  evals = [r for r in rows if 'eval/r2' in r]
  assert evals[-1]['step'] == config.train.num_steps
  # Held-out simulated beats (the validation split). The goal is
  # R^2 >= 0.9; the CPU demo (1,200 steps, ~2.5 min) reaches ~0.75-0.8.
  assert evals[-1]['eval/r2'] >= 0.7, evals[-1]['eval/r2']
  assert evals[-1]['eval/r2'] > evals[0]['eval/r2']


def test_factors_and_intervention_metrics_of_the_trained_demo_vae(demo_run):
  config, workdir = demo_run
  summary = runs.encode_mode(config, workdir)
  assert 1 <= summary['num_active'] <= config.model.latents
  runs.evaluate_mode(config, workdir)
  with open(os.path.join(workdir, 'disentanglement', 'metrics.json')) as f:
    scores = json.load(f)['scores']
  chance = scores['intervention_chance']  # 1 / number of factors
  # A trained encoder tells fixed factors apart far better than chance.
  assert scores['beta_vae_eval_accuracy'] > chance + 0.2
  assert scores['factor_vae_eval_accuracy'] > chance + 0.1
  assert 0.0 <= scores['mig'] <= 1.0
