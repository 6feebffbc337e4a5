"""The `explain` stage end to end on the tiny demo config.

With `configs/demo.py:tiny` the stage trains its own seconds-long measures
ResNet and writes every output (summary shape, figures, review page): this
checks the plumbing; `explain_trained_test.py` checks what a trained model
shows.
"""

import json
import os

import numpy as np
import pytest

from factorecg_jax import config_checks
from factorecg_jax import stages
from factorecg_jax.data import simulator
from factorecg_jax.stages import explain

pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  stages.discover()
  workdir = str(tmp_path_factory.mktemp('explain_tiny'))
  config = config_checks.load_config('configs/demo.py:tiny')
  record = stages.run_stage('explain', config, workdir)
  return config, workdir, record


def test_summary_has_every_table_and_figure(tiny_run):
  config, workdir, record = tiny_run
  ex = config.explain
  num_methods = 10  # nine methods and the random control
  names = simulator.MEASURE_NAMES
  rows = record['tables']['ranking']
  assert len(rows) == len(names) * len(explain.MEASURES) * num_methods
  assert {r['target'] for r in rows} == set(names)
  for target in names:
    for measure in explain.MEASURES:
      group = [r for r in rows if r['target'] == target
               and r['measure'] == measure]
      assert sum(r['best'] for r in group) >= 1
      ranks = sorted(r['rank'] for r in group)
      assert ranks[0] == 1 and ranks[-1] <= num_methods
  assert len(record['tables']['agreement']) == len(names)
  for row in record['tables']['agreement']:
    assert -1.0 <= row['kendall_tau'] <= 1.0
  steps = [r for r in record['tables']['randomisation']
           if r['method'] == 'saliency']
  assert steps[0]['randomised'] == 'original'
  assert steps[0]['spearman'] == pytest.approx(1.0, abs=1e-5)
  assert [s['randomised'] for s in steps[1:]][0] == 'classifier'
  assert {r['method'] for r in record['tables']['completeness']} == {
      'integrated_gradients', 'deeplift'}
  for name, path in record['figures'].items():
    assert os.path.getsize(os.path.join(workdir, path)) > 1000, name
  for target in ex.figure_targets:
    assert f'methods_{target}' in record['figures']
  assert 'ranking_aopc' in record['figures']
  assert 'ranking_mass_accuracy' in record['figures']
  for name in names:
    assert f'mae/{name}' in record['scalars']
  with open(os.path.join(workdir, 'explain', 'summary.json')) as f:
    assert json.load(f)['stage'] == 'explain'
  scores = np.load(os.path.join(workdir, record['files']['scores']))
  assert scores['qrs_ms/AOPC'].shape == (num_methods, ex.num_records)
  ranking_md = open(os.path.join(workdir, record['files']['ranking'])).read()
  assert '### qrs_ms' in ranking_md


def test_review_page_is_blinded_and_keyed(tiny_run):
  config, workdir, record = tiny_run
  html = open(os.path.join(workdir, record['files']['review_page'])).read()
  with open(os.path.join(workdir, record['files']['review_key'])) as f:
    key = json.load(f)
  items = key['items']
  ex = config.explain
  assert len(items) == ex.review_records * len(ex.review_targets) * 10
  methods = {item['method'] for item in items.values()}
  assert explain.REVIEW_RANDOM in methods and 'gradcam' in methods
  for method in methods - {explain.REVIEW_RANDOM}:
    assert method not in html
  assert html.count('data:image/png;base64,') == len(items)
