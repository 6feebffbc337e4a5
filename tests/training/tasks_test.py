"""Tests for the supervised tasks (classify, regress, cox) and their configs."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from sklearn import metrics as sk_metrics

from factorecg_jax import config_checks
from factorecg_jax import models
from factorecg_jax.models import resnet
from factorecg_jax.training import losses
from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import survival_loss
from factorecg_jax.training import train

pytestmark = pytest.mark.usefixtures('fast_compile')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RESNET_CONFIG = os.path.join(ROOT, 'configs', 'resnet.py')
B, T = 16, 64


def _fake_batch(seed=0, n=B):
  """A batch with every key the tasks read, age and sex included."""
  rng = np.random.default_rng(seed)
  return {
      'ecg': rng.normal(size=(n, T, 12)).astype(np.float32),
      'mask': np.ones(n, np.float32),
      'index': np.arange(n, dtype=np.int32),
      'labels': rng.random((n, 3)) < 0.4,
      'reduced_ef': rng.random(n) < 0.5,
      'ef': rng.normal(50, 10, n).astype(np.float32),
      'time': rng.exponential(2.0, n).astype(np.float32),
      'event': rng.random(n) < 0.6,
      'age': rng.normal(62, 14, n).astype(np.float32),
      'sex': rng.integers(0, 2, n).astype(np.int32),
  }


def _init(model, batch, extra_keys=()):
  x, extra = losses.model_inputs(batch, extra_keys=extra_keys)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1],
                                  None if extra is None else extra[:1])
  return variables['params'], {'batch_stats': variables['batch_stats']}


def test_model_inputs_join_extra_keys():
  batch = _fake_batch()
  x, extra = losses.model_inputs(batch, extra_keys=('age', 'sex'),
                                 target_key='ignored')
  assert x is batch['ecg']
  assert extra.shape == (B, 2) and extra.dtype == jnp.float32
  np.testing.assert_array_equal(extra[:, 0], batch['age'])
  np.testing.assert_array_equal(extra[:, 1], batch['sex'])
  assert losses.model_inputs(batch)[1] is None
  with pytest.raises(KeyError, match="no 'height'.*data.extra_keys"):
    losses.model_inputs(batch, extra_keys=('height',))


def test_classify_with_extra_inputs_updates_batch_stats():
  """A ResNet with age and sex as extras: loss, new batch_stats, eval."""
  batch = _fake_batch()
  model = resnet._TinyResNet(num_outputs=3, num_extra=2)
  params, model_state = _init(model, batch, ('age', 'sex'))
  kw = dict(model=model, target_key='labels', extra_keys=('age', 'sex'))
  loss, (metrics, new_state) = jax.jit(
      functools.partial(losses.classify_loss, **kw))(
          params, batch, jax.random.key(1), model_state=model_state)
  logits, _ = model.apply({'params': params, **model_state}, batch['ecg'],
                          losses.model_inputs(batch, extra_keys=(
                              'age', 'sex'))[1], train=True,
                          rngs={'dropout': jax.random.key(1)},
                          mutable=['batch_stats'])[0]
  y = batch['labels'].astype(np.float32)
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['bce'], expected, rtol=1e-5)
  # The running statistics moved towards the batch's.
  before = jax.tree.leaves(model_state)
  after = jax.tree.leaves(new_state)
  assert jax.tree.structure(new_state) == jax.tree.structure(model_state)
  assert any(not np.allclose(a, b) for a, b in zip(after, before))

  out = jax.jit(functools.partial(losses.classify_eval, **kw))(
      params, batch, model_state=model_state)
  assert out['logits'].shape == (B, 3) and out['targets'].shape == (B, 3)
  assert out['loss'].shape == (B,)
  # Eval uses the running statistics: no dropout, deterministic.
  again = jax.jit(functools.partial(losses.classify_eval, **kw))(
      params, batch, model_state=model_state)
  np.testing.assert_array_equal(out['logits'], again['logits'])


def test_classify_summary_matches_sklearn():
  rng = np.random.default_rng(3)
  targets = (rng.random((50, 2)) < 0.3).astype(np.float32)
  logits = rng.normal(size=(50, 2)) + 1.5 * targets
  summary = losses.classify_summarize(
      {'loss': np.float64(0.4)}, {'logits': logits, 'targets': targets})
  per = [sk_metrics.roc_auc_score(targets[:, k], logits[:, k])
         for k in range(2)]
  assert summary['auroc_dim_00'] == pytest.approx(per[0], abs=1e-12)
  assert summary['auroc_dim_01'] == pytest.approx(per[1], abs=1e-12)
  assert summary['auroc'] == pytest.approx(np.mean(per), abs=1e-12)
  assert summary['bce'] == 0.4
  assert summary['auroc'] > 0.7  # the scores carry the labels
  probs = 1 / (1 + np.exp(-logits))
  brier = np.mean([sk_metrics.brier_score_loss(targets[:, k], probs[:, k])
                   for k in range(2)])
  assert summary['brier'] == pytest.approx(brier, abs=1e-12)
  assert 0.0 <= summary['ece'] <= 1.0
  assert np.isfinite(summary['calibration_slope'])


def test_binary_classify_accepts_flat_bool_targets():
  batch = _fake_batch()
  model = resnet._TinyResNet(num_outputs=1)
  params, model_state = _init(model, batch)
  out = losses.classify_eval(params, batch, model=model,
                             model_state=model_state, target_key='reduced_ef')
  np.testing.assert_array_equal(out['targets'][:, 0], batch['reduced_ef'])
  with pytest.raises(ValueError, match='num_outputs=3'):
    losses.classify_eval(params, batch, model=model, model_state=model_state,
                         target_key='labels')


def test_regress_standardises_and_reports_physical_units():
  batch = _fake_batch()
  model = resnet._TinyResNet(num_outputs=1, use_batchnorm=False)
  params = jax.jit(model.init)(jax.random.key(0), batch['ecg'][:1])['params']
  kw = dict(model=model, model_state={}, target_key='ef',
            target_mean=[50.0], target_std=[10.0])
  loss, (_, new_state) = losses.regress_loss(params, batch,
                                             jax.random.key(0), **kw)
  assert new_state == {}  # no BatchNorm, no state
  out = losses.regress_eval(params, batch, **kw)
  z = (batch['ef'] - 50.0) / 10.0
  pred_z = (np.asarray(out['predictions'][:, 0]) - 50.0) / 10.0
  np.testing.assert_allclose(out['loss'], (pred_z - z) ** 2, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(out['targets'][:, 0], batch['ef'])
  summary = losses.regress_summarize({}, jax.device_get(out))
  np.testing.assert_allclose(
      summary['mae'], np.mean(np.abs(out['predictions'][:, 0] - batch['ef'])),
      rtol=1e-5)
  assert np.isfinite(float(loss)) and summary['mae'] > 0


def test_regress_names_targets_and_skips_missing_ones():
  """Per-target MAE under readable names; NaN targets weigh nothing."""
  batch = _fake_batch()
  rng = np.random.default_rng(1)
  y = np.stack([rng.normal(400, 30, B), rng.normal(1.0, 0.3, B)], 1)
  y = y.astype(np.float32)
  y[:4, 0] = np.nan  # QT not measured on four records
  batch['measures'] = y
  batch['mask'][-2:] = 0.0  # padding
  model = resnet._TinyResNet(num_outputs=2, use_batchnorm=False,
                             dropout_rate=0.0)
  params = jax.jit(model.init)(jax.random.key(0), batch['ecg'][:1])['params']
  kw = dict(model=model, model_state={}, target_key='measures',
            target_mean=[400.0, 1.0], target_std=[30.0, 0.3],
            target_names=('qt_ms', 'r_amp_v5_mv'))
  loss, _ = losses.regress_loss(params, batch, jax.random.key(0), **kw)
  out = jax.device_get(losses.regress_eval(params, batch, **kw))
  pred = out['predictions']
  z = (y - [400.0, 1.0]) / [30.0, 0.3]
  zp = (pred - [400.0, 1.0]) / [30.0, 0.3]
  seen = np.isfinite(y) & (batch['mask'][:, None] > 0)
  np.testing.assert_allclose(loss, np.mean(((zp - z) ** 2)[seen]), rtol=1e-5)
  assert np.isfinite(out['loss']).all()
  # The loop's masked means of the eval outputs, then the summary.
  real = batch['mask'] > 0
  means = {k: v[real].mean(0) for k, v in out.items()
           if k not in ('predictions', 'targets')}
  collected = {k: out[k][real] for k in ('predictions', 'targets')}
  summary = losses.regress_summarize(means, collected)
  for k, name in enumerate(('qt_ms', 'r_amp_v5_mv')):
    ok = seen[:, k]
    expected = np.mean(np.abs(pred[ok, k] - y[ok, k]))
    assert summary[f'mae_{name}'] == pytest.approx(expected, rel=1e-5)
    assert summary[f'mae_dim_{k:02d}'] == pytest.approx(expected, rel=1e-5)
  assert np.isfinite(summary['r2']) and np.isfinite(summary['rmse'])
  with pytest.raises(ValueError, match='target_names has 1 names'):
    losses.regress_eval(params, batch, **{**kw, 'target_names': ('qt',)})


def test_cox_loss_is_the_global_batch_partial_likelihood():
  """On 8 devices the loss is cox_loss of the whole batch, not per shard."""
  batch = _fake_batch(n=32)
  batch['mask'][-5:] = 0.0  # padded rows are in no risk set
  model = resnet._TinyResNet(num_outputs=1, dropout_rate=0.0)
  params, model_state = _init(model, batch)
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  loss_fn = jax.jit(functools.partial(losses.cox_loss, model=model))
  with jax.set_mesh(mesh):
    loss, (metrics, _) = loss_fn(
        params, sharding.make_global_batch(batch, mesh), jax.random.key(0),
        model_state=model_state)
  (risk, _), _ = model.apply({'params': params, **model_state}, batch['ecg'],
                             train=True, mutable=['batch_stats'])
  expected = survival_loss.cox_loss(risk[:, 0], batch['time'],
                                    batch['event'], batch['mask'])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Not the mean of per-device partial likelihoods (4 rows each).
  shards = [survival_loss.cox_loss(risk[i:i + 4, 0], batch['time'][i:i + 4],
                                   batch['event'][i:i + 4],
                                   batch['mask'][i:i + 4])
            for i in range(0, 32, 4)]
  assert abs(float(np.mean(shards)) - float(expected)) > 1e-3
  np.testing.assert_allclose(
      metrics['event_rate'], batch['event'][:27].mean(), rtol=1e-6)


def test_cox_summary():
  rng = np.random.default_rng(0)
  risk = rng.normal(size=300)
  time = rng.exponential(1.0 / np.exp(risk))
  event = rng.random(300) < 0.8
  time = np.minimum(time, 3.0)
  summary = losses.cox_summarize(
      {}, {'risk': risk, 'time': time, 'event': event})
  assert 0.6 < summary['c_index'] < 1.0  # risk drives the times
  assert 0.6 < summary['auroc_1y'] < 1.0
  np.testing.assert_allclose(
      summary['loss'], survival_loss.cox_loss(risk, time, event), rtol=1e-5)
  # The risk is the true log hazard: calibration slope near 1.
  assert 0.75 < summary['calibration_slope'] < 1.25
  # Random risk: near chance.
  null = losses.cox_summarize(
      {}, {'risk': rng.normal(size=300), 'time': time, 'event': event})
  assert abs(null['c_index'] - 0.5) < 0.1


def test_build_model_handles_presets_and_dtype():
  config = ml_collections.ConfigDict(dict(
      model_name='resnet_cpu', model=dict(num_outputs=2, filters=[8, 8],
                                          downsample=[4, 4]),
      train=dict(dtype='bfloat16')))
  model = train.build_model(config)
  assert isinstance(model, resnet.ResNet)
  assert model.stem_filters == 16 and model.kernel_size == 9  # the preset
  assert model.filters == (8, 8)  # lists (config.json) become tuples
  assert model.dtype == jnp.bfloat16
  config.model.dtype = 'float32'
  assert train.build_model(config).dtype == 'float32'  # explicit wins
  assert train._model_fields(models.MODELS['resnet_ribeiro']) >= {
      'dtype', 'num_extra'}


@pytest.mark.parametrize('arg', [
    'reduced_ef', 'labels', 'ef', 'mortality', 'reduced_ef:tiny',
    'mortality:strip:age_sex:tiny', 'measures', 'measures:strip:age_sex:tiny'])
def test_resnet_config_variants_validate(arg):
  config = config_checks.load_config(f'{RESNET_CONFIG}:{arg}')
  config_checks.validate(config)
  assert config.model_name == 'resnet_cpu'
  assert config.task in losses.TASKS
  if 'strip' in arg:
    assert config.data.input_key == 'strip'
    assert config.model.num_extra == 2
    target = {'mortality': {'time', 'event'}}.get(arg.split(':')[0],
                                                  {arg.split(':')[0]})
    assert {'age', 'sex'} | target <= set(config.data.extra_keys)
  if arg == 'labels':
    assert config.model.num_outputs == 16
  if arg.startswith('measures'):
    assert config.task == 'regress' and config.loss.target_key == 'measures'
    assert config.model.num_outputs == len(config.loss.target_names) == 9
    assert len(config.loss.target_mean) == len(config.loss.target_std) == 9
    assert 'measures' in config.data.extra_keys
  train.build_model(config)  # the kwargs fit the preset


def test_measures_config_trains_and_reports_named_maes(tmp_path):
  """configs/resnet.py:measures:tiny through train_and_evaluate."""
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.training import writer as writer_lib
  config = config_checks.load_config(f'{RESNET_CONFIG}:measures:tiny')
  config.train.update(num_steps=2, eval_every=0, checkpoint_every=2)
  config_checks.validate(config)
  train.train_and_evaluate(config, str(tmp_path))
  last = writer_lib.read_metrics(str(tmp_path))[-1]
  saved = np.load(tmp_path / train.PREDICTIONS_FILE)
  err = np.abs(saved['predictions'] - saved['targets']).mean(0)
  for k, name in enumerate(config.loss.target_names):
    np.testing.assert_allclose(last[f'eval/mae_{name}'], err[k], rtol=1e-4)
    np.testing.assert_allclose(last[f'eval/mae_dim_{k:02d}'], err[k],
                               rtol=1e-6)
  assert np.isfinite(last['eval/r2'])


def test_validate_takes_choices_from_the_registries():
  config = config_checks.load_config(f'{RESNET_CONFIG}:reduced_ef:tiny')
  config.task = 'segment'
  config.model_name = 'resnet_tiny_typo'
  with pytest.raises(ValueError) as err:
    config_checks.validate(config)
  message = str(err.value)
  assert "task='segment'" in message and "'cox'" in message
  assert "model_name='resnet_tiny_typo'" in message
  assert "'resnet_ribeiro'" in message
  # A target the data would not deliver is caught before any compute.
  config = config_checks.load_config(f'{RESNET_CONFIG}:reduced_ef:tiny')
  config.loss.target_key = 'ef'
  with pytest.raises(ValueError, match="batch key 'ef'"):
    config_checks.validate(config)
  # Per-target settings must match the number of outputs.
  config = config_checks.load_config(f'{RESNET_CONFIG}:measures:tiny')
  config.model.num_outputs = 8
  with pytest.raises(ValueError, match='target_names has 9 entries'):
    config_checks.validate(config)


def test_resnet_state_is_born_with_batch_stats():
  model = resnet._TinyResNet(num_outputs=1, num_extra=2)
  mesh = sharding.make_mesh()
  state, abstract = state_lib.create_train_state(
      jax.random.key(0), model, optax.adam(1e-3), (1, T, 12), mesh,
      extra_input_shapes=[(1, 2)])
  assert set(state.batch_stats) == {'stem', 'blocks_0', 'blocks_1'}
  assert state.model_state == {'batch_stats': state.batch_stats}
  for leaf in jax.tree.leaves(state.batch_stats):
    assert leaf.sharding.is_fully_replicated
  assert (jax.tree.structure(abstract.batch_stats)
          == jax.tree.structure(state.batch_stats))
  # Running variances start at one, means at zero (flax defaults).
  np.testing.assert_array_equal(state.batch_stats['stem']['norm']['var'], 1)
