"""Where data, caches and weights live; every default can be overridden by environment."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_data(env_name: str, folder: str) -> Path:
  """`$env_name`, else `../shared/data/<folder>` beside the repository."""
  env = os.environ.get(env_name)
  if env:
    return Path(env).expanduser()
  return (_REPO_ROOT.parent / "shared" / "data" / folder).resolve()


def default_data_root() -> Path:
  """The cxr3 folder: `$CXR_DATA`, else `../shared/data/cxr3` beside the repository."""
  return _shared_data("CXR_DATA", "cxr3")


def default_plus_root() -> Path:
  """cxr-plus (two collections holding two labels each, for training beside cxr3): `$CXR_PLUS`,
  else `../shared/data/cxr-plus` beside the repository."""
  return _shared_data("CXR_PLUS", "cxr-plus")


def default_lung_masks_root() -> Path:
  """The lung-annotation folder: `$CXR_LUNG_MASKS`, else `../shared/data/lung-masks` beside the
  repository."""
  return _shared_data("CXR_LUNG_MASKS", "lung-masks")


def cache_dir() -> Path:
  """Root of everything cxr_jax caches: `$CXR_JAX_CACHE`, else `~/.cache/cxr_jax`."""
  env = os.environ.get("CXR_JAX_CACHE")
  root = Path(env).expanduser() if env else Path.home() / ".cache" / "cxr_jax"
  return root


def tfds_data_dir() -> Path:
  """Where built TFDS datasets go: `$CXR_JAX_DATA_DIR`, else `<cache>/tfds`."""
  env = os.environ.get("CXR_JAX_DATA_DIR")
  return Path(env).expanduser() if env else cache_dir() / "tfds"


def weights_dir() -> Path:
  """Where downloaded and converted weights go: `$CXR_JAX_WEIGHTS`, else `<cache>/weights`."""
  env = os.environ.get("CXR_JAX_WEIGHTS")
  return Path(env).expanduser() if env else cache_dir() / "weights"


def use_compilation_cache() -> None:
  """XLA's persistent compilation cache in `<cache>/jax_compilation_cache`, unless
  $JAX_COMPILATION_CACHE_DIR names one: a repeated run or prediction reuses its compiled steps
  instead of compiling again (seconds for predict, minutes for training at 800 px)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax_compilation_cache"))
