"""A tiny ResNet learns reduced EF from simulated median beats.

configs/resnet.py:reduced_ef:tiny, a little longer: the registered 'classify'
task, the on-the-fly simulator and the real input pipeline on 8 CPU devices.
EF <= 35 % depends on QRS duration, conduction, heart rate and the QRS-T
angle (simulator.ejection_fraction), all visible in the beat; about 10 % of
records are positive.
"""

import os

import numpy as np
from sklearn import metrics as sk_metrics

from factorecg_jax import config_checks
from factorecg_jax.training import train
from factorecg_jax.training import writer as writer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_reduced_ef_auroc_above_chance(tmp_path):
  config = config_checks.load_config(
      os.path.join(ROOT, 'configs', 'resnet.py') + ':reduced_ef:tiny')
  # One simulator shape (batch 64) for training, normalisation and eval.
  config.data.update(num_train=2048, num_eval=512, normalization_records=256)
  config.train.update(batch_size=64, eval_batch_size=64, num_steps=150,
                      log_every=50, eval_every=0, checkpoint_every=150)
  config.optim.update(lr=3e-3, warmup_steps=10)
  config_checks.validate(config)
  train.train_and_evaluate(config, str(tmp_path))

  last = writer_lib.read_metrics(str(tmp_path))[-1]
  saved = np.load(tmp_path / train.PREDICTIONS_FILE)
  assert saved['logits'].shape == (512, 1)
  np.testing.assert_array_equal(saved['index'], np.arange(512))
  labels = saved['targets'][:, 0] > 0.5
  assert 0.03 < labels.mean() < 0.3  # both classes, as simulated
  auroc = sk_metrics.roc_auc_score(labels, saved['logits'][:, 0])
  np.testing.assert_allclose(last['eval/auroc'], auroc, rtol=1e-9)
  assert auroc > 0.7, auroc
