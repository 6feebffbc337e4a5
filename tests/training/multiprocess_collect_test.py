"""Collected eval rows across two JAX processes (process_allgather path).

Two local processes with 2 CPU devices each train the tiny ResNet
(`run_tiny.py --task=resnet`, see multiprocess_test.py); each feeds half of
every eval batch, the last one padded. The saved predictions must hold every
real record once, in record order, and match the logged AUROC.
"""

import os
import socket
import subprocess
import sys

import numpy as np
from sklearn import metrics as sk_metrics

from factorecg_jax.training import train
from factorecg_jax.training import writer as writer_lib

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, 'run_tiny.py')
ROOT = os.path.dirname(os.path.dirname(HERE))
NUM_EVAL = 44  # tiny_task.get_config: 2 full batches of 16 and 12 rows


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_collect_the_whole_split(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  workdir = tmp_path / 'multi'
  common = [
      sys.executable, RUNNER, '--workdir', str(workdir), '--task', 'resnet',
      '--num_steps', '4', '--checkpoint_every', '4', '--devices', '2',
      '--num_processes', '2', '--port', str(_free_port()),
  ]
  procs = [
      subprocess.Popen(common + ['--process_id', str(i)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, cwd=ROOT, env=env)
      for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "mesh {'data': 4}" in outputs[0]

  saved = np.load(workdir / train.PREDICTIONS_FILE)
  np.testing.assert_array_equal(saved['index'], np.arange(NUM_EVAL))
  assert saved['logits'].shape == (NUM_EVAL, 1)
  assert np.isfinite(saved['logits']).all()  # no padded (NaN) row
  last = writer_lib.read_metrics(str(workdir))[-1]
  assert last['eval/num_examples'] == NUM_EVAL
  np.testing.assert_allclose(
      last['eval/auroc'],
      sk_metrics.roc_auc_score(saved['targets'][:, 0], saved['logits'][:, 0]),
      rtol=1e-12)
