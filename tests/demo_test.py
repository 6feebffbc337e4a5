"""The demo config trained for real: reconstruction and disentanglement floors.

The demo's own command (`python -m factorecg_jax.main --config=configs/demo.py
--mode=all`) runs in a subprocess on one CPU device, as `make demo` runs it,
restricted to training and the encode/evaluate stages (`--stages`),
shortened to 600 of its 1,000 steps (the same schedule shape, warm-up and
sizes otherwise) and without the intervention scores (their own tests cover
them). This is exactly the 600-step run of the sweep behind the demo's
choice (README "A disentangled demo?"). The floors (MEASURED, the worse of
three draws, with margins) come from three 600-step trajectories of the
demo config: seeds 0 and 1 on a Zen 3 and seed 0 on a Zen 4, since the
trajectory at 600 steps depends on the seed as much as on the CPU's
rounding (with and without AVX-512), and the test runs seed 0 on whatever
CPU CI has. The demo's earlier settings measured at the same 600 steps
fail them: the entangled beta-VAE at beta 4 (ENTANGLED) the MIG floor,
and the beta-VAE at beta 256 (PRUNED, the demo until 2026-12-07) the
floors on how much of QTc and of the T amplitude the factors carry, since
a beta on the whole KL drops first what costs little squared error. 400
steps are too few: the factors are not formed yet (R^2 0.57 at beta 256).
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
# configs/demo.py (beta-TC-VAE: 256 on the total correlation, 4 on the
# mutual information and dimension-wise KL; fixed sd 0.05) with these
# overrides, seeds 0 and 1, on a 2-core AMD Zen 3 (AVX2), 2026-12-07. qtc and
# t_amp: held-out linear R^2 of the true factor from the active codes (the
# evaluate stage's `encoded` table).
MEASURED_BY_DRAW = {
    'seed0_zen3_2026_12_07': dict(r2=0.830, mig=0.0332, dci=0.695,
                                  distinct=11, top_repeat=12, qtc=0.45,
                                  t_amp=0.45),
    'seed1_zen3_2026_12_07': dict(r2=0.784, mig=0.0177, dci=0.644,
                                  distinct=10, top_repeat=14, qtc=0.37,
                                  t_amp=0.52),
    # Seed 0 on a 2-core AMD Zen 4 (AVX-512): fresh-clone CI, 2026-12-07.
    'seed0_zen4_2026_12_07': dict(r2=0.717, mig=0.0283, dci=0.652,
                                  distinct=10, top_repeat=14, qtc=0.45,
                                  t_amp=0.60),
}
MEASURED = {
    key: (max if key == 'top_repeat' else min)(
        m[key] for m in MEASURED_BY_DRAW.values())
    for key in MEASURED_BY_DRAW['seed0_zen3_2026_12_07']}
# The same overrides with --config.loss.objective=beta_vae and beta 4
# (Zen 4, 2026-12-02) or beta 256 (Zen 3, seed 0, 2026-12-07); not asserted.
ENTANGLED = dict(r2=0.888, mig=0.0110, dci=0.749, distinct=10, top_repeat=14)
PRUNED = dict(r2=0.781, mig=0.0226, dci=0.700, distinct=10, top_repeat=11,
              qtc=0.11, t_amp=0.33)


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
  # Floors below the measured draws, above the entangled beta 4 (0.011).
  assert scores['mig'] >= 0.8 * MEASURED['mig'], scores['mig']
  assert scores['dci_disentanglement'] >= MEASURED['dci'] - 0.03
  names = collections.Counter(b['label'] for b in result['best'])
  # How many distinct names appear, and how often the commonest repeats,
  # varies with the draw (11 / 12, 10 / 14 and 10 / 14).
  assert len(names) >= MEASURED['distinct'] - 1, names
  assert max(names.values()) <= MEASURED['top_repeat'] + 1, names
  encode = _read(demo_run, 'factors', 'summary.json')
  assert 1 <= encode['scalars']['num_active'] <= 32


def test_factors_carry_the_slow_waves_the_pruning_beta_dropped(demo_run):
  summary = _read(demo_run, 'disentanglement', 'summary.json')
  encoded = {row['factor']: row for row in summary['tables']['encoded']}
  # Held-out linear R^2 of the true QTc and T amplitude from the active
  # codes: 0.37-0.45 and 0.45-0.60 measured, 0.11 and 0.33 for the beta-VAE
  # at beta 256 (PRUNED).
  assert encoded['qtc']['r2_linear'] >= MEASURED['qtc'] - 0.1, encoded['qtc']
  assert encoded['t_amp']['r2_linear'] >= MEASURED['t_amp'] - 0.1, (
      encoded['t_amp'])
  assert MEASURED['qtc'] - 0.1 > PRUNED['qtc']
  assert MEASURED['t_amp'] - 0.1 > PRUNED['t_amp']
  # The large waves stay encoded (QRS duration 0.92-0.93 in all three draws).
  assert encoded['qrs_dur']['r2_linear'] >= 0.8, encoded['qrs_dur']
