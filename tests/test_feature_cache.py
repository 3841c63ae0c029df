"""Frozen-feature cache: same training as without it, keyed so stale features are never reused."""

import json

import jax
import numpy as np
import pytest

from cxr_jax import checkpoint, train
from cxr_jax.models import fine_tuning_plan
from cxr_jax.train import feature_cache, trainer
from tests.test_experiments import tiny_config, write_manifest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("gen")
  write_manifest(root / "src")
  return root


def ft2_config(root, **train_overrides):
  """FT2 on the generated source: blocks 1-3 frozen, dropout 0.5 in the head, no augmentation."""
  c = tiny_config(root)
  c.experiment.grid = ""
  c.model.trainable_blocks = 2
  c.train.num_epochs = 2
  c.train.steps_per_epoch = 2
  c.eval.num_bootstrap = 0
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


@pytest.mark.slow  # two 4-step trainings and evaluations: ~50 s of CPU
def test_cached_training_equals_uncached(root, tmp_path, monkeypatch):
  monkeypatch.setenv("CXR_JAX_FEATURE_CACHE", str(tmp_path / "features"))
  monkeypatch.setattr("cxr_jax.evaluate.workdir.write_plots", lambda metrics, out: {})
  plain = train.train_and_evaluate(ft2_config(root), tmp_path / "plain")
  cached = train.train_and_evaluate(ft2_config(root, feature_cache=True), tmp_path / "cached")

  folders = list((tmp_path / "features").iterdir())
  assert len(folders) == 1                       # the cache was built and used
  key = json.loads((folders[0] / "key.json").read_text())
  features = np.load(folders[0] / "features.npy")
  assert key["block"] == "block3" and features.shape[1:] == (6, 6, 256)   # 48 px / 8

  a, b = (checkpoint.load_trained(tmp_path / d, which="latest").variables["params"]
          for d in ("plain", "cached"))
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(b["head"]))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6), a, b)
  ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("plain", "cached"))
  np.testing.assert_allclose([h["val_loss"] for h in ha], [h["val_loss"] for h in hb], rtol=1e-5)
  assert plain["accuracy"] == cached["accuracy"]
  for name in plain["per_class"]:
    assert plain["per_class"][name]["roc_auc"] == pytest.approx(
        cached["per_class"][name]["roc_auc"], abs=1e-6)


def test_key_changes_with_what_the_features_depend_on(root, monkeypatch, tmp_path):
  monkeypatch.setenv("CXR_JAX_FEATURE_CACHE", str(tmp_path))
  config = ft2_config(root, feature_cache=True)
  s = trainer.setup(config)
  params = jax.tree.map(np.asarray, s.state.params)
  ids = np.arange(10)
  key = lambda c=config, p=params, version="v1", pre="torchvision", i=ids: feature_cache.key_digest(
      feature_cache.cache_key(c, fine_tuning_plan(c.model), p, version, pre, i))
  base = key()
  assert key() == base
  # Trainable blocks and the head do not change the block3 features...
  moved = dict(params, block5=jax.tree.map(lambda x: x + 1, params["block5"]))
  assert key(p=moved) == base
  # ...one frozen weight, the size, the preprocessing, the dataset or the ids do.
  nudged = jax.tree.map(np.copy, params)
  nudged["block1"]["conv1"]["kernel"].flat[0] = np.nextafter(
      nudged["block1"]["conv1"]["kernel"].flat[0], np.float32(1))
  assert key(p=nudged) != base
  bigger = config.copy_and_resolve_references()
  bigger.data.image_size = 64
  assert key(c=bigger) != base
  assert key(pre="caffe") != base and key(version="v2") != base and key(i=ids[:-1]) != base
  deeper = config.copy_and_resolve_references()
  deeper.model.trainable_blocks = 1                # caches block4 instead
  assert key(c=deeper) != base


def test_cache_is_skipped_when_it_cannot_give_the_same_training(root, monkeypatch, tmp_path):
  monkeypatch.setenv("CXR_JAX_FEATURE_CACHE", str(tmp_path))
  config = ft2_config(root, feature_cache=True)
  assert feature_cache.unusable_reason(config, fine_tuning_plan(config.model)) is None
  for field, value, reason in (("data.augment", True, "augment"),
                               ("data.acquisition", True, "acquisition"),
                               ("train.mixup_alpha", 0.2, "mixup"),
                               ("model.trainable_blocks", 5, "no frozen blocks"),
                               ("train.feature_cache", False, "off")):
    c = config.copy_and_resolve_references()
    section, name = field.split(".")
    c[section][name] = value
    assert reason in feature_cache.unusable_reason(c, fine_tuning_plan(c.model))
  config.train.feature_cache_max_gb = 1e-6         # the size guard
  assert trainer.setup(config).features is None
  config.train.feature_cache_max_gb = 1.0
  assert trainer.setup(config).features is not None
