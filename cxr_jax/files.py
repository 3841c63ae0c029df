"""The one way results reach disk: written whole or not at all.

A file that marks a run finished (metrics.json, status.json, a build log) must never be seen half
written by a resumed run or a concurrent reader, so every result goes through `write_atomic`: the
bytes go to a temporary file beside the target (named by process id, so two processes never share
one) and `os.replace` swaps it in.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def write_atomic(path, data: str | bytes) -> Path:
  """Writes `data` to `path` (parent folders created); readers see the old file or the new one."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  if isinstance(data, bytes):
    tmp.write_bytes(data)
  else:
    tmp.write_text(data)
  os.replace(tmp, path)
  return path


def write_json(path, obj, *, indent: int = 1, sort_keys: bool = False) -> Path:
  """Strict JSON (NaN and infinities become null, numpy scalars plain numbers), atomically."""
  text = json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
  return write_atomic(path, text)


def jsonable(tree):
  """`tree` with numpy scalars/arrays as Python values and non-finite floats as None: an undefined
  metric (an AUC without positives) is null in JSON, never a NaN that strict parsers refuse."""
  if isinstance(tree, dict):
    return {k: jsonable(v) for k, v in tree.items()}
  if isinstance(tree, list | tuple):
    return [jsonable(v) for v in tree]
  if isinstance(tree, np.ndarray):
    return jsonable(tree.tolist())
  if isinstance(tree, np.generic):
    tree = tree.item()
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree
