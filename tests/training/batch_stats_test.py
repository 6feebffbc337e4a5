"""The loop with a BatchNorm ResNet: sharding, collected eval rows, run files.

8 forced CPU devices (tests/conftest.py); the tiny ResNet and the in-memory
data of tiny_task (44 eval records in batches of 16: the last one padded).
"""

import functools
import json
import os
import sys

import chex
import jax
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from factorecg_jax.training import checkpoints
from factorecg_jax.training import losses
from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import train
from factorecg_jax.training import writer as writer_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_task  # pylint: disable=g-import-not-at-top,wrong-import-position

CLASSIFY = losses.TASKS['classify']
LOSS_KW = {'target_key': 'label'}
SHAPE = (1, tiny_task.LENGTH, tiny_task.LEADS)


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  with tiny_task.fast_compile():
    yield


def _state(mesh, num_steps=10):
  config = tiny_task.get_config()
  lr_fn = state_lib.create_learning_rate_fn(config.optim, num_steps)
  tx = state_lib.create_optimizer(config.optim, lr_fn)
  state, abstract = state_lib.create_train_state(
      jax.random.key(0), tiny_task.tiny_resnet(), tx, SHAPE, mesh)
  return state, abstract, lr_fn


def _trajectory(mesh, batches, num_steps):
  """Losses, params and batch_stats after `num_steps` classify steps."""
  model = tiny_task.tiny_resnet()
  state, abstract, lr_fn = _state(mesh, num_steps)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  repl = sharding.replicated(mesh)
  loss_fn = functools.partial(CLASSIFY.loss_fn, model=model, **LOSS_KW)

  @chex.assert_max_traces(n=1)
  def step_fn(state, batch, rng):
    return train.train_step(
        state, batch, rng, loss_fn=loss_fn, learning_rate_fn=lr_fn)

  jit_train_step = jax.jit(
      step_fn, in_shardings=(state_sharding, sharding.rows(mesh), repl),
      out_shardings=(state_sharding, repl), donate_argnums=0)
  rng = jax.device_put(jax.random.key(1), repl)
  losses_ = []
  with jax.set_mesh(mesh):
    for _, local in zip(range(num_steps), batches):
      batch = sharding.make_global_batch(local, mesh)
      state, metrics = jit_train_step(state, batch, rng)
      losses_.append(float(jax.device_get(metrics['loss'])))
  return (np.array(losses_), jax.device_get(state.params),
          jax.device_get(state.batch_stats))


def test_one_and_eight_devices_agree_with_batchnorm():
  """Same global batches and keys: BatchNorm sees the global batch."""
  num_steps = 8
  config = tiny_task.get_config()

  def batches():
    return tiny_task.get_datasets(config.data, global_batch_size=16,
                                  seed=3)[0]

  chex.clear_trace_counter()
  loss1, params1, stats1 = _trajectory(
      sharding.make_mesh(jax.devices()[:1]), batches(), num_steps)
  chex.clear_trace_counter()
  loss8, params8, stats8 = _trajectory(sharding.make_mesh(), batches(),
                                       num_steps)
  np.testing.assert_allclose(loss8, loss1, rtol=0, atol=1e-5)
  chex.assert_trees_all_close(params8, params1, atol=1e-5, rtol=0)
  chex.assert_trees_all_close(stats8, stats1, atol=1e-5, rtol=0)
  # The statistics did move, by far more than the tolerance; per-device
  # statistics (2 rows each) would differ by a lot.
  init = jax.device_get(_state(sharding.make_mesh())[0].batch_stats)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(stats1), jax.tree.leaves(init)))
  assert moved > 1e-2
  assert np.min(np.abs(np.diff(loss1))) > 1e-4


def test_collect_gives_every_real_row_in_record_order():
  mesh = sharding.make_mesh()
  model = tiny_task.tiny_resnet()
  state, abstract, _ = _state(mesh)
  config = tiny_task.get_config()
  _, make_eval_iter, info = tiny_task.get_datasets(
      config.data, global_batch_size=16, seed=0)
  num_eval = info['num_eval']
  assert num_eval % 16  # the last batch is padded (NaN ECGs)
  rows = sharding.rows(mesh)
  jit_eval_step = jax.jit(
      functools.partial(
          train.eval_step,
          eval_fn=functools.partial(CLASSIFY.eval_fn, model=model, **LOSS_KW),
          collect=CLASSIFY.collect),
      in_shardings=(jax.tree.map(lambda x: x.sharding, abstract), rows),
      out_shardings=(sharding.replicated(mesh), rows))
  with jax.set_mesh(mesh):
    scalars, collected = train.evaluate(
        jit_eval_step, state, make_eval_iter(), mesh, CLASSIFY.summarize_fn)
  assert sorted(collected) == ['index', 'logits', 'targets']
  for value in collected.values():
    assert value.shape[0] == num_eval
  np.testing.assert_array_equal(collected['index'], np.arange(num_eval))
  records = tiny_task.make_records(num_eval, 1)
  np.testing.assert_array_equal(collected['targets'][:, 0],
                                tiny_task.make_labels(records))
  # The logits are the model's on the records themselves (running stats).
  expected, _ = model.apply(jax.device_get(
      {'params': state.params, **state.model_state}), records)
  np.testing.assert_allclose(collected['logits'], expected, rtol=1e-5,
                             atol=1e-6)
  assert np.isfinite(collected['logits']).all()  # no padded (NaN) row
  np.testing.assert_allclose(
      scalars['auroc'],
      sk_metrics.roc_auc_score(collected['targets'][:, 0],
                               collected['logits'][:, 0]), rtol=1e-12)
  assert scalars['num_examples'] == num_eval
  assert np.isfinite(scalars['bce']) and 'logits' not in scalars


def test_train_and_evaluate_saves_state_and_predictions(tmp_path):
  """The registered task end to end: batch_stats checkpointed, npz saved."""
  config = tiny_task.resnet_runner_config(num_steps=12, checkpoint_every=6)
  config.train.log_every = 6
  config.train.eval_every = 6
  state = train.train_and_evaluate(
      config, str(tmp_path), get_datasets=tiny_task.get_datasets)
  rows = writer_lib.read_metrics(str(tmp_path))
  last = rows[-1]
  assert last['step'] == 12 and last['eval/num_examples'] == 44
  for key in ('train/bce', 'train/accuracy', 'eval/auroc', 'eval/bce',
              'eval/accuracy'):
    assert np.isfinite(last[key]), key
  with open(tmp_path / 'config.json') as f:
    info = json.load(f)['run_info']
  assert info['input_shape'] == list(SHAPE)
  assert info['extra_input_shapes'] == []

  saved = np.load(tmp_path / train.PREDICTIONS_FILE)
  assert sorted(saved.files) == ['index', 'logits', 'targets']
  np.testing.assert_array_equal(saved['index'], np.arange(44))
  np.testing.assert_allclose(
      last['eval/auroc'],
      sk_metrics.roc_auc_score(saved['targets'][:, 0], saved['logits'][:, 0]))

  # The checkpoint holds the trained batch_stats, not the initial ones.
  _, abstract, _ = _state(sharding.make_mesh(), 12)
  manager = checkpoints.create_manager(str(tmp_path))
  restored = checkpoints.restore(manager, abstract)
  manager.close()
  assert int(restored.step) == 12
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(restored.batch_stats),
               jax.device_get(state.batch_stats))
  assert not np.allclose(restored.batch_stats['stem']['norm']['var'], 1.0)
