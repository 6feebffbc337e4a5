"""Two local JAX processes train one model: identical params everywhere.

Each process has 2 CPU devices, joins via `jax.distributed.initialize` on
localhost and feeds its own half of every global batch (tiny task, see
run_tiny.py). The result must not depend on the process layout: it matches
one process with 8 devices and the same global batches.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from factorecg_jax.training import train

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, 'run_tiny.py')
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import tiny_task  # pylint: disable=g-import-not-at-top,wrong-import-position


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # run_tiny.py sets the device count itself
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _hash(output):
  lines = [l for l in output.splitlines() if l.startswith('PARAMS_SHA256 ')]
  assert len(lines) == 1, output[-3000:]
  return lines[0].split()[1]


def test_two_processes_train_identically(tmp_path):
  port = _free_port()
  common = [
      sys.executable, RUNNER, '--workdir', str(tmp_path / 'multi'),
      '--num_steps', '6', '--checkpoint_every', '3', '--devices', '2',
      '--num_processes', '2', '--port', str(port),
  ]
  procs = [
      subprocess.Popen(
          common + ['--process_id', str(i), '--out',
                    str(tmp_path / f'params{i}.npz')],
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          cwd=ROOT, env=_env(),
      )
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
  assert _hash(outputs[0]) == _hash(outputs[1])
  # Both processes took part: 2 x 2 devices in the mesh.
  assert "mesh {'data': 4}" in outputs[0] and 'Process 1/2' in outputs[1]
  # Only process 0 writes the run files; the checkpoint is shared.
  multi = tmp_path / 'multi'
  assert (multi / 'metrics.jsonl').exists()
  assert sorted(os.listdir(multi / 'checkpoints')) == ['3', '6']

  # Reference: one process, 8 devices, same global batches, in-process.
  with tiny_task.fast_compile():
    state = train.train_and_evaluate(
        tiny_task.runner_config(num_steps=6, checkpoint_every=3),
        str(tmp_path / 'single'), model=tiny_task.TinyAE(latent=4),
        task=tiny_task.Task, get_datasets=tiny_task.get_datasets,
    )
  single_params = {
      jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_leaves_with_path(state.params)
  }
  multi_params = np.load(tmp_path / 'params0.npz')
  assert sorted(multi_params) == sorted(single_params)
  for name in single_params:
    np.testing.assert_allclose(
        multi_params[name], single_params[name], rtol=0, atol=1e-6
    )
