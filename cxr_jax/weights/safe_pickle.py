"""A restricted unpickler for checkpoints that should hold nothing but numpy arrays.

`pickle.load` runs any callable a file names; this one resolves only the globals numpy needs to
rebuild arrays (and plain containers), so a tampered checkpoint is refused instead of executed.
"""

from __future__ import annotations

import collections
import importlib
import io
import pickle

import numpy as np

from cxr_jax.weights.errors import WeightsError


class UnsafePickleError(WeightsError, pickle.UnpicklingError):
  """A pickle names a global outside the allowed set."""


# Pickles written by numpy 1.x name `numpy.core.*`; numpy 2 moved those to `numpy._core.*`.
_NUMPY_CORE_RENAMES = {"numpy.core.multiarray": "numpy._core.multiarray",
                       "numpy.core.numeric": "numpy._core.numeric"}

_ALLOWED_NUMPY = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_ALLOWED_CONTAINERS = {("collections", "OrderedDict"): collections.OrderedDict}


def _numpy_global(module: str, name: str):
  module = _NUMPY_CORE_RENAMES.get(module, module)
  if (module, name) in _ALLOWED_NUMPY:
    try:
      found = importlib.import_module(module)
    except ImportError:  # numpy 1.x still calls it numpy.core
      found = importlib.import_module(module.replace("numpy._core", "numpy.core"))
    return getattr(found, name)
  if module == "numpy.dtypes" and name.endswith("DType"):
    return getattr(np.dtypes, name)  # numpy 2 pickles dtypes through their DType classes
  return None


class NumpyUnpickler(pickle.Unpickler):
  """Unpickles dicts/lists/tuples of numpy arrays and scalars only."""

  def find_class(self, module: str, name: str):
    found = _numpy_global(module, name) or _ALLOWED_CONTAINERS.get((module, name))
    if found is None:
      raise UnsafePickleError(
          f"refusing to unpickle global {module}.{name}: this checkpoint may only hold numpy arrays")
    return found


def load_numpy_pickle(data: bytes, what: str = "checkpoint"):
  """Unpickles `data`: nested dicts of numeric numpy arrays, nothing else.

  `what` names the file in errors.
  """
  try:
    tree = NumpyUnpickler(io.BytesIO(data)).load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{what}: {e}") from None
  _check_arrays_only(tree, what, path="")
  return tree


def _check_arrays_only(tree, what: str, path: str) -> None:
  if isinstance(tree, dict):
    for key, value in tree.items():
      _check_arrays_only(value, what, f"{path}/{key}")
  elif not isinstance(tree, np.ndarray) or tree.dtype.kind not in "biuf":
    raise UnsafePickleError(
        f"{what}: {path or 'top level'} is a {type(tree).__name__}"
        f"{'' if not isinstance(tree, np.ndarray) else ' of dtype ' + str(tree.dtype)}, "
        "but this checkpoint may only hold numeric numpy arrays in nested dicts")
