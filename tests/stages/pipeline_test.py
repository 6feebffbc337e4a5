"""Every stage end to end on the tiny demo config, then its report.

`configs/demo.py:tiny` runs once per module through `stages.run_all`
(simulate, the black-box ResNets, training, encode, traverse, evaluate,
downstream, explain with its own seconds-long measures ResNet, report): this
checks the plumbing and the outputs' shapes, not what a trained model shows
(`explain_trained_test.py`, `tests/demo_test.py` do). The explain stage's
checks live here so that its tiny run happens once in the suite. The module
takes 4 min 11 s on the 2-core development machine (5 min 37 s with another
CPU-heavy job running), nearly all of it the run_all of the fixture; the
report itself renders in seconds.
"""

import html
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest

from factorecg_jax import config_checks
from factorecg_jax import demo
from factorecg_jax import stages
from factorecg_jax.data import simulator
from factorecg_jax.stages import explain
from factorecg_jax.training import train

# tests/ has no __init__.py: put it on the path for the shared helper.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
# pylint: disable-next=g-import-not-at-top,import-error,wrong-import-position
import browser

pytestmark = pytest.mark.usefixtures('fast_compile')

# The stages the tiny demo config runs, in `--mode=all` order.
EXPECTED = ('simulate', 'blackbox', 'train', 'encode', 'traverse',
            'evaluate', 'downstream', 'explain', 'report')
# The report's sections: stage order, training after the simulated data, the
# report itself never listed.
SECTIONS = ['simulate', 'train', 'encode', 'traverse', 'evaluate',
            'blackbox', 'downstream', 'explain']


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory, fast_compile):  # pylint: disable=unused-argument
  """(config, workdir, {stage: summary}) of one `run_all` of the tiny demo."""
  stages.discover()
  workdir = str(tmp_path_factory.mktemp('pipeline_tiny'))
  config = config_checks.load_config('configs/demo.py:tiny')
  # The intervention scores have their own tests; here they would add a
  # minute to the suite's longest modules.
  config.analysis.interventions = False
  done = stages.run_all(config, workdir, train_fn=train.train_and_evaluate)
  assert tuple(name for name, _ in done) == EXPECTED
  return config, workdir, dict(done)


@pytest.fixture(scope='module')
def tiny_run(pipeline):
  """(config, workdir, explain summary): the explain stage's tiny outputs."""
  config, workdir, done = pipeline
  return config, workdir, done['explain']


# --- The explain stage (formerly explain_stage_test.py). ------------------


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


# --- The report of the whole run. -----------------------------------------


def _page(workdir):
  return (pathlib.Path(workdir) / 'report' / 'index.html').read_text(
      encoding='utf-8')


def _section(text, stage):
  start = text.index(f'<section id="stage-{stage}">')
  return text[start:text.index('</section>', start)]


def test_report_has_every_section(pipeline):
  _, workdir, done = pipeline
  assert done['report']['files']['html'] == 'report/index.html'
  text = _page(workdir)
  ids = re.findall(r'<section id="stage-([^"]+)"', text)
  assert ids == SECTIONS
  assert 'Not run yet' not in text
  # First screen: reconstruction, factors named, downstream, attribution.
  glance = text[text.index('<section id="glance">'):
                text.index('<section id="stage-')]
  for heading in ('Reconstruction', 'Factors found and named',
                  'Downstream: factor models vs black-box ResNet vs oracle',
                  'Attribution: best method per target'):
    assert heading in glance
  assert 'has not run' not in glance
  # Traversals: every figure embedded with its reading guide.
  traverse = _section(text, 'traverse')
  figures = done['traverse']['figures']
  assert traverse.count('src="data:image/png;base64,') == len(figures)
  assert 'the waves that change are what the factor encodes' in traverse
  # The disentanglement table and the downstream comparison, every row.
  evaluate = _section(text, 'evaluate')
  assert '<h3>factor_names</h3>' in evaluate
  for row in done['evaluate']['tables']['factor_names']:
    assert f'<td>{html.escape(row["label"])}</td>' in evaluate
  downstream = _section(text, 'downstream')
  assert '<h3>comparison</h3>' in downstream
  assert downstream.count('<tr>') >= len(
      done['downstream']['tables']['comparison'])
  # The explain ranking is cut on the page, whole in tables.md.
  assert 'Showing the first 40 of 540 rows' in _section(text, 'explain')
  tables_md = (pathlib.Path(workdir) / 'report' / 'tables.md').read_text()
  assert '### ranking' in tables_md and '### factor_names' in tables_md
  # Reproducibility from config.json.
  assert '<h2 id="reproducibility">' in text
  assert 'Resolved config (config.json)' in text
  # Every figure of every stage, and the training curves, embedded.
  num_figures = sum(len(s['figures']) for name, s in done.items()
                    if s and name != 'report')
  assert text.count('src="data:image/png;base64,') == num_figures + 1
  assert done['report']['scalars']['figures_embedded'] == num_figures + 1
  assert done['report']['scalars']['figures_missing'] == 0


def test_report_headline_numbers(pipeline):
  _, workdir, done = pipeline
  with open(os.path.join(workdir, 'report', 'headline.json')) as f:
    headline = json.load(f)
  final = train.final_metrics(workdir)
  assert headline['reconstruction']['eval_r2'] == final['eval/r2']
  assert headline['reconstruction']['active_factors'] == (
      done['encode']['scalars']['num_active'])
  names = done['evaluate']['tables']['factor_names']
  factors = headline['factors']
  assert factors['named'] == len(names)
  assert factors['distinct_names'] == len({r['label'] for r in names})
  assert factors['num_true_factors'] == len(simulator.FACTOR_NAMES)
  comparison = done['downstream']['tables']['comparison']
  cells = sum(len(p[g]) for p in headline['downstream']
              for g in ('factors', 'resnet', 'oracle'))
  assert cells == len(comparison)
  assert {p['test set'] for p in headline['downstream']} == {
      'internal', 'external (realistic)'}
  assert any(p['resnet'] for p in headline['downstream'])
  assert [b['target'] for b in headline['attribution']] == list(
      simulator.MEASURE_NAMES)
  assert headline['stages_run'] == SECTIONS
  assert headline['stages_not_run'] == []


def test_report_opens_in_headless_chromium(pipeline):
  _, workdir, done = pipeline
  driver = browser.require_browser()
  try:
    driver.set_page_load_timeout(60)
    driver.get((pathlib.Path(workdir) / 'report' / 'index.html').as_uri())
    assert browser.console_errors(driver) == []
    widths = driver.execute_script(
        'return Array.from(document.images).map(i => i.naturalWidth);')
    assert len(widths) == done['report']['scalars']['figures_embedded']
    assert all(w > 0 for w in widths), widths
  finally:
    driver.quit()


def test_rerun_skips_stages_but_renders_the_report(pipeline, capsys):
  config, workdir, done = pipeline
  before = done['report']['created']
  capsys.readouterr()
  demo.run_all(config, workdir)
  out = capsys.readouterr().out
  # Everything up to date except the report (always=True).
  assert out.count('up to date') == len(EXPECTED) - 1
  assert 'report] started' in out
  page = os.path.join(workdir, 'report', 'index.html')
  assert re.search(r'^\s+report\s+' + re.escape(page) + r'$', out,
                   re.MULTILINE), out[-2000:]
  assert stages.read_summary(workdir, 'report')['created'] >= before
  assert 'id="stage-report"' not in _page(workdir)


def test_demo_explain_sizes_reach_the_measures_resnet():
  """configs/demo.py's explain sizes (not the tiny ones) build its config."""
  config = config_checks.load_config('configs/demo.py')
  cfg = explain.resnet_config(config)
  assert cfg.data.num_train == config.explain.num_train == 20_000
  assert cfg.train.num_steps == config.explain.num_steps == 500
  assert cfg.train.checkpoint_every <= 500 and cfg.train.eval_every <= 500
  assert config.explain.num_records > 0  # the demo runs the stage
