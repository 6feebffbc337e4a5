"""The demo config trained for real: reconstruction and disentanglement floors.

The demo's own command (`python -m factorecg_jax.main --config=configs/demo.py
--mode=all`) runs in a subprocess on one CPU device, as `make demo` runs it,
restricted to training and the encode/evaluate stages (`--stages`),
shortened to 600 of its 1,000 steps (the same schedule shape, warm-up and
sizes otherwise) and without the intervention scores (their own tests cover
them). This is exactly the 600-step run of the beta sweep behind the demo's
choice (README "A disentangled demo?"), whose values on two 2-core
machines (with and without AVX-512) give the floors (MEASURED, the worse of
the two), with margins. The demo's earlier, entangled
setting (beta 4) measured at the same 600 steps (ENTANGLED) fails them, so a
regression to entangled factors fails here. 400 steps are too few: beta 256
then reaches R^2 0.57 only, its factors not formed yet.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from factorecg_jax.training import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 600
_SHORT_RUN = (
    f'--config.train.num_steps={STEPS}',
    f'--config.train.eval_every={STEPS // 2}',
    f'--config.train.checkpoint_every={STEPS}',
    '--config.analysis.interventions=False',
)
# configs/demo.py (beta 256, fixed sd 0.05) with these overrides on two
# 2-core machines: the 600-step trajectory depends on the CPU's vector
# instructions (XLA rounds differently with and without AVX-512), so the
# floors take the worse of the two, with margins. --config.loss.beta=4 with
# the same overrides (ENTANGLED, Zen 4; not asserted) fails the MIG floor
# and the top-repeat ceiling.
MEASURED_BY_CPU = {
    'zen4_avx512_2026_12_02': dict(r2=0.819, mig=0.0226, dci=0.744,
                                   distinct=15, top_repeat=5),
    'zen3_avx2_2026_12_07': dict(r2=0.781, mig=0.0226, dci=0.700,
                                 distinct=10, top_repeat=11),
}
MEASURED = dict(
    r2=min(m['r2'] for m in MEASURED_BY_CPU.values()),
    mig=min(m['mig'] for m in MEASURED_BY_CPU.values()),
    dci=min(m['dci'] for m in MEASURED_BY_CPU.values()),
    distinct=min(m['distinct'] for m in MEASURED_BY_CPU.values()),
    top_repeat=max(m['top_repeat'] for m in MEASURED_BY_CPU.values()),
)
ENTANGLED = dict(r2=0.888, mig=0.0110, dci=0.749, distinct=10, top_repeat=14)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('demo_run'))
  # One device, like `make demo` (tests/conftest.py forces 8 for this
  # process only).
  env = dict(os.environ, XLA_FLAGS='')
  r = subprocess.run(
      [sys.executable, '-m', 'factorecg_jax.main', '--config=configs/demo.py',
       f'--workdir={workdir}', '--mode=all', '--stages=encode,evaluate',
       *_SHORT_RUN],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, r.stderr[-4000:]
  return workdir


def _read(workdir, *parts):
  with open(os.path.join(workdir, *parts)) as f:
    return json.load(f)


def test_training_loss_falls_and_reconstruction_generalises(demo_run):
  rows = writer.read_metrics(demo_run)
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) >= 3
  assert losses[-1] < losses[0] - 0.3 * abs(losses[0])
  evals = [r for r in rows if 'eval/r2' in r]
  assert evals[-1]['step'] == STEPS
  assert evals[-1]['eval/r2'] > evals[0]['eval/r2']
  # Held-out simulated beats (noise alone caps R^2 at ~0.98).
  assert evals[-1]['eval/r2'] >= MEASURED['r2'] - 0.02, evals[-1]['eval/r2']


def test_factors_are_disentangled_beyond_the_entangled_setting(demo_run):
  result = _read(demo_run, 'disentanglement', 'metrics.json')
  scores = result['scores']
  # DCI with the lasso importances (settings.importance).
  assert result['settings']['importance'] == 'lasso'
  # Floors between the two measured settings.
  assert scores['mig'] >= 0.8 * MEASURED['mig'], scores['mig']
  assert scores['dci_disentanglement'] >= MEASURED['dci'] - 0.03
  names = collections.Counter(b['label'] for b in result['best'])
  # Fewer copies of the commonest name than beta 4 (how many distinct names
  # appear varies with the CPU: 15 and 10).
  assert len(names) >= MEASURED['distinct'] - 1, names
  assert max(names.values()) <= MEASURED['top_repeat'] + 1, names
  encode = _read(demo_run, 'factors', 'summary.json')
  assert 1 <= encode['scalars']['num_active'] <= 32

