"""Every stage end to end on the tiny demo config, then its report.

`configs/demo.py:tiny` runs once per module through `stages.run_all`
(simulate, the black-box ResNets, training, encode, traverse, evaluate,
downstream, explain with its own seconds-long measures ResNet, report): this
checks the plumbing and the outputs' shapes, not what a trained model shows
(`explain_trained_test.py`, `tests/demo_test.py` do). The checks of each
stage's outputs (restoring the model, factors, traversals, disentanglement,
the downstream comparison, explain, the report) all read this one run, so
that the tiny pipeline trains once in the suite. The module takes 2 min 27 s
alone on a 2-core Zen 4 (3 min 24 s on a Zen 3), nearly all of it the
fixture's run_all.
"""

import contextlib
import csv
import html
import io
import json
import os
import pathlib
import re
import shutil
import sys

import jax
import ml_collections
import numpy as np
import pytest

from factorecg_jax import config_checks
from factorecg_jax import demo
from factorecg_jax import stages
from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.data import simulator
from factorecg_jax.data import sources
from factorecg_jax.stages import _common
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
def pipeline_run(tmp_path_factory, fast_compile):  # pylint: disable=unused-argument
  """One `run_all` of the tiny demo: config, workdir, summaries, console."""
  stages.discover()
  workdir = str(tmp_path_factory.mktemp('pipeline_tiny'))
  config = config_checks.load_config('configs/demo.py:tiny')
  # The intervention scores have their own tests; here they would add a
  # minute to the suite's longest modules.
  config.analysis.interventions = False
  # Per-lead normalisation exercises the de-normalised decoder outputs;
  # training with the analysis fields lets both share one compiled
  # simulator.
  config.data.normalization = 'per_lead'
  config.data.extra_keys = ('factors', 'labels')
  config.analysis.kl_threshold = 0.02
  config.analysis.record_index = 5
  config.analysis.update(metrics_num_train=100, metrics_num_test=100)
  trained = {}

  def train_fn(config, workdir):
    trained['state'] = train.train_and_evaluate(config, workdir)

  console = io.StringIO()
  with contextlib.redirect_stdout(console):
    done = stages.run_all(config, workdir, train_fn=train_fn)
  assert tuple(name for name, _ in done) == EXPECTED
  return dict(config=config, workdir=workdir, done=dict(done),
              console=console.getvalue(), params=trained['state'].params)


@pytest.fixture(scope='module')
def pipeline(pipeline_run):
  """(config, workdir, {stage: summary}) of the module's `run_all`."""
  return (pipeline_run['config'], pipeline_run['workdir'],
          pipeline_run['done'])


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


# --- The VAE factor stages and the downstream comparison. ----------------


def _validation_beats(config, n):
  """The analysis split's records in mV, read like the pipeline reads them."""
  return sources.simulate_batch(
      config.data.seed, 'validation', np.arange(n), mode=config.data.mode,
      fields=('beat', 'factors', 'labels'))


def test_restore_model(pipeline_run):
  model, params = _common.restore_model(pipeline_run['config'],
                                        pipeline_run['workdir'])
  assert model.latents == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               jax.device_get(pipeline_run['params']))


def test_restore_errors(pipeline, tmp_path):
  config, workdir, _ = pipeline
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    _common.restore_model(config, str(tmp_path))
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.latents = 5
  with pytest.raises(ValueError, match='latents'):
    _common.restore_model(other, workdir)


def test_encode_stage(pipeline_run):
  config, workdir = pipeline_run['config'], pipeline_run['workdir']
  summary = pipeline_run['done']['encode']
  folder = os.path.join(workdir, 'factors')
  saved = factors_lib.load_factors(
      os.path.join(folder, 'factors_validation.npz'))
  assert saved['mu'].shape == (64, 4) and saved['sd'].shape == (64, 4)
  np.testing.assert_array_equal(saved['ids'], np.arange(64))
  assert saved['factors'].shape == (64, 14)
  assert saved['labels'].shape == (64, 16)
  assert int(saved['step']) == config.train.num_steps

  # The factors are the encoder's outputs on the normalised records.
  records = _validation_beats(config, 64)
  np.testing.assert_array_equal(saved['factors'], records['factors'])
  normalizer = _common.load_normalizer(workdir)
  assert normalizer.kind == 'per_lead'
  model, params = _common.restore_model(config, workdir)
  mu, sd = model.apply({'params': params}, normalizer(records['beat']),
                       method='encode')
  np.testing.assert_allclose(saved['mu'], mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(saved['sd'], sd, rtol=1e-4, atol=1e-5)

  kl = factors_lib.kl_per_dim(saved['mu'], saved['sd'])
  np.testing.assert_allclose(saved['kl_per_dim'], kl)
  want = [d for d in np.argsort(-kl) if kl[d] > 0.02]
  assert summary['details']['active_factors'] == want
  assert summary['scalars']['num_active'] == len(want)
  with open(os.path.join(folder, 'summary.json')) as f:
    saved_summary = json.load(f)
  assert saved_summary['details']['active_factors'] == want
  assert saved_summary['stage'] == 'encode'
  assert saved_summary['figures']['kl_per_dim'] == 'factors/kl_per_dim.png'
  assert len(saved_summary['tables']['kl_per_dim']) == 4
  assert f'{len(want)} of 4 factors active' in pipeline_run['console']
  with open(os.path.join(folder, 'factors_validation.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 64 and 'true_qrs_dur' in rows[0]
  assert os.path.getsize(os.path.join(folder, 'kl_per_dim.png')) > 0


def test_traverse_stage(pipeline_run):
  config, workdir = pipeline_run['config'], pipeline_run['workdir']
  summary = pipeline_run['done']['traverse']
  folder = os.path.join(workdir, 'traversals')
  arrays = factors_lib.load_factors(os.path.join(folder, 'traversals.npz'))
  sds = tuple(config.analysis.traversal_sds)
  # One traversal per active factor (the encode stage's list, in its order).
  dims = summary['details']['dims']
  active = pipeline_run['done']['encode']['details']['active_factors']
  assert list(dims) == list(active) and dims, (dims, active)
  assert arrays['population'].shape == (len(dims), len(sds), 600, 12)
  assert arrays['individual'].shape == (len(dims), len(sds), 600, 12)
  for d in dims:
    assert os.path.getsize(os.path.join(folder, f'factor_{d:02d}.png')) > 0
  for name in ('all_active_factors.png', 'record_5_factors.png'):
    assert os.path.getsize(os.path.join(folder, name)) > 0

  # Step 0 SD decodes the population mean / the record's factors, in mV.
  saved = factors_lib.load_factors(
      os.path.join(workdir, 'factors', 'factors_validation.npz'))
  model, params = _common.restore_model(config, workdir)
  normalizer = _common.load_normalizer(workdir)
  zero = sds.index(0.0)
  for start, traversal in ((saved['mu'].mean(0), 'population'),
                           (saved['mu'][5], 'individual')):
    beat, _ = model.apply({'params': params}, start[None].astype(np.float32),
                          method='decode')
    beat = normalizer.denormalize(np.asarray(beat))[0]
    for i in range(len(dims)):
      np.testing.assert_allclose(arrays[traversal][i, zero], beat, atol=1e-4)
  # Population SD units: the +3 SD latent is 3 SDs of mu from the mean.
  np.testing.assert_allclose(arrays['scale'], saved['mu'].std(0), rtol=1e-6)


def test_evaluate_stage(pipeline_run):
  result = pipeline_run['done']['evaluate']
  folder = os.path.join(pipeline_run['workdir'], 'disentanglement')
  with open(os.path.join(folder, 'metrics.json')) as f:
    saved = json.load(f)
  assert saved['settings']['num_train'] == 100
  assert saved['settings']['num_test'] == 100
  for key in ('mig', 'dci_disentanglement', 'sap', 'active_units'):
    assert np.isfinite(saved['scores'][key]), key
  assert 'beta_vae_eval_accuracy' not in saved['scores']
  assert saved['scores'] == result['scalars']
  assert result['tables']['factor_names']
  mats = np.load(os.path.join(folder, 'matrices.npz'))
  assert mats['mutual_info'].shape[0] == 4  # one row per latent
  # What the factors carry of each true factor: one row per true factor.
  encoded = result['tables']['encoded']
  assert [r['factor'] for r in encoded] == list(simulator.FACTOR_NAMES)
  assert saved['encoded'] == encoded
  for r in encoded:
    assert r['r2_linear'] <= 1.0 and r['r2_boosted'] <= 1.0, r
  assert os.path.getsize(os.path.join(pipeline_run['workdir'],
                                      result['figures']['encoded']))
  with open(os.path.join(folder, 'metrics.md')) as f:
    assert '## What the factors carry of each true factor' in f.read()


def test_blackbox_and_downstream_comparison(pipeline):
  config, workdir, done = pipeline
  box = done['blackbox']
  assert [r['name'] for r in box['tables']['runs']] == [
      'reduced_ef_beat', 'mortality_beat']
  for name, path in box['files'].items():
    assert os.path.exists(os.path.join(workdir, path)), name
  pred = np.load(os.path.join(workdir, box['files']['reduced_ef_beat']))
  # The ResNets are scored on the records the factor models are tested on.
  np.testing.assert_array_equal(pred['index'],
                                np.arange(config.downstream.num_test))

  result = done['downstream']
  rows = result['tables']['comparison']
  keys = {(r['task'], r['model'], r['metric']) for r in rows}
  for who in ('factors', 'oracle (true factors)'):
    assert ('16 labels', f'{who}: logistic', 'macro AUROC') in keys
    assert ('reduced EF', f'{who}: logistic', 'AUROC') in keys
    assert ('reduced EF', f'{who}: XGBoost', 'AUROC') in keys
    assert ('1-year mortality', f'{who}: Cox', 'C-index') in keys
    assert ('1-year mortality', f'{who}: Cox', 'AUROC at 1 y') in keys
  assert ('reduced EF', 'ResNet (beat)', 'AUROC') in keys
  assert ('1-year mortality', 'ResNet (beat)', 'C-index') in keys
  # 13 internal rows, and the same 13 on the external population.
  assert len(rows) == 26
  external = [r for r in rows if r['model'].endswith('external (realistic)')]
  assert len(external) == 13
  assert ('reduced EF', 'ResNet (beat) · external (realistic)',
          'AUROC') in keys
  for r in rows:
    assert r['n'] == config.downstream.num_test
    assert 0.0 <= r['low'] <= r['high'] <= 1.0, r
    assert 0.0 <= r['value'] <= 1.0, r
  # The true factors carry the labels: the oracle's macro AUROC is high.
  oracle = next(r for r in rows if r['model'].startswith('oracle')
                and r['task'] == '16 labels')
  assert oracle['value'] > 0.8
  for name in ('comparison', 'km_by_quartile', 'calibration',
               'counterfactual'):
    assert os.path.getsize(os.path.join(workdir, result['figures'][name]))
  with open(os.path.join(workdir, result['files']['markdown'])) as f:
    markdown = f.read()
  assert '| reduced EF | ResNet (beat) | AUROC |' in markdown
  assert '## Counterfactual' in markdown
  assert '## AUROC per label' in markdown
  assert '## Paired differences' in markdown
  # Paired differences: each factor model minus each ResNet and minus its
  # oracle twin, internal and external; on all test records (the ResNets
  # predicted every one) the difference of the two comparison rows.
  diffs = result['tables']['differences']
  internal = {(d['task'], d['model'], d['reference'], d['metric'])
              for d in diffs if ' · ' not in d['model']}
  oracle = 'oracle (true factors)'
  assert internal == {
      ('16 labels', 'factors: logistic', f'{oracle}: logistic',
       'macro AUROC'),
      ('reduced EF', 'factors: logistic', 'ResNet (beat)', 'AUROC'),
      ('reduced EF', 'factors: logistic', f'{oracle}: logistic', 'AUROC'),
      ('reduced EF', 'factors: XGBoost', 'ResNet (beat)', 'AUROC'),
      ('reduced EF', 'factors: XGBoost', f'{oracle}: XGBoost', 'AUROC'),
      ('1-year mortality', 'factors: Cox', 'ResNet (beat)', 'C-index'),
      ('1-year mortality', 'factors: Cox', 'ResNet (beat)', 'AUROC at 1 y'),
      ('1-year mortality', 'factors: Cox', f'{oracle}: Cox', 'C-index'),
      ('1-year mortality', 'factors: Cox', f'{oracle}: Cox', 'AUROC at 1 y'),
  }
  assert len(diffs) == 2 * len(internal)
  value = {(r['task'], r['model'], r['metric']): r['value'] for r in rows}
  for d in diffs:
    want = (value[(d['task'], d['model'], d['metric'])]
            - value[(d['task'], d['reference'], d['metric'])])
    assert abs(d['difference'] - want) < 1e-9, (d, want)
    assert d['low'] <= d['high'] and d['n'] == config.downstream.num_test
    assert d['within_margin'] == (d['difference'] >= -d['margin'])
  assert any(k.startswith('difference: reduced EF, factors: logistic - '
                          'ResNet (beat)') for k in result['headline'])
  per_label = result['tables']['per_label']
  assert len(per_label) == 16
  assert set(per_label[0]) == {'label', 'prevalence', 'factors: logistic',
                               'oracle: logistic'}
  top = result['tables']['top_factors']
  assert {t['fit'] for t in top} >= {'factors_reduced_ef_logistic',
                                     'factors_mortality_cox'}
  cf = result['details']['counterfactual']
  assert 0.0 < cf['risk'] < 1.0 and 0.0 < cf['new_risk'] < 1.0


def _write_ptbxl_like(root, n=32):
  """A PTB-XL-shaped folder: simulated 10-s strips as WFDB, metadata CSVs.

  SCP codes follow the simulator's labels (LBBB/RBBB -> CD, LVH -> HYP, ST
  or T changes -> STTC, no label -> NORM), every 4th record in fold 10 (test),
  every 8th in fold 9 (validation).

  Returns:
    (records in fold 10, records in folds 1-8).
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from factorecg_jax.data import ingest  # pylint: disable=g-import-not-at-top
  rec = jax.device_get(simulator.simulate_records(
      jax.random.key(11), n, mode='realistic', strips=True,
      fields=('strip', 'labels')))
  lab = {name: rec['labels'][:, i]
         for i, name in enumerate(simulator.LABEL_NAMES)}
  rows = []
  for i in range(n):
    ecg_id = i + 1
    codes = {}
    if lab['lbbb'][i] or lab['rbbb'][i]:
      codes['CLBBB'] = 100.0
    if lab['lvh'][i]:
      codes['LVH'] = 100.0
    if lab['st_depression'][i] or lab['t_wave_inversion'][i]:
      codes['NDT'] = 100.0
    if not rec['labels'][i].any():
      codes['NORM'] = 100.0
    name = f'records500/00000/{ecg_id:05d}_hr'
    ingest.write_wfdb(os.path.join(root, name), rec['strip'][i], 500)
    rows.append(dict(ecg_id=ecg_id, patient_id=ecg_id, age=40.0 + i,
                     sex=i % 2, scp_codes=repr(codes),
                     strat_fold=(10 if i % 4 == 0 else 9 if i % 8 == 1
                                 else 1 + i % 8),
                     filename_lr=name, filename_hr=name))
  pd.DataFrame(rows).to_csv(os.path.join(root, 'ptbxl_database.csv'),
                            index=False)
  pd.DataFrame({
      'diagnostic': [1.0, 1.0, 1.0, 1.0],
      'diagnostic_class': ['NORM', 'CD', 'HYP', 'STTC'],
  }, index=['NORM', 'CLBBB', 'LVH', 'NDT']).to_csv(
      os.path.join(root, 'scp_statements.csv'))
  return (sum(1 for r in rows if r['strat_fold'] == 10),
          sum(1 for r in rows if r['strat_fold'] <= 8))


def test_downstream_on_ptbxl_superclasses(pipeline, tmp_path):
  run_config, run_workdir, _ = pipeline
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from factorecg_jax.data.ptbxl import ptbxl_dataset_builder as pb  # pylint: disable=g-import-not-at-top
  root, data_dir = str(tmp_path / 'ptb-xl'), str(tmp_path / 'tfds')
  num_test, num_train = _write_ptbxl_like(root)
  builder = pb.Builder(config='default', data_dir=data_dir, batch_size=16,
                       file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=root))
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.downstream.ptbxl.update(name='ptbxl/default', data_dir=data_dir)
  config.downstream.external_mode = ''
  # The simulated runs are scored in the test above; only PTB-XL's ResNet.
  config.blackbox.targets = ()
  workdir = str(tmp_path / 'run')
  # The trained tiny VAE of the module's run, in a workdir of its own.
  shutil.copytree(run_workdir, workdir,
                  ignore=shutil.ignore_patterns('downstream', 'blackbox',
                                                'explain', 'report'))
  blackbox = stages.run_stage('blackbox', config, workdir)
  assert [r['name'] for r in blackbox['tables']['runs']] == [
      'ptbxl_superclass_beat']
  # The ResNet learnt PTB-XL's 5 superclasses from the builder's folds 1-8
  # and predicted every record of fold 10, in order.
  run = os.path.join(workdir, 'blackbox', 'ptbxl_superclass_beat')
  with open(os.path.join(run, 'config.json')) as f:
    data = json.load(f)['data']
  assert (data['source'], data['name'], data['eval_split']) == (
      'tfds', 'ptbxl/default', 'test')
  pred = np.load(os.path.join(run, train.PREDICTIONS_FILE))
  np.testing.assert_array_equal(pred['index'], np.arange(num_test))
  assert pred['logits'].shape == (num_test, len(pb.SUPERCLASSES))
  result = stages.run_stage('downstream', config, workdir)
  rows = [r for r in result['tables']['comparison']
          if r['task'] == 'PTB-XL superclasses']
  assert [r['model'] for r in rows] == [
      'factors: logistic', 'factors + age, sex: logistic', 'ResNet (beat)']
  for r in rows:
    assert r['n'] == num_test and 0.0 <= r['value'] <= 1.0, r
  # The ResNet's row scores its saved predictions.
  test = sources.TfdsSource('ptbxl/default', 'test', data_dir=data_dir,
                            fields=('superclass',), download=False)
  labels = test.get_batch(np.arange(num_test))['superclass']
  from factorecg_jax.analysis import statistics  # pylint: disable=g-import-not-at-top
  expected = statistics.bootstrap_macro_auroc(
      labels, pred['logits'], num_resamples=config.downstream.num_resamples,
      seed=config.seed)
  assert rows[2]['value'] == pytest.approx(expected['value'])
  assert (rows[2]['low'], rows[2]['high']) == pytest.approx(
      (expected['low'], expected['high']))
  with open(os.path.join(workdir, result['files'][
      'ptbxl_superclasses_logistic'])) as f:
    fit = json.load(f)
  assert set(fit['labels_used']) | set(fit['labels_skipped']) == set(
      pb.SUPERCLASSES)
  assert 'MI' in fit['labels_skipped']  # no MI code in the fixture
  assert fit['labels_used'], fit['labels_skipped']
  assert fit['n_train'] == num_train


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
  cells = sum(len(p[g]) for p in headline['downstream']
              for g in ('vs_resnet', 'vs_oracle'))
  assert cells == len(done['downstream']['tables']['differences'])
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
