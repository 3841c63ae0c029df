"""Trainer invariants on real cxr3 images at smoke size: freezing, resume, data parallel, NaN, launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import smoke
from cxr_jax import train
from cxr_jax.train import checkpoint, trainer

REPO = Path(__file__).resolve().parent.parent


def smoke_config(**train_overrides):
  c = smoke.get_config()
  c.model.dropout = 0.0   # dropout masks depend on the device count; the rest must not
  c.train.num_epochs = 3
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def latest_params(workdir):
  return train.load_trained(workdir, which="latest").variables["params"]


def assert_trees_equal(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A 3-epoch FT2 smoke run; returns (initial params, workdir, per-epoch history)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  s = trainer.setup(smoke_config())
  initial = jax.tree.map(np.asarray, s.state.params)
  checkpoint.write_run_info(workdir, s.config, s.versions)
  loop, _ = trainer.train(s, workdir)
  assert loop["finished"] and len(loop["history"]) == 3
  return initial, workdir, loop["history"]


def test_frozen_blocks_unchanged_trainable_blocks_move(uninterrupted):
  initial, workdir, _ = uninterrupted
  final = latest_params(workdir)
  for block in ("block1", "block2", "block3"):   # FT2: the first three blocks are frozen
    assert_trees_equal(initial[block], final[block], rtol=0, atol=0)
  for module in ("block4", "block5", "head"):
    moved = jax.tree.leaves(jax.tree.map(lambda x, y: np.any(np.asarray(x) != np.asarray(y)),
                                         initial[module], final[module]))
    assert any(moved), f"{module} did not train"


def test_ft0_trains_only_the_head(tmp_path):
  c = smoke_config(num_epochs=1, steps_per_epoch=2)
  c.model.trainable_blocks = 0
  s = trainer.setup(c)
  initial = jax.tree.map(np.asarray, s.state.params)
  trainer.train(s, tmp_path)
  final = checkpoint._restore_variables(tmp_path, "latest")["params"]
  for block in ("block1", "block2", "block3", "block4", "block5"):
    assert_trees_equal(initial[block], final[block], rtol=0, atol=0)
  assert np.any(np.asarray(initial["head"]["logits"]["kernel"])
                != np.asarray(final["head"]["logits"]["kernel"]))


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
  _, reference, history = uninterrupted
  real_prepare = trainer._prepare_batch

  def dying_prepare(s, batch, epoch, step):
    if epoch == 1 and step == 4:            # mid-way through the second epoch
      raise KeyboardInterrupt("simulated kill")
    return real_prepare(s, batch, epoch, step)

  monkeypatch.setattr(trainer, "_prepare_batch", dying_prepare)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(trainer.setup(smoke_config()), tmp_path)
  monkeypatch.setattr(trainer, "_prepare_batch", real_prepare)
  loop, _ = trainer.train(trainer.setup(smoke_config()), tmp_path)
  assert [h["epoch"] for h in loop["history"]] == [0, 1, 2]
  assert_trees_equal(latest_params(reference), checkpoint._restore_variables(
      tmp_path, "latest")["params"], rtol=0, atol=0)


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real_prepare = trainer._prepare_batch

  def poisoned(s, batch, epoch, step):
    batch = real_prepare(s, batch, epoch, step)
    if step == 4:   # NaN pixels can vanish in max-pooling; a NaN loss weight cannot
      batch = dict(batch, weight=np.full_like(batch["weight"], np.nan))
    return batch

  monkeypatch.setattr(trainer, "_prepare_batch", poisoned)
  with pytest.raises(trainer.NonFiniteLoss, match="at step 5 .epoch 1.") as err:
    trainer.train(trainer.setup(smoke_config()), tmp_path)
  assert "checkpoints" in str(err.value)
  kept = checkpoint.Checkpoints(tmp_path)
  assert kept.latest.latest_step() == 0       # epoch 0's checkpoint, untouched
  kept.close()


def test_launch_on_8_devices_matches_1_device_and_writes_outputs(uninterrupted, tmp_path):
  """launch.py end to end on 8 fake CPU devices; same global batch => same params as 1 device."""
  _, reference, history = uninterrupted
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "launch.py", "--config=configs/smoke.py", f"--workdir={tmp_path}",
         "--config.model.dropout=0.0", "--config.train.num_epochs=3"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  versions = json.loads((tmp_path / "versions.json").read_text())
  assert len(versions["devices"]) == 8
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert 0.0 <= metrics["accuracy"] <= 1.0
  assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard events"
  assert (tmp_path / "checkpoints" / "best").is_dir()
  for key in ("train_loss", "val_loss"):
    np.testing.assert_allclose(
        [h[key] for h in json.loads((tmp_path / "history.json").read_text())],
        [h[key] for h in history], rtol=1e-5)
  assert_trees_equal(latest_params(reference), latest_params(tmp_path), rtol=1e-5, atol=1e-6)
