"""Tests for the training loop on a tiny task (8 CPU devices)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from factorecg_jax.data import input_pipeline
from factorecg_jax.training import checkpoints
from factorecg_jax.training import sharding
from factorecg_jax.training import state as state_lib
from factorecg_jax.training import train
from factorecg_jax.training import writer as writer_lib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import tiny_task  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  with tiny_task.fast_compile():
    yield


def _train(config, workdir):
  return train.train_and_evaluate(
      config, str(workdir), model=tiny_task.TinyAE(latent=4),
      task=tiny_task.Task, get_datasets=tiny_task.get_datasets,
  )


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """30 steps with logs every 5, evals every 10 and checkpoints every 10."""
  workdir = tmp_path_factory.mktemp('tiny_run')
  config = tiny_task.get_config(**{
      'train.num_steps': 30, 'train.checkpoint_every': 10,
      'train.check_finite_every': 5,
  })
  tiny_task.TRACES.update(loss=0, eval=0)
  state = _train(config, workdir)
  return dict(
      workdir=workdir, state=state, traces=dict(tiny_task.TRACES),
      rows=writer_lib.read_metrics(str(workdir)), config=config,
  )


def test_loss_falls(tiny_run):
  losses = [r['train/loss'] for r in tiny_run['rows'] if 'train/loss' in r]
  assert len(losses) == 6  # steps 5, 10, ..., 30
  assert losses[-1] < 0.8 * losses[0], losses
  evals = [r['eval/mse'] for r in tiny_run['rows'] if 'eval/mse' in r]
  assert len(evals) == 3 and evals[-1] < evals[0]


def test_metrics_and_run_dir(tiny_run):
  rows, workdir = tiny_run['rows'], tiny_run['workdir']
  last = rows[-1]
  assert last['step'] == 30
  for key in ('train/l2_grads', 'train/l2_params', 'train/l2_updates',
              'train/learning_rate', 'train/steps_per_sec',
              'train/examples_per_sec', 'eval/z_var'):
    assert np.isfinite(last[key]) and last[key] > 0, key
  # 44 eval records in padded batches of 16: all counted, padding ignored.
  assert last['eval/num_examples'] == 44

  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  restored = ml_collections.ConfigDict(
      {k: v for k, v in saved.items() if k != 'run_info'}
  )
  assert restored.train.num_steps == 30
  assert restored.optim.to_dict() == tiny_run['config'].optim.to_dict()
  info = saved['run_info']
  assert info['seeds']['seed'] == 0
  assert info['versions']['jax'] == jax.__version__
  assert info['devices']['device_count'] == 8
  assert info['code_version']
  assert info['data']['num_eval'] == 44

  manager = checkpoints.create_manager(str(workdir))
  assert manager.all_steps() == [10, 20, 30]
  manager.close()


def test_steps_are_jitted_once(tiny_run):
  # 30 train steps and 3 eval passes of 3 batches (the last one padded).
  assert tiny_run['traces'] == {'loss': 1, 'eval': 1}


def test_checkpoint_holds_final_state(tiny_run):
  state = tiny_run['state']
  _, abstract = state_lib.create_train_state(
      jax.random.key(0), tiny_task.TinyAE(latent=4),
      state.tx, (1, tiny_task.LENGTH, tiny_task.LEADS), sharding.make_mesh(),
  )
  manager = checkpoints.create_manager(str(tiny_run['workdir']))
  restored = checkpoints.restore(manager, abstract)
  manager.close()
  assert int(restored.step) == 30
  jax.tree.map(
      np.testing.assert_array_equal,
      jax.device_get(restored.params), jax.device_get(state.params),
  )


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
  # Batch 7 (the 8th step) carries a NaN; checkpoints every 5 steps.
  config = tiny_task.get_config(**{
      'train.num_steps': 12, 'data.nan_at_batch': 7,
  })
  with pytest.raises(FloatingPointError, match=r'at step 8: .*loss') as err:
    _train(config, tmp_path)
  assert 'last good checkpoint is step 5' in str(err.value)

  manager = checkpoints.create_manager(str(tmp_path))
  assert manager.all_steps() == [5]
  manager.close()
  # Restorable: a fixed data stream resumes from step 5 and finishes.
  config.data.nan_at_batch = -1
  tiny_task.TRACES.update(loss=0, eval=0)
  state = _train(config, tmp_path)
  assert int(jax.device_get(state.step)) == 12
  # The restored state has the same types and shardings: no retrace.
  assert tiny_task.TRACES['loss'] == 1
  params = jax.device_get(state.params)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  rows = writer_lib.read_metrics(str(tmp_path))
  assert rows[-1]['step'] == 12 and np.isfinite(rows[-1]['train/loss'])


def test_evaluate_is_a_masked_mean():
  """Padded (NaN) rows are ignored; equals the mean over real records."""
  mesh = sharding.make_mesh()
  model = tiny_task.TinyAE(latent=4)
  state, abstract = state_lib.create_train_state(
      jax.random.key(5), model, optax.sgd(0.1),
      (1, tiny_task.LENGTH, tiny_task.LEADS), mesh,
  )
  config = tiny_task.get_config()
  _, make_eval_iter, _ = tiny_task.get_datasets(
      config.data, global_batch_size=16, seed=0
  )
  jit_eval_step = jax.jit(
      lambda s, b: train.eval_step(
          s, b, eval_fn=lambda p, x, **kw: tiny_task.eval_fn(
              p, x, model=model, **kw)
      ),
      in_shardings=(jax.tree.map(lambda x: x.sharding, abstract),
                    sharding.rows(mesh)),
  )
  with jax.set_mesh(mesh):
    scalars, collected = train.evaluate(
        jit_eval_step, state, make_eval_iter(), mesh, tiny_task.summarize_fn
    )
  assert collected == {}  # nothing asked for
  records = tiny_task.make_records(config.data.num_eval, 1)
  out, aux = model.apply({'params': jax.device_get(state.params)}, records)
  expected_mse = np.mean((np.asarray(out) - records) ** 2)
  z = np.asarray(aux['z'], np.float64)
  assert scalars['num_examples'] == 44
  np.testing.assert_allclose(scalars['mse'], expected_mse, rtol=1e-5)
  np.testing.assert_allclose(
      scalars['z_var'], np.mean(np.var(z, axis=0)), rtol=1e-4, atol=1e-6
  )


def test_learning_rate_schedule():
  optim = ml_collections.ConfigDict(
      {'lr': 0.1, 'warmup_steps': 10, 'schedule': 'cosine'}
  )
  lr = state_lib.create_learning_rate_fn(optim, num_steps=110)
  np.testing.assert_allclose(
      [lr(0), lr(5), lr(10), lr(60), lr(110)],
      [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-6,
  )
  optim.schedule = 'constant'
  lr = state_lib.create_learning_rate_fn(optim, num_steps=110)
  np.testing.assert_allclose([lr(5), lr(100)], [0.05, 0.1], atol=1e-6)
  optim.schedule = 'linear'
  with pytest.raises(ValueError, match="'constant' or 'cosine'"):
    state_lib.create_learning_rate_fn(optim, num_steps=110)


def test_optimizer_settings():
  base = dict(lr=1.0, b1=0.9, b2=0.999, warmup_steps=0, schedule='constant')
  with pytest.raises(ValueError, match='adamw'):
    state_lib.create_optimizer(
        dict(base, name='adam', weight_decay=0.1), lambda _: 1.0
    )
  with pytest.raises(ValueError, match='Unknown optim.name'):
    state_lib.create_optimizer(dict(base, name='sgd'), lambda _: 1.0)
  # Clipping happens before Adam: its second moment sees the gradient
  # rescaled to norm 1, (0.6, 0.8, 0); after two steps
  # nu = (1 - b2^2) g^2.
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([30.0, 40.0, 0.0])}
  clipped = state_lib.create_optimizer(
      dict(base, name='adamw', weight_decay=0.0, grad_clip_norm=1.0),
      lambda _: 1.0,
  )
  state = clipped.init(params)
  updates, state = clipped.update(grads, state, params)
  _, state = clipped.update(grads, state, params)
  nu = jax.tree.leaves(state[1][0].nu)[0]
  np.testing.assert_allclose(
      nu, (1 - 0.999**2) * np.array([0.36, 0.64, 0.0]), rtol=1e-4
  )
  assert np.all(np.isfinite(updates['w']))


def test_default_components_vae(tmp_path):
  """The registered VAE task, model and simulated input pipeline, 2 steps."""
  config = tiny_task.get_config(**{
      'task': 'vae', 'model_name': 'vae', 'train.num_steps': 2,
      'train.batch_size': 8, 'train.eval_batch_size': 8,
      'train.log_every': 1, 'train.checkpoint_every': 2,
  })
  config.model = ml_collections.ConfigDict(dict(
      latents=4, channels=8, depth=2, kernel_size=3, reduced_size=8,
      decoder_in_channels=4, head='conv', padding='left',
  ))
  # beta-TC-VAE with a linear KL warm-up: the loop passes the step and the
  # data set size.
  config.loss = ml_collections.ConfigDict(dict(
      beta=4.0, kl_schedule='linear', kl_warmup_steps=2,
      objective='beta_tcvae', dataset_size=0))
  config.data = input_pipeline.default_data_config()
  config.data.update(dict(
      num_train=16, num_eval=8, normalization='none', prefetch=2
  ))
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(jax.device_get(state.step)) == 2
  rows = writer_lib.read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == [1, 2]
  for key in ('train/loss', 'train/kl', 'train/nll', 'train/tc',
              'train/mi', 'eval/loss', 'eval/active_units'):
    assert np.isfinite(rows[-1][key]), key
  # Logged after steps 0 and 1 of a 2-step ramp to beta 4.
  assert [r['train/kl_weight'] for r in rows] == [0.0, 2.0]
  assert rows[-1]['eval/num_examples'] == 8
  with open(tmp_path / 'config.json') as f:
    info = json.load(f)['run_info']
  assert info['data']['normalizer']['kind'] == 'none'
  assert info['versions']['optuna'] and info['versions']['lifelines']
  # The same scalars as TensorBoard events beside metrics.jsonl.
  events = _read_tensorboard_scalars(str(tmp_path))
  assert events['train/kl_weight'] == [(1, 0.0), (2, 2.0)]
  assert [s for s, _ in events['eval/loss']] == [2]
  np.testing.assert_allclose(events['eval/loss'][0][1], rows[-1]['eval/loss'],
                             rtol=1e-6)


def _read_tensorboard_scalars(logdir):
  """{tag: [(step, value)]} from the event files in `logdir`.

  Reads the TFRecord framing (length, CRC, payload, CRC) and decodes each
  payload with tensorboardX's own Event proto: no TensorFlow needed.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  files = [f for f in os.listdir(logdir) if f.startswith('events.out.')]
  assert files, os.listdir(logdir)
  for name in files:
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], 'little')
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField('simple_value'):
          out.setdefault(value.tag, []).append(
              (event.step, value.simple_value))
  return out


def test_resume_refuses_a_different_run(tmp_path):
  overrides = {'train.num_steps': 4, 'train.checkpoint_every': 4,
               'train.log_every': 2}
  _train(tiny_task.get_config(**overrides), tmp_path)
  changed = tiny_task.get_config(**overrides)
  changed.seed += 1
  with pytest.raises(ValueError, match=r'(?s)different run.*seed: 0 -> 1'):
    _train(changed, tmp_path)
  # Training longer is a legitimate resume.
  longer = tiny_task.get_config(**dict(overrides, **{'train.num_steps': 6}))
  state = _train(longer, tmp_path)
  assert int(jax.device_get(state.step)) == 6


def test_misspelt_config_key_fails_before_compute(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'factorecg_jax.main',
       '--config=configs/demo.py:tiny', f'--workdir={workdir}',
       '--mode=train', '--config.train.nonexistent=1'],
      capture_output=True, text=True, timeout=120, cwd=ROOT,
  )
  assert result.returncode != 0
  assert 'nonexistent' in result.stderr
  assert not workdir.exists()  # nothing was trained, not even set up
