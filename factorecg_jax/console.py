"""What a person sees on the console: stages, progress, the closing summary.

Library logs (orbax, absl, jax) are INFO messages that drown the few lines a
person needs, so `set_verbosity` hides them by default and the project speaks
through this module instead:

* `stage(name)`: one line when a stage starts and one when it ends, with its
  duration (or the failure and its duration).
* `Progress`: a progress display for long loops (training steps, encoding,
  traversals, intervention scores). On a terminal it is one line rewritten in
  place; in a log file or a pipe it prints a line every 10 % or 30 s, so CI
  logs stay short and readable.
* `summary(title, rows, paths)`: the headline numbers and where the main
  outputs are.

Only process 0 prints (every process computes the same figures). Warnings
(NaN guard, skipped records, resume refusals) still go through absl logging
and stay visible at every verbosity.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

# absl verbosity levels: -1 WARNING (default of main.py), 0 INFO, 1 DEBUG.
DEFAULT_VERBOSITY = -1


def set_verbosity(verbosity: int) -> None:
  """Sets absl's and Python's logging threshold (-1 WARNING, 0 INFO, ...).

  absl's handler sits on the root logger, so one threshold covers our own
  messages and those of orbax, jax and absl alike.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(verbosity)


def _is_chief() -> bool:
  # jax is imported lazily: `--mode=simulate` and the config checks must not
  # pay for it; before jax is imported we are process 0 by definition.
  jax = sys.modules.get('jax')
  if jax is None:
    return True
  try:
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except
    return True


def _stream() -> TextIO:
  return sys.stdout


def info(message: str) -> None:
  """Prints one line (process 0 only), flushed at once."""
  if _is_chief():
    stream = _stream()
    stream.write(message + '\n')
    stream.flush()


def format_duration(seconds: float) -> str:
  """'42.1 s', '3 min 05 s', '1 h 02 min'; '?' when unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return '?'
  if seconds < 60:
    return f'{seconds:.1f} s'
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f'{minutes} min {secs:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


@contextlib.contextmanager
def stage(name: str, detail: str = '') -> Iterator[None]:
  """Prints '[name] started' and '[name] done in 12.3 s' around a block.

  A failure prints '[name] failed after ...' and re-raises.
  """
  info(f'[{name}] started' + (f': {detail}' if detail else ''))
  start = time.perf_counter()
  try:
    yield
  except BaseException:
    info(f'[{name}] failed after '
         f'{format_duration(time.perf_counter() - start)}')
    raise
  info(f'[{name}] done in {format_duration(time.perf_counter() - start)}')


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


class Progress:
  """A progress display for a loop of known length.

  The rate (and so the ETA) is measured from the first `update` on, because
  the first step of a jitted loop is mostly compilation.

  Args:
    total: number of units (steps, batches, figures).
    desc: what is counted ('train', 'encode', ...).
    unit: the unit of the rate ('steps'); `rate_scale` converts it (e.g.
      batch size with `rate_unit='ECGs'` shows ECGs/s).
    rate_scale: multiplier from units to `rate_unit`.
    rate_unit: unit of the displayed rate; default `unit`.
    initial: units already done (a resumed run).
    stream: where to write (default stdout); only process 0 writes.
    interactive: rewrite one line in place; default: when `stream` is a
      terminal.
    min_interval: seconds between lines in non-interactive mode.
  """

  def __init__(self, total: int, desc: str, *, unit: str = 'it',
               rate_scale: float = 1.0, rate_unit: str | None = None,
               initial: int = 0, stream: TextIO | None = None,
               interactive: bool | None = None,
               min_interval: float = 30.0):
    self.total = max(int(total), 0)
    self.desc = desc
    self.unit = unit
    self.rate_scale = float(rate_scale)
    self.rate_unit = rate_unit or unit
    self.done = int(initial)
    self._stream = stream
    self._enabled = _is_chief()
    out = self.stream
    self.interactive = (bool(interactive) if interactive is not None
                        else bool(getattr(out, 'isatty', lambda: False)())
                        and os.environ.get('TERM') != 'dumb')
    self.min_interval = float(min_interval)
    self._start_time = None  # set at the first update
    self._start_done = self.done
    self._last_print = -math.inf
    self._last_fraction = -1.0
    self._postfix: dict[str, Any] = {}
    self._closed = False
    self._line_open = False

  @property
  def stream(self) -> TextIO:
    return self._stream if self._stream is not None else _stream()

  def rate(self) -> float:
    """Units per second since the first update (NaN before two updates)."""
    if self._start_time is None:
      return math.nan
    elapsed = time.perf_counter() - self._start_time
    moved = self.done - self._start_done
    return moved / elapsed if elapsed > 0 and moved > 0 else math.nan

  def eta(self) -> float:
    """Seconds left at the current rate (NaN while unknown)."""
    rate = self.rate()
    if not math.isfinite(rate) or rate <= 0:
      return math.nan
    return max(self.total - self.done, 0) / rate

  def line(self) -> str:
    """The current display line."""
    width = len(str(self.total))
    parts = [f'{self.desc} {self.done:>{width}d}/{self.total}']
    if self.total:
      parts[0] += f' {100.0 * self.done / self.total:3.0f}%'
    rate = self.rate()
    if math.isfinite(rate):
      parts.append(f'{rate * self.rate_scale:.1f} {self.rate_unit}/s')
    if self.done < self.total:
      eta = self.eta()
      parts.append('ETA ' + (str(datetime.timedelta(seconds=int(eta)))
                             if math.isfinite(eta) else '?'))
    parts += [f'{k} {_format_value(v)}' for k, v in self._postfix.items()]
    return ' | '.join(parts)

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` of other work (e.g. an eval pass) out of the rate."""
    if self._start_time is not None:
      self._start_time += float(seconds)

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Counts `n` more units done; `postfix` values are shown after them."""
    if self._start_time is None:
      # The first update ends the compile: the rate is timed from here.
      self._start_time = time.perf_counter()
      self._start_done = self.done + n
    self.done += n
    self._postfix.update(postfix)
    if not self._enabled:
      return
    now = time.perf_counter()
    fraction = self.done / self.total if self.total else 1.0
    if self.interactive:
      if now - self._last_print >= 0.2 or self.done >= self.total:
        self._write('\r' + self.line() + '\x1b[K', newline=False)
        self._last_print = now
    elif (fraction - self._last_fraction >= 0.1
          or now - self._last_print >= self.min_interval
          or (self.done >= self.total > 0 and self._last_fraction < 1.0)):
      self._write(self.line(), newline=True)
      self._last_print, self._last_fraction = now, fraction

  def _write(self, text: str, newline: bool) -> None:
    stream = self.stream
    stream.write(text + ('\n' if newline else ''))
    stream.flush()
    self._line_open = not newline

  def close(self) -> None:
    """Ends the display (the final line stays on screen)."""
    if self._closed:
      return
    self._closed = True
    if not self._enabled:
      return
    if self.interactive and self._line_open:
      self._write('\r' + self.line() + '\x1b[K', newline=True)
    elif not self.interactive and self._last_fraction < 1.0 and (
        self.done > 0):
      self._write(self.line(), newline=True)

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def summary(title: str, rows: Sequence[tuple[str, Any]] | Mapping[str, Any],
            paths: Mapping[str, str] | None = None) -> None:
  """Prints a short block: headline numbers, then the main output paths."""
  items = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
  lines = ['', f'== {title} ==']
  width = max([len(k) for k, _ in items] + [len(k) for k in (paths or {})]
              + [1])
  lines += [f'  {k:<{width}}  {_format_value(v)}' for k, v in items]
  if paths:
    lines.append('  outputs:')
    lines += [f'  {k:<{width}}  {v}' for k, v in paths.items()]
  info('\n'.join(lines))
