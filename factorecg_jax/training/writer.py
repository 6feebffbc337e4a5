"""Run-directory writer: metrics as JSON lines and TensorBoard events.

Keeps the names of clu's `MetricWriter` (`write_scalars`, `write_hparams`,
`flush`, `close`) without importing clu (its TensorBoard writer needs
TensorFlow). `<workdir>/metrics.jsonl` gets one JSON object per logged step,
`{"step": 100, "train/loss": ...}`; the same scalars go to TensorBoard event
files in the workdir (tensorboardX, no TensorFlow), so `tensorboard --logdir`
on a run, or on a sweep's `trials/` folder, plots them; `<workdir>/config.json`
gets the hparams. Only process 0 writes files (the others are clu's
`just_logging` writers), so many hosts sharing a workdir never race on a
file.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging


def _to_python(value: Any) -> Any:
  """Converts numpy/JAX scalars and arrays to JSON-serialisable values."""
  if isinstance(value, Mapping):
    return {str(k): _to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_python(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


class MetricWriter:
  """Appends scalar metrics to `<workdir>/metrics.jsonl` (process 0 only).

  Attributes:
    workdir: the run directory.
    just_logging: if true, nothing is written to disk (the loop's console
      lines are then the only record); the default is true on every process
      but process 0.
  """

  def __init__(self, workdir: str, *, just_logging: bool | None = None,
               tensorboard: bool = True):
    self.workdir = workdir
    if just_logging is None:
      just_logging = jax.process_index() != 0
    self.just_logging = just_logging
    self._file = None
    self._tb = None
    if not just_logging and tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
        self._tb = tensorboardX.SummaryWriter(logdir=workdir, flush_secs=30)
      except ImportError:
        logging.warning('tensorboardX is not installed: no TensorBoard '
                        'event files (metrics.jsonl is still written).')
    if not just_logging:
      os.makedirs(workdir, exist_ok=True)
      # Append: a resumed run continues the same file (rows after the last
      # checkpoint of a killed run appear twice; readers keep the last one).
      self._file = open(
          os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8'
      )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes one row `{'step': step, **scalars}`.

    Args:
      step: training step the metrics belong to.
      scalars: metric name -> scalar (Python, numpy or 0-d JAX array).
    """
    row = {'step': int(step)}
    row.update({k: _to_python(v) for k, v in scalars.items()})
    if self._file is not None:
      # NaN/Inf are written as JSON's common NaN/Infinity extension; the
      # loop raises right after logging them.
      self._file.write(json.dumps(row, allow_nan=True) + '\n')
    if self._tb is not None:
      for key, value in row.items():
        if key != 'step' and isinstance(value, (int, float)) and not (
            isinstance(value, bool)):
          self._tb.add_scalar(key, value, global_step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """Writes `hparams` (nested dict) to `<workdir>/config.json`."""
    if self.just_logging:
      logging.info('hparams: %s', _to_python(hparams))
      return
    path = os.path.join(self.workdir, 'config.json')
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(_to_python(hparams), f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)
    if self._tb is not None:
      text = json.dumps(_to_python(hparams), indent=2, sort_keys=True)
      # Markdown code block: TensorBoard's text tab shows the run's config.
      self._tb.add_text('config', '    ' + text.replace('\n', '\n    '))

  def flush(self) -> None:
    """Flushes buffered rows to disk."""
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the file; further writes are errors."""
    if self._file is not None:
      self.flush()
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads `<workdir>/metrics.jsonl`, keeping the last row for each step.

  Args:
    workdir: run directory.

  Returns:
    Rows sorted by step; when a resumed run re-logged a step, its later row
    wins. Rows with the same step but different keys (train and eval) are
    merged.
  """
  by_step: dict[int, dict[str, Any]] = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        by_step.setdefault(row['step'], {}).update(row)
  return [by_step[s] for s in sorted(by_step)]
