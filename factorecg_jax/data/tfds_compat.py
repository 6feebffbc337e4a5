"""tensorflow-datasets builds without TensorFlow, also for large splits.

TFDS 4.9 writes ArrayRecord without TensorFlow except on one path: when the
serialised examples of a split exceed `shuffle.MAX_MEM_BUFFER_SIZE` (1 GB),
its shuffler spills them into 1,000 temporary bucket files opened with
`tf.io.gfile`, and the build dies with "No module named 'tensorflow'" (e.g.
`synthetic_ecg/uniform_100k`, ~6 GB, or PTB-XL with raw signals). `install()`
swaps in buckets that do the same file IO through `etils.epath`, with the
same file format and order, when TensorFlow is not installed. Every builder
of this package calls it on import, so `download_and_prepare()` works as
documented.
"""

from __future__ import annotations

import importlib.util
import resource
import struct
from typing import Iterator

from absl import logging
from etils import epath
from tensorflow_datasets.core import shuffle

# Open files needed besides the buckets (sources, shards, libraries).
_SPARE_FILES = 512


class EpathBucket(shuffle._Bucket):  # pylint: disable=protected-access
  """A shuffler bucket: `key | size | data` records in one temporary file."""

  def add(self, key: int, data: bytes) -> None:
    if not self._fobj:
      path = epath.Path(self._path)
      path.parent.mkdir(parents=True, exist_ok=True)
      self._fobj = path.open('wb')
    self._fobj.write(shuffle._hkey_to_bytes(key))  # pylint: disable=protected-access
    self._fobj.write(struct.pack('=Q', len(data)))
    self._fobj.write(data)
    self._length += 1
    self._size += len(data)

  def read_values(self) -> Iterator[tuple[int, bytes]]:
    self.flush()
    path = epath.Path(self._path)
    if not path.exists():  # a bucket nothing was added to
      return
    with path.open('rb') as f:
      while True:
        head = f.read(shuffle.HKEY_SIZE_BYTES)
        if not head:
          break
        (size,) = struct.unpack('=Q', f.read(8))
        yield shuffle._read_hkey(head), f.read(size)  # pylint: disable=protected-access

  def del_file(self) -> None:
    epath.Path(self._path).unlink(missing_ok=True)


def _raise_open_file_limit(needed: int) -> None:
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if soft == resource.RLIM_INFINITY or soft >= needed:
    return
  new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
  if new > soft:
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
  if new < needed:
    logging.warning(
        'Open-file limit %d is below the %d a TFDS build of more than %d MB '
        'per split may need; raise it with `ulimit -n`.', new, needed,
        shuffle.MAX_MEM_BUFFER_SIZE >> 20)


def install() -> bool:
  """Uses `EpathBucket` in TFDS's shuffler if TensorFlow is not installed.

  Returns:
    True if the TensorFlow-free buckets are in use.
  """
  if importlib.util.find_spec('tensorflow') is not None:
    return False
  if shuffle._Bucket is not EpathBucket:  # pylint: disable=protected-access
    shuffle._Bucket = EpathBucket  # pylint: disable=protected-access
    _raise_open_file_limit(shuffle.BUCKETS_NUMBER + _SPARE_FILES)
  return True
