"""Kill a training process mid-run, rerun it: it resumes bit-identically.

`run_tiny.py` trains the tiny task for 20 steps with a checkpoint every 5,
slowed down so that it can be SIGKILLed after a checkpoint has been written
and before the end. Rerunning the same command resumes from the latest
checkpoint (the data stream restarts at that step, keys are folded with the
step) and must end with exactly the parameters of an uninterrupted run.
`kill_and_resume` is shared with resume_resnet_test.py (the BatchNorm
ResNet, whose batch_stats must resume exactly too).
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from factorecg_jax.training import losses
from factorecg_jax.training import train

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, 'run_tiny.py')
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import tiny_task  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_STEPS, CHECKPOINT_EVERY = 20, 5


def _finished_checkpoints(workdir):
  """Steps of the committed checkpoints (orbax renames them when done)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _flat(tree):
  return {
      jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def kill_and_resume(tmp_path, task='tiny'):
  """SIGKILLs `run_tiny.py --task=task` after a checkpoint, reruns it and
  compares its final variables bit for bit with an uninterrupted run."""
  workdir = str(tmp_path / 'killed')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  command = [
      sys.executable, RUNNER, '--workdir', workdir,
      '--num_steps', str(NUM_STEPS), '--checkpoint_every',
      str(CHECKPOINT_EVERY), '--devices', '8', '--step_sleep', '0.2',
      '--out', str(tmp_path / 'resumed.npz'), '--task', task,
  ]

  # 1. Start, wait for a committed checkpoint, SIGKILL before the end.
  proc = subprocess.Popen(
      command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      cwd=ROOT, env=env,
  )
  try:
    deadline = time.monotonic() + 180
    while not _finished_checkpoints(workdir):
      assert proc.poll() is None, 'run ended before its first checkpoint'
      assert time.monotonic() < deadline, 'no checkpoint within 180 s'
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  killed_at = _finished_checkpoints(workdir)
  assert killed_at and killed_at[-1] < NUM_STEPS, killed_at

  # 2. The same command again: resumes and finishes.
  rerun = subprocess.run(
      command, capture_output=True, text=True, timeout=240, cwd=ROOT,
      env=env,
  )
  log = rerun.stdout + rerun.stderr
  assert rerun.returncode == 0, log[-3000:]
  resumed = re.search(r'Resumed from checkpoint at step (\d+)', log)
  assert resumed, log[-3000:]
  assert killed_at[-1] <= int(resumed.group(1)) < NUM_STEPS
  assert _finished_checkpoints(workdir)[-1] == NUM_STEPS

  # 3. An uninterrupted run (in-process, same devices and compiler flags).
  if task == 'resnet':
    config = tiny_task.resnet_runner_config(NUM_STEPS, CHECKPOINT_EVERY)
    model, task_fns = tiny_task.tiny_resnet(), losses.TASKS['classify']
  else:
    config = tiny_task.runner_config(NUM_STEPS, CHECKPOINT_EVERY)
    model, task_fns = tiny_task.TinyAE(latent=4), tiny_task.Task
  with tiny_task.fast_compile():
    state = train.train_and_evaluate(
        config, str(tmp_path / 'straight'), model=model, task=task_fns,
        get_datasets=tiny_task.get_datasets,
    )
  straight = _flat({'params': state.params, **state.model_state}
                   if state.model_state else state.params)
  resumed_params = np.load(tmp_path / 'resumed.npz')
  assert sorted(resumed_params) == sorted(straight)
  for name, value in straight.items():
    np.testing.assert_array_equal(resumed_params[name], value, err_msg=name)
  return straight


def test_killed_run_resumes_bit_identically(tmp_path):
  kill_and_resume(tmp_path)
