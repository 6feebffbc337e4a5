"""A tiny model, task and in-memory data stream for the training-loop tests.

Follows the contracts of `losses.TASKS` and `input_pipeline.get_datasets`
(docs/CONTRACTS.md) at a size that compiles and trains in seconds on CPU.
Imported by the tests and by `run_tiny.py` (subprocess runs).
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from factorecg_jax.models import resnet

LENGTH, LEADS = 16, 12
# Python-side call counts: a jitted function's body runs once per trace.
TRACES = {'loss': 0, 'eval': 0}


class TinyAE(nn.Module):
  """Flatten -> Dense(latent) -> tanh -> Dense -> reshape."""

  latent: int = 4

  @nn.compact
  def __call__(self, x):
    flat = x.reshape(x.shape[0], -1)
    z = nn.Dense(self.latent)(flat)
    out = nn.Dense(flat.shape[-1])(nn.tanh(z))
    return out.reshape(x.shape), {'z': z}


def _masked_mean(per_example, mask):
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_fn(params, batch, rng, *, model, model_state=None, noise_std=0.1):
  """Denoising MSE; the input noise makes the loss depend on `rng`."""
  TRACES['loss'] += 1
  x = batch['ecg']
  noisy = x + noise_std * jax.random.normal(rng, x.shape)
  out, _ = model.apply({'params': params}, noisy)
  per_example = jnp.mean((out - x) ** 2, axis=(1, 2))
  loss = _masked_mean(per_example, batch['mask'])
  return loss, ({'mse': loss}, dict(model_state or {}))


def eval_fn(params, batch, *, model, model_state=None, noise_std=0.1):
  del noise_std, model_state
  TRACES['eval'] += 1
  out, aux = model.apply({'params': params}, batch['ecg'])
  return {
      'mse': jnp.mean((out - batch['ecg']) ** 2, axis=(1, 2)),
      'z': aux['z'],
      'z_sq': aux['z'] ** 2,
  }


def summarize_fn(means, collected=None):
  del collected
  return {'z_var': float(np.mean(means['z_sq'] - means['z'] ** 2))}


class Task:
  loss_fn = staticmethod(loss_fn)
  eval_fn = staticmethod(eval_fn)
  summarize_fn = staticmethod(summarize_fn)


def make_records(n, seed, length=LENGTH):
  """Smooth random 12-lead signals `[n, length, LEADS]` float32."""
  rng = np.random.default_rng(seed)
  t = np.linspace(0, 1, length)[None, :, None]
  amp = rng.normal(size=(n, 1, LEADS))
  phase = rng.uniform(0, 2 * np.pi, size=(n, 1, LEADS))
  return (amp * np.sin(2 * np.pi * t + phase)).astype(np.float32)


def make_labels(records):
  """A learnable binary label per record: lead I is positive at t = 0."""
  return (records[:, 0, 0] > 0).astype(np.float32)


def get_datasets(data_config, *, global_batch_size, seed, start_step=0):
  """In-memory stand-in for `input_pipeline.get_datasets`.

  Batch k is a function of (seed, k) only, each process taking its rows of
  it, so a restart at `start_step` and any process count see the same global
  batches. `data_config.nan_at_batch` (if >= 0) poisons that batch with NaN;
  `data_config.length` (default LENGTH) sets the samples per record.
  """
  length = data_config.get('length', LENGTH)
  train = make_records(data_config.num_train, 0, length)
  evals = make_records(data_config.num_eval, 1, length)
  train_labels, eval_labels = make_labels(train), make_labels(evals)
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch_size // pc

  def train_iter():
    k = start_step
    while True:
      idx = np.random.default_rng([seed, k]).integers(
          0, len(train), global_batch_size
      )[pi * local:(pi + 1) * local]
      ecg = train[idx].copy()
      if k == data_config.get('nan_at_batch', -1):
        ecg[0, 0, 0] = np.nan
      yield {'ecg': ecg, 'mask': np.ones(local, np.float32),
             'index': idx.astype(np.int64), 'label': train_labels[idx]}
      k += 1

  def make_eval_iter():
    # Like input_pipeline, evaluation uses the training batch size.
    eval_bs = global_batch_size
    local_eval = eval_bs // pc
    for start in range(0, len(evals), eval_bs):
      ecg = np.zeros((eval_bs, length, LEADS), np.float32)
      mask = np.zeros(eval_bs, np.float32)
      label = np.zeros(eval_bs, np.float32)
      index = np.full(eval_bs, -1, np.int64)
      chunk = evals[start:start + eval_bs]
      n = len(chunk)
      ecg[:n], mask[:n], label[:n] = chunk, 1.0, eval_labels[start:start + n]
      index[:n] = np.arange(start, start + n)
      # Padding is NaN: a masked mean must ignore it.
      ecg[n:] = np.nan
      rows = slice(pi * local_eval, (pi + 1) * local_eval)
      yield {'ecg': ecg[rows], 'mask': mask[rows], 'label': label[rows],
             'index': index[rows]}

  info = {'num_train': len(train), 'num_eval': len(evals)}
  return train_iter(), make_eval_iter, info


def get_config(**overrides):
  """A complete loop config for the tiny task; `overrides` are dotted."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = 'tiny'
  config.model_name = 'tiny'
  config.model = ml_collections.ConfigDict({'latent': 4})
  config.loss = ml_collections.ConfigDict({'noise_std': 0.1})
  config.data = ml_collections.ConfigDict(
      {'num_train': 256, 'num_eval': 44, 'nan_at_batch': -1}
  )
  config.optim = ml_collections.ConfigDict({
      'name': 'adam', 'lr': 1e-2, 'b1': 0.9, 'b2': 0.999,
      'weight_decay': 0.0, 'grad_clip_norm': 1.0, 'warmup_steps': 2,
      'schedule': 'cosine',
  })
  config.train = ml_collections.ConfigDict({
      'batch_size': 16, 'num_steps': 20, 'log_every': 5, 'eval_every': 10,
      'checkpoint_every': 5, 'keep_checkpoints': 3, 'eval_batch_size': 16,
      'dtype': 'float32', 'check_finite_every': 1,
  })
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split('.')
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def runner_config(num_steps, checkpoint_every, batch_size=16):
  """The config of `run_tiny.py` (no periodic evals, one final eval)."""
  return get_config(**{
      'train.num_steps': num_steps,
      'train.checkpoint_every': checkpoint_every,
      'train.batch_size': batch_size,
      'train.eval_batch_size': batch_size,
      'train.eval_every': 0,
      'train.log_every': 5,
      'train.check_finite_every': 5,
  })


# The tiny ResNet (BatchNorm, dropout) of `resnet_runner_config`, as
# `resnet._TinyResNet(num_outputs=1)` spells it in config.model.
TINY_RESNET = dict(num_outputs=1, stem_filters=4, filters=(8, 8),
                   downsample=(4, 4), kernel_size=5)


def tiny_resnet():
  return resnet._TinyResNet(num_outputs=1)  # pylint: disable=protected-access


def resnet_runner_config(num_steps, checkpoint_every, batch_size=16):
  """`runner_config` for the registered 'classify' task on `tiny_resnet`.

  The model entry builds through `models.MODELS` ('resnet' with the tiny
  sizes), so `restore.restore` can rebuild it from config.json.
  """
  config = runner_config(num_steps, checkpoint_every, batch_size)
  config.task = 'classify'
  config.model_name = 'resnet'
  config.model = ml_collections.ConfigDict(TINY_RESNET)
  config.loss = ml_collections.ConfigDict({'target_key': 'label'})
  return config


@contextlib.contextmanager
def fast_compile():
  """Compiles with most XLA optimisations off (tiny graphs, CPU tests).

  Subprocess runs (`run_tiny.py`) always use this setting, so in-process
  references that are compared with them bit for bit must use it too.
  """
  name = 'jax_disable_most_optimizations'
  old = jax.config.values[name]
  jax.config.update(name, True)
  try:
    yield
  finally:
    jax.config.update(name, old)
