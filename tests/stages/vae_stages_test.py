"""End-to-end tests of the VAE factor stages on a tiny trained run (8 CPUs)."""

import csv
import importlib.util
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from factorecg_jax import stages
from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.data import sources
from factorecg_jax.stages import _common
from factorecg_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
stages.discover()


def _load_config(name: str, arg: str | None = None):
  path = os.path.join(REPO, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """configs/demo.py:tiny trained for its 4 steps, inputs normalised."""
  name = 'jax_disable_most_optimizations'
  old = jax.config.values[name]
  jax.config.update(name, True)
  config = _load_config('demo', 'tiny')
  # Per-lead normalisation exercises the de-normalised decoder outputs.
  config.data.normalization = 'per_lead'
  # The analysis asks for these fields; training with them too lets both
  # share one compiled simulator.
  config.data.extra_keys = ('factors', 'labels')
  config.analysis.kl_threshold = 0.02
  config.analysis.record_index = 5
  config.analysis.interventions = False  # covered by their own tests
  config.analysis.update(metrics_num_train=100, metrics_num_test=100)
  workdir = str(tmp_path_factory.mktemp('tiny_vae_run'))
  state = train.train_and_evaluate(config, workdir)
  yield dict(config=config, workdir=workdir, params=state.params)
  jax.config.update(name, old)


def _validation_beats(config, n):
  """The analysis split's records in mV, read like the pipeline reads them."""
  return sources.simulate_batch(
      config.data.seed, 'validation', np.arange(n), mode=config.data.mode,
      fields=('beat', 'factors', 'labels'), max_chunk=32)


def test_restore_model(run):
  model, params = _common.restore_model(run['config'], run['workdir'])
  assert model.latents == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               jax.device_get(run['params']))


def test_restore_errors(run, tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    _common.restore_model(run['config'], str(tmp_path))
  other = ml_collections.ConfigDict(run['config'].to_dict())
  other.model.latents = 5
  with pytest.raises(ValueError, match='latents'):
    _common.restore_model(other, run['workdir'])


def test_encode_mode(run, capsys):
  config, workdir = run['config'], run['workdir']
  summary = stages.run_stage('encode', config, workdir)
  folder = os.path.join(workdir, 'factors')
  saved = factors_lib.load_factors(
      os.path.join(folder, 'factors_validation.npz'))
  assert saved['mu'].shape == (64, 4) and saved['sd'].shape == (64, 4)
  np.testing.assert_array_equal(saved['ids'], np.arange(64))
  assert saved['factors'].shape == (64, 14)
  assert saved['labels'].shape == (64, 16)
  assert int(saved['step']) == 4

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
  assert f'{len(want)} of 4 factors active' in capsys.readouterr().out
  with open(os.path.join(folder, 'factors_validation.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 64 and 'true_qrs_dur' in rows[0]
  assert os.path.getsize(os.path.join(folder, 'kl_per_dim.png')) > 0


def test_traverse_mode(run):
  config, workdir = run['config'], run['workdir']
  config.analysis.kl_threshold = 0.0  # every factor, whatever training did
  try:
    summary = stages.run_stage('traverse', config, workdir)
  finally:
    config.analysis.kl_threshold = 0.02
  folder = os.path.join(workdir, 'traversals')
  arrays = factors_lib.load_factors(os.path.join(folder, 'traversals.npz'))
  sds = tuple(config.analysis.traversal_sds)
  assert arrays['population'].shape == (4, len(sds), 600, 12)
  assert arrays['individual'].shape == (4, len(sds), 600, 12)
  assert sorted(summary['details']['dims']) == [0, 1, 2, 3]
  for d in summary['details']['dims']:
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
    for i in range(4):
      np.testing.assert_allclose(arrays[traversal][i, zero], beat, atol=1e-4)
  # Population SD units: the +3 SD latent is 3 SDs of mu from the mean.
  np.testing.assert_allclose(arrays['scale'], saved['mu'].std(0), rtol=1e-6)


def test_evaluate_mode(run):
  result = stages.run_stage('evaluate', run['config'], run['workdir'])
  folder = os.path.join(run['workdir'], 'disentanglement')
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


def test_blackbox_and_downstream_comparison(run):
  config, workdir = run['config'], run['workdir']
  box = stages.run_stage('blackbox', config, workdir)
  assert [r['name'] for r in box['tables']['runs']] == [
      'reduced_ef_beat', 'mortality_beat']
  for name, path in box['files'].items():
    assert os.path.exists(os.path.join(workdir, path)), name
  pred = np.load(os.path.join(workdir, box['files']['reduced_ef_beat']))
  # The ResNets are scored on the records the factor models are tested on.
  np.testing.assert_array_equal(pred['index'],
                                np.arange(config.downstream.num_test))

  result = stages.run_stage('downstream', config, workdir)
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
  from factorecg_jax.data import simulator  # pylint: disable=g-import-not-at-top
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


def test_downstream_on_ptbxl_superclasses(run, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from factorecg_jax.data.ptbxl import ptbxl_dataset_builder as pb  # pylint: disable=g-import-not-at-top
  root, data_dir = str(tmp_path / 'ptb-xl'), str(tmp_path / 'tfds')
  num_test, num_train = _write_ptbxl_like(root)
  builder = pb.Builder(config='default', data_dir=data_dir, batch_size=16,
                       file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=root))
  config = ml_collections.ConfigDict(run['config'].to_dict())
  config.downstream.ptbxl.update(name='ptbxl/default', data_dir=data_dir)
  config.downstream.external_mode = ''
  config.blackbox.targets = ()  # scored in the test above
  workdir = str(tmp_path / 'run')
  # The trained tiny VAE of the module's run, in a workdir of its own.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(run['workdir'], workdir,
                  ignore=shutil.ignore_patterns('downstream', 'blackbox'))
  result = stages.run_stage('downstream', config, workdir)
  rows = [r for r in result['tables']['comparison']
          if r['task'] == 'PTB-XL superclasses']
  assert len(rows) == 1
  assert rows[0]['model'] == 'factors + age, sex: logistic'
  assert rows[0]['n'] == num_test
  with open(os.path.join(workdir, result['files'][
      'ptbxl_superclasses_logistic'])) as f:
    fit = json.load(f)
  assert set(fit['labels_used']) | set(fit['labels_skipped']) == set(
      pb.SUPERCLASSES)
  assert 'MI' in fit['labels_skipped']  # no MI code in the fixture
  assert fit['labels_used'], fit['labels_skipped']
  assert fit['n_train'] == num_train
