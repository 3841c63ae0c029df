"""Shared test fixtures. Real data comes from ../shared/data/cxr3 (or $CXR_DATA), never from the repo."""

import os

# Tests run on the CPU, also on machines that have an accelerator, so numbers are comparable.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA compiles of VGG dominate short tests: reuse them across tests and subprocesses. The cache is
# keyed by the computation, flags and versions, so it can never hand back a stale executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.expanduser("~/.cache/cxr_jax/jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

from cxr_jax import machine, paths  # noqa: E402


def _machine_line() -> str:
  xla = os.environ.get("XLA_FLAGS", "")
  return f"machine: {machine.summary()}" + (f"; XLA_FLAGS={xla}" if xla else "")


# Rounding follows the CPU's instruction sets: every run and every failure names them.
def pytest_report_header(config):
  return _machine_line()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  report = yield
  if report.failed:
    report.sections.append(("machine", _machine_line()))
  return report


@pytest.fixture(scope="session")
def cxr3_root():
  root = paths.default_data_root()
  if not (root / "manifest.csv").is_file():
    pytest.fail(f"cxr3 data not found at {root}: set CXR_DATA to the folder holding manifest.csv")
  return root


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
  """A cache root shared by the tests of one session (built datasets, converted weights)."""
  return tmp_path_factory.mktemp("cxr_jax_cache")


@pytest.fixture(scope="module")
def tiny_densenet():
  """config.model.arch='densenet121' builds a DenseNet121-shaped net with one dense layer per block
  and growth 8 (same stages, transitions, BatchNorm handling and head), for trainer tests."""
  from cxr_jax import models
  from cxr_jax.models.densenet import DenseNet

  real = models.create_model

  def create(model_config, dtype=None):
    model = real(model_config, dtype)
    return model.clone(block_sizes=(1, 1, 1, 1), growth_rate=8) if isinstance(model, DenseNet) else model

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(models, "create_model", create)
    yield


@pytest.fixture(scope="session")
def subset_manifest():
  """fn(manifest_csv, folder, per_cell, columns=("source", "label")) -> (folder, rows): a manifest
  in `folder` over the first `per_cell` rows of each cell of the real one, files by absolute path
  (real images, small sets: each source and class present, seconds to build)."""
  import csv

  def make(manifest, folder, per_cell, columns=("source", "label")):
    with open(manifest, newline="") as f:
      rows = list(csv.DictReader(f))
    picked, counts = [], {}
    for row in rows:
      cell = tuple(row[c] for c in columns)
      if counts.get(cell, 0) < per_cell:
        counts[cell] = counts.get(cell, 0) + 1
        picked.append(dict(row, file=str(manifest.parent / row["file"])))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(picked)
    return folder, picked

  return make


@pytest.fixture(scope="session")
def save_random_run():
  """fn(path, config, preprocessing, seed=0, bias_sd=0.01) -> path: a run saved without training,
  He-normal weights of config.model at config.data.image_size (a model whose outputs vary)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from cxr_jax import checkpoint, models

  def make(path, config, preprocessing, seed=0, bias_sd=0.01):
    size = config.data.image_size
    model = models.create_model(config.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])) if len(s.shape) > 1 else bias_sd,
                             s.shape).astype(np.float32), shapes)
    checkpoint.save_trained(path, config, {"params": params}, preprocessing)
    return path

  return make


@pytest.fixture
def kill_training():
  """fn(config, workdir, epoch=1, step=4): trains `config` in `workdir` until a simulated kill
  (KeyboardInterrupt, as at a session's end) at that epoch and global step, default mid-way
  through the second epoch; the checkpoints written before it stay, as after a real kill."""
  from cxr_jax.train import trainer

  def run(config, workdir, epoch=1, step=4):
    real_prepare = trainer._prepare_batch

    def dying_prepare(s, batch, e, st):
      if (e, st) == (epoch, step):
        raise KeyboardInterrupt("simulated kill")
      return real_prepare(s, batch, e, st)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
      mp.setattr(trainer, "_prepare_batch", dying_prepare)
      trainer.train(trainer.setup(config), workdir)

  return run
