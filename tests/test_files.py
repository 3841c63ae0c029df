"""cxr_jax.files: the one atomic writer."""

import json
import os

import numpy as np
import pytest

from cxr_jax import files


def test_write_json_is_strict_json_with_undefined_values_as_null(tmp_path):
  path = files.write_json(tmp_path / "a" / "metrics.json",
                          {"auc": float("nan"), "inf": np.float32(np.inf), "n": np.int64(3),
                           "xs": np.array([0.5, np.nan]), "t": (1, 2)})
  text = path.read_text()
  assert json.loads(text) == {"auc": None, "inf": None, "n": 3, "xs": [0.5, None], "t": [1, 2]}
  assert "NaN" not in text and "Infinity" not in text


def test_a_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / "metrics.json"
  files.write_json(path, {"accuracy": 0.5})

  def crash(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk full"):
    files.write_json(path, {"accuracy": 0.9})
  assert json.loads(path.read_text()) == {"accuracy": 0.5}


def test_bytes_and_text_round_trip(tmp_path):
  assert files.write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
  assert files.write_atomic(tmp_path / "t.md", "# hi\n").read_text() == "# hi\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "t.md"]  # no temporaries left
