"""`restore.restore` rebuilds a trained model from its run directory alone."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from factorecg_jax.data import input_pipeline
from factorecg_jax.models import resnet
from factorecg_jax.training import restore
from factorecg_jax.training import train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_task  # pylint: disable=g-import-not-at-top,wrong-import-position

# Neither the tiny task's 16 samples nor a median beat's 600: a flattening
# head only fits the length it was trained on.
LENGTH = 40
NORMALIZER = input_pipeline.Normalizer(
    'global', np.array([0.5], np.float32), np.array([2.0], np.float32))


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  with tiny_task.fast_compile():
    yield


def _datasets(data_config, **kwargs):
  train_iter, make_eval_iter, info = tiny_task.get_datasets(
      data_config, **kwargs)
  return train_iter, make_eval_iter, dict(info, normalizer=NORMALIZER)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('restore_run'))
  config = tiny_task.resnet_runner_config(num_steps=8, checkpoint_every=4)
  config.data.length = LENGTH
  # Built from the registry ('resnet' + tiny sizes), as restore will.
  state = train.train_and_evaluate(config, workdir, get_datasets=_datasets)
  return workdir, state


def test_restore_round_trips_outputs(run):
  workdir, state = run
  restored = restore.restore(workdir)
  assert restored.input_shape == (1, LENGTH, tiny_task.LEADS)
  assert restored.extra_input_shapes == ()
  assert restored.step == 8
  assert isinstance(restored.model, resnet.ResNet)
  assert restored.model.filters == (8, 8)
  assert sorted(restored.variables) == ['batch_stats', 'params']
  assert restored.config.task == 'classify'
  assert restored.normalizer.kind == 'global'
  np.testing.assert_array_equal(restored.normalizer.std, [2.0])

  x = tiny_task.make_records(6, 7, LENGTH)
  trained = {'params': state.params, **state.model_state}
  expected, _ = tiny_task.tiny_resnet().apply(jax.device_get(trained), x)
  got, _ = restored.model.apply(restored.variables, x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(restored.variables['batch_stats']),
               jax.device_get(state.batch_stats))

  # An earlier checkpoint is another model.
  early = restore.restore(workdir, step=4)
  assert early.step == 4
  other, _ = early.model.apply(early.variables, x)
  assert not np.allclose(np.asarray(other), np.asarray(expected))


def test_restore_never_guesses_the_input_shape(run, tmp_path):
  workdir, _ = run
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  del saved['run_info']['input_shape']
  old = tmp_path / 'old_run'
  old.mkdir()
  (old / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(ValueError, match='input_shape'):
    restore.restore(str(old))
  with pytest.raises(FileNotFoundError, match='config.json'):
    restore.restore(str(tmp_path / 'missing'))
