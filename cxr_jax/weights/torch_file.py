"""Reads a PyTorch state_dict file (`torch.save`) into numpy arrays, without torch.

Both formats torch writes are handled: the zip archive (torch >= 1.6: data.pkl + data/<key>) and
the legacy stream (magic number, protocol, sys info, data pickle, storage keys, raw storages),
which old model-zoo files such as vgg16-397923af.pth use. The data pickle is read by a restricted
unpickler that resolves only tensor/storage rebuilding and OrderedDict; anything else is refused.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from cxr_jax.weights.safe_pickle import UnsafePickleError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for torch.<X>Storage: only its element dtype matters."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Storage:
  """A flat typed buffer; `data` is filled in once the raw bytes are read."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype
    self.data: np.ndarray | None = None


class _LazyTensor:
  """A tensor whose storage may not be read yet (the legacy format stores data last)."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.data
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=tuple(s * item for s in self.stride))
    return np.array(view)  # copy: leave no view into a shared storage


def _rebuild_tensor(storage, offset, size, stride, *_unused):
  return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_unused):
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds tensors as `_LazyTensor`s; storages come from `load_storage(pid)`."""

  def __init__(self, file, load_storage, what: str):
    super().__init__(file)
    self._load_storage, self._what = load_storage, what

  def find_class(self, module: str, name: str):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise UnsafePickleError(f"{self._what}: refusing to unpickle global {module}.{name}: a "
                            "state_dict file may only hold tensors")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UnsafePickleError(f"{self._what}: unexpected persistent id {pid!r}")
    return self._load_storage(pid)


def _materialize(tree, what: str):
  if isinstance(tree, dict):
    return {k: _materialize(v, what) for k, v in tree.items()}
  if isinstance(tree, _LazyTensor):
    return tree.materialize()
  raise UnsafePickleError(f"{what}: holds a {type(tree).__name__}, expected only tensors in dicts")


def _read_zip(path: Path, what: str) -> dict:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{what}: zip file without a single data.pkl: not a torch.save file")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
      raise ValueError(f"{what}: big-endian torch files are not supported")
    storages: dict[str, _Storage] = {}

    def load_storage(pid):
      _, storage_type, key, _location, _numel = pid[:5]
      if key not in storages:
        storage = _Storage(storage_type.dtype)
        storage.data = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=storage.dtype)
        storages[key] = storage
      return storages[key]

    tree = _TorchUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage, what).load()
  return _materialize(tree, what)


def _read_legacy(f, what: str) -> dict:
  plain = lambda: _TorchUnpickler(f, lambda pid: None, what).load()
  if plain() != _LEGACY_MAGIC:
    raise ValueError(f"{what}: not a torch.save file (no zip archive, no legacy magic number)")
  plain()  # protocol version
  sys_info = plain()
  if not sys_info.get("little_endian", True):
    raise ValueError(f"{what}: big-endian torch files are not supported")
  storages: dict[str, _Storage] = {}
  views = []

  def load_storage(pid):
    _, storage_type, key, _location, _numel, view = pid
    if key not in storages:
      storages[key] = _Storage(storage_type.dtype)
    if view is None:
      return storages[key]
    view_key, offset, size = view  # an old-style storage view: a slice of its root storage
    if view_key not in storages:
      storages[view_key] = _Storage(storage_type.dtype)
      views.append((view_key, key, offset, size))
    return storages[view_key]

  tree = _TorchUnpickler(f, load_storage, what).load()
  for key in _TorchUnpickler(f, lambda pid: None, what).load():
    storage = storages[key]
    (numel,) = struct.unpack("<q", f.read(8))
    raw = f.read(numel * storage.dtype.itemsize)
    if len(raw) != numel * storage.dtype.itemsize:
      raise ValueError(f"{what}: truncated (storage {key} needs {numel} elements)")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)
  for view_key, key, offset, size in views:
    storages[view_key].data = storages[key].data[offset:offset + size]
  return _materialize(tree, what)


def read_state_dict(path) -> dict[str, np.ndarray]:
  """The {name: array} state_dict saved in the torch file at `path`."""
  path = Path(path)
  if zipfile.is_zipfile(path):
    return _read_zip(path, str(path))
  with open(path, "rb") as f:
    try:
      return _read_legacy(f, str(path))
    except (pickle.UnpicklingError, EOFError, struct.error) as e:
      if isinstance(e, UnsafePickleError):
        raise
      raise ValueError(f"{path}: not a readable torch.save file ({e})") from e
