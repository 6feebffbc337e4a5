"""Tests for the mesh helpers and the sharded train step (8 CPU devices)."""

import functools
import os
import sys

import chex
import jax
import numpy as np
import pytest

from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_task  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  with tiny_task.fast_compile():
    yield


def test_eight_devices_are_visible():
  assert jax.device_count() == 8, 'tests/conftest.py should force 8 devices'


def test_check_batch_size_names_the_problem():
  mesh = sharding.make_mesh()
  assert sharding.check_batch_size(16, mesh) == 16
  with pytest.raises(ValueError, match=r'train.batch_size=12 .*devices \(8\)'):
    sharding.check_batch_size(12, mesh, 'train.batch_size')
  with pytest.raises(ValueError, match='positive'):
    sharding.check_batch_size(0, mesh)
  # A one-device mesh accepts any positive size.
  assert sharding.check_batch_size(3, sharding.make_mesh(jax.devices()[:1]))


def test_make_global_batch_shards_rows():
  mesh = sharding.make_mesh()
  local = {
      'ecg': np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
      'index': np.arange(16, dtype=np.int64),
  }
  batch = sharding.make_global_batch(local, mesh)
  assert batch['ecg'].shape == (16, 3)
  assert batch['ecg'].sharding.spec == jax.sharding.PartitionSpec('data')
  assert len(batch['ecg'].addressable_shards) == 8
  assert batch['ecg'].addressable_shards[1].data.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(batch['ecg']), local['ecg'])
  assert batch['index'].dtype == np.int32  # x64 is off: canonical dtype

  with pytest.raises(ValueError, match='disagree on the number of rows'):
    sharding.make_global_batch(
        {'a': np.zeros((8, 2)), 'b': np.zeros((16, 2))}, mesh
    )
  with pytest.raises(ValueError, match='does not divide over the 8 devices'):
    sharding.make_global_batch({'a': np.zeros((12, 2))}, mesh)


def _trajectory(mesh, batches, num_steps):
  """Losses and final params of `num_steps` tiny-task steps on `mesh`."""
  config = tiny_task.get_config()
  model = tiny_task.TinyAE(latent=4)
  lr_fn = state_lib.create_learning_rate_fn(config.optim, num_steps)
  tx = state_lib.create_optimizer(config.optim, lr_fn)
  state, abstract = state_lib.create_train_state(
      jax.random.key(0), model, tx, (1, tiny_task.LENGTH, tiny_task.LEADS),
      mesh,
  )
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
  repl = sharding.replicated(mesh)
  loss_fn = functools.partial(tiny_task.loss_fn, model=model)

  @chex.assert_max_traces(n=1)
  def step_fn(state, batch, rng):
    return train.train_step(
        state, batch, rng, loss_fn=loss_fn, learning_rate_fn=lr_fn
    )

  jit_train_step = jax.jit(
      step_fn,
      in_shardings=(state_sharding, sharding.rows(mesh), repl),
      out_shardings=(state_sharding, repl),
      donate_argnums=0,
  )
  rng = jax.device_put(jax.random.key(1), repl)
  losses = []
  with jax.set_mesh(mesh):
    for _, local in zip(range(num_steps), batches):
      batch = sharding.make_global_batch(local, mesh)
      state, metrics = jit_train_step(state, batch, rng)
      losses.append(float(jax.device_get(metrics['loss'])))
  return np.array(losses), jax.device_get(state.params)


def test_one_and_eight_devices_agree():
  """Same global batches and keys: the sharded step is the 1-device step."""
  num_steps = 12
  config = tiny_task.get_config()

  def batches():
    return tiny_task.get_datasets(config.data, global_batch_size=16, seed=3)[0]

  chex.clear_trace_counter()
  losses1, params1 = _trajectory(
      sharding.make_mesh(jax.devices()[:1]), batches(), num_steps
  )
  chex.clear_trace_counter()
  losses8, params8 = _trajectory(sharding.make_mesh(), batches(), num_steps)
  assert losses1[-1] < losses1[0]  # it trains at all
  np.testing.assert_allclose(losses8, losses1, rtol=0, atol=1e-5)
  chex.assert_trees_all_close(params8, params1, atol=1e-5, rtol=0)
  # The tolerance is tight relative to how much the losses move per step.
  assert np.min(np.abs(np.diff(losses1))) > 1e-4


def test_step_retraces_are_caught():
  """The trace guard used above does fire when a step retraces."""
  chex.clear_trace_counter()
  fn = jax.jit(chex.assert_max_traces(lambda x: x + 1, n=1))
  fn(np.zeros(2, np.float32))
  with pytest.raises(AssertionError):
    fn(np.zeros(3, np.float32))
