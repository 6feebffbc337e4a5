"""A run trained before a model key existed still matches a config that
names the key at the model's own default (stages and resuming), and any
other difference in the model is refused."""

import json

import ml_collections
import pytest

from factorecg_jax import models
from factorecg_jax.stages import _common
from factorecg_jax.training import train


def _config(**model):
  return ml_collections.ConfigDict(dict(model_name='resnet_cpu',
                                        model=dict(num_outputs=1, **model)))


def test_a_key_newer_than_the_run_at_its_default_matches():
  old_run = {'model_name': 'resnet_cpu', 'model': {'num_outputs': 1}}
  _common._check_model_matches(_config(dropout_bits=32), old_run, 'w')
  # ResNetCPU's preset value counts as the default, as does a field's.
  _common._check_model_matches(_config(kernel_size=9), old_run, 'w')
  for other in (dict(dropout_bits=8), dict(kernel_size=17),
                dict(no_such_field=1)):
    with pytest.raises(ValueError, match=next(iter(other))):
      _common._check_model_matches(_config(**other), old_run, 'w')


def test_a_changed_or_dropped_key_is_refused():
  run = {'model_name': 'resnet_cpu',
         'model': {'num_outputs': 1, 'dropout_bits': 8}}
  _common._check_model_matches(_config(dropout_bits=8), run, 'w')
  with pytest.raises(ValueError, match=r"dropout_bits: 8 \(run\) vs 32"):
    _common._check_model_matches(_config(dropout_bits=32), run, 'w')
  # The run names a setting the config lacks: refused even at the default.
  with pytest.raises(ValueError, match='dropout_bits'):
    _common._check_model_matches(_config(), run, 'w')
  with pytest.raises(ValueError, match='model_name'):
    _common._check_model_matches(
        ml_collections.ConfigDict(dict(model_name='resnet',
                                       model=dict(num_outputs=1,
                                                  dropout_bits=8))),
        run, 'w')


def test_setting_default_reads_presets_then_fields():
  assert models.setting_default('resnet_cpu', 'kernel_size') == 9
  assert models.setting_default('resnet', 'kernel_size') == 17
  assert models.setting_default('resnet_ribeiro', 'dropout_bits') == 32
  for model, key in (('resnet', 'num_outputs'), ('resnet', 'nope'),
                     ('nope', 'kernel_size')):
    assert models.setting_default(model, key) is models.NO_DEFAULT
    assert not models.is_default(model, key, 1)
  # Compared as JSON reads it back: tuples are lists there.
  assert models.is_default('resnet_cpu', 'downsample', [4, 4, 4, 4])
  assert not models.is_default('resnet_cpu', 'kernel_size', 17)


def test_resuming_a_run_older_than_the_key(tmp_path):
  stored = {'model_name': 'resnet_cpu', 'seed': 0,
            'model': {'num_outputs': 1}}
  (tmp_path / 'config.json').write_text(json.dumps(stored))

  def config(**model):
    return ml_collections.ConfigDict(dict(stored, model=dict(stored['model'],
                                                             **model)))

  train.check_resume_config(config(dropout_bits=32), str(tmp_path))
  with pytest.raises(ValueError, match=r'model.dropout_bits: .*-> 8'):
    train.check_resume_config(config(dropout_bits=8), str(tmp_path))
