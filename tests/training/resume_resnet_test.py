"""Kill and rerun the BatchNorm ResNet: params and batch_stats resume exactly.

As resume_test.py (whose `kill_and_resume` this uses), for `run_tiny.py
--task=resnet`: the tiny ResNet (BatchNorm, dropout) on the registered
'classify' task, so the running statistics go through orbax and back.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resume_test  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_killed_resnet_resumes_bit_identically(tmp_path):
  final = resume_test.kill_and_resume(tmp_path, task='resnet')
  stats = [k for k in final if k.startswith("['batch_stats']")]
  params = [k for k in final if k.startswith("['params']")]
  # Both collections were compared: 3 norms x (mean, var) at least.
  assert len(stats) >= 6 and params, sorted(final)
