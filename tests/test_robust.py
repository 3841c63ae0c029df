"""Source-robust training losses (cxr_jax.train.robust): gradient reversal, group DRO, DANN's
source head kept out of the saved model; a smoke run on real cxr3 images with both on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from cxr_jax import checkpoint
from cxr_jax.train import robust, trainer
from cxr_jax.train.step import AXIS


def test_gradient_reversal_keeps_forward_and_negates_scaled_gradient():
  x = jnp.array([1.0, -2.0, 3.0])
  w = jnp.array([0.5, 4.0, -1.0])
  np.testing.assert_array_equal(robust.grad_reverse(x, 0.3), x)
  plain = jax.grad(lambda v: jnp.sum(w * v ** 2))(x)
  reversed_ = jax.grad(lambda v: jnp.sum(w * robust.grad_reverse(v, 0.3) ** 2))(x)
  np.testing.assert_allclose(reversed_, -0.3 * plain, rtol=1e-6)


def test_dann_schedule_rises_from_zero_to_the_weight():
  values = [float(robust.dann_scale(s, 100, 0.5)) for s in (0, 10, 50, 100, 200)]
  assert values[0] == 0.0 and values[-1] == values[-2]
  assert all(a < b for a, b in zip(values[:4], values[1:4], strict=False))
  np.testing.assert_allclose(values[-1], 0.5 * (2 / (1 + np.exp(-10)) - 1), rtol=1e-6)


def _source_case():
  feats = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 2, 5)), jnp.float32)
  head = robust.init_source_head(jax.random.PRNGKey(0), 3, 5, 8)
  return feats, head, jnp.array([0, 1, 2, 1])


def test_dann_confusion_trains_the_classifier_on_the_source_and_the_features_toward_uniform():
  """The bounded adversary: value = CE(source) + scale * CE(uniform) computed by hand; the source
  classifier's gradient is CE(source)'s alone, the features' is scale x CE(uniform)'s through the
  fixed classifier; and the term the backbone minimises is never below log(#sources)."""
  feats, head, sources = _source_case()
  pooled = jnp.mean(feats, axis=(1, 2))
  logits = lambda p, f: robust.SourceHead(3, 8).apply({"params": p}, f)
  ce = lambda p, f: jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits(p, f)), sources[:, None], 1))
  uniform = lambda p, f: -jnp.mean(jax.nn.log_softmax(logits(p, f)))
  value, src, _ = robust.source_loss(head, feats, sources, 0.3, 8, "confusion")
  np.testing.assert_allclose(src, ce(head, pooled), rtol=1e-6)
  np.testing.assert_allclose(value, ce(head, pooled) + 0.3 * uniform(head, pooled), rtol=1e-6)
  assert float(uniform(head, pooled)) >= np.log(3) - 1e-6
  g_head, g_feats = jax.grad(lambda p, f: robust.source_loss(p, f, sources, 0.3, 8, "confusion")[0],
                             argnums=(0, 1))(head, feats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_head,
               jax.grad(ce)(head, pooled))
  expected = jax.grad(lambda f: 0.3 * uniform(head, jnp.mean(f, axis=(1, 2))))(feats)
  np.testing.assert_allclose(g_feats, expected, rtol=1e-5, atol=1e-7)


def test_dann_reversal_gives_the_features_minus_scale_times_the_classifier_gradient():
  feats, head, sources = _source_case()
  value, src, _ = robust.source_loss(head, feats, sources, 0.3, 8, "reversal")
  assert value == src
  g = jax.grad(lambda f: robust.source_loss(head, f, sources, 0.3, 8, "reversal")[0])(feats)
  ref = jax.grad(lambda f: jnp.mean(_source_ce(head, f, sources)))(feats)
  np.testing.assert_allclose(g, -0.3 * ref, rtol=1e-5, atol=1e-8)


def _source_ce(head, f, sources):
  logits = robust.SourceHead(3, 8).apply({"params": head}, jnp.mean(f, axis=(1, 2)))
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), sources[:, None], 1)


def test_dann_loss_is_checked():
  c = smoke.get_config()
  c.train.dann_weight, c.train.dann_loss = 0.3, "confuse"
  with pytest.raises(ValueError, match="dann_loss='confuse'"):
    robust.Options.from_config(c.train, 10)


def _dro(losses, groups, weights, step_size):
  f = jax.pmap(lambda x, g: robust.dro_loss(x, g, weights, step_size=step_size, axis_name=AXIS),
               axis_name=AXIS)
  local, new, value = f(jnp.asarray(losses)[None], jnp.asarray(groups)[None])
  return float(local[0]), np.asarray(new[0]), float(value[0])


def test_dro_weights_move_toward_the_worst_group():
  # Group 2 has the highest mean loss, group 3 is absent from the batch, group 1 has no weight
  # (a cell the training split lacks): it must stay at zero.
  losses = np.array([0.1, 0.2, 2.0, 1.0, 3.0, 0.5], np.float32)
  groups = np.array([0, 0, 2, 4, 2, 4], np.int32)
  weights = np.array([0.25, 0.0, 0.25, 0.25, 0.25], np.float32)
  local, new, value = _dro(losses, groups, weights, step_size=0.5)
  np.testing.assert_allclose(new.sum(), 1.0, rtol=1e-6)
  assert new[1] == 0.0
  assert new[2] > 0.25 > new[0] and new[2] > new[4] > new[0]
  means = np.array([0.15, 0.0, 2.5, 0.0, 0.75])
  expected = weights * np.exp(0.5 * np.where([1, 0, 1, 0, 1], means, 0))
  expected /= expected.sum()
  np.testing.assert_allclose(new, expected, rtol=1e-5)
  np.testing.assert_allclose(value, np.sum(expected * means), rtol=1e-5)
  np.testing.assert_allclose(local, value, rtol=1e-5)   # one device: its share is the whole


def test_dro_gradient_weights_each_group_by_its_weight_over_its_count():
  groups = jnp.array([0, 0, 1], jnp.int32)
  weights = jnp.array([0.5, 0.5], jnp.float32)
  grad = jax.pmap(jax.grad(lambda x: robust.dro_loss(x, groups, weights, step_size=0.0,
                                                    axis_name=AXIS)[0]), axis_name=AXIS)(
      jnp.ones((1, 3), jnp.float32))[0]
  np.testing.assert_allclose(grad, [0.25, 0.25, 0.5], rtol=1e-6)


def test_group_table_cells_and_initial_weights():
  metadata = {"source": np.array(["b", "a", "b", "a"]), "label": np.array([0, 2, 1, -1])}
  names, sources, cells = robust.group_table(metadata, 3)
  assert names == ("a", "b")
  np.testing.assert_array_equal(sources, [1, 0, 1, 0])
  np.testing.assert_array_equal(cells, [3, 2, 4, -1])
  np.testing.assert_allclose(robust.initial_group_weights(cells[:3], 6),
                             [0, 0, 1 / 3, 1 / 3, 1 / 3, 0])


def test_negative_settings_are_refused_by_name():
  c = smoke.get_config()
  c.train.dann_weight = -1.0
  with pytest.raises(ValueError, match="dann_weight"):
    robust.Options.from_config(c.train, 10)


def robust_config():
  c = smoke.get_config()
  c.model.dropout = 0.0
  c.train.group_dro_step = 0.1
  c.train.dann_weight = 1.0
  return c


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
  """A 2-epoch smoke run (real cxr3, 48 px) with group DRO and DANN on."""
  workdir = tmp_path_factory.mktemp("robust")
  s = trainer.setup(robust_config())
  initial = jax.tree.map(np.asarray, s.state.params)
  checkpoint.write_run_info(workdir, s.config, s.versions)
  loop, state = trainer.train(s, workdir)
  return s, initial, workdir, loop, state


def test_robust_run_trains_the_source_head_and_keeps_it_out_of_the_saved_model(robust_run):
  s, initial, workdir, loop, state = robust_run
  assert loop["finished"]
  head = robust.SOURCE_HEAD
  assert head in initial and head in state.params
  assert np.any(np.asarray(initial[head]["logits"]["kernel"])
                != np.asarray(state.params[head]["logits"]["kernel"]))
  assert initial[head]["logits"]["kernel"].shape[-1] == len(s.groups[0]) == 5
  kept = checkpoint.load_trained(workdir).variables["params"]
  assert head not in kept and set(kept) == set(initial) - {head}
  for block in ("block1", "block2", "block3"):   # FT2 stays FT2 with the adversary
    np.testing.assert_array_equal(initial[block]["conv1"]["kernel"], kept[block]["conv1"]["kernel"])


def test_robust_run_group_weights_cover_only_the_training_cells(robust_run):
  s, _, _, _, state = robust_run
  weights = np.asarray(state.robust["group_weights"])
  train_cells = np.unique(s.groups[2][s.split_ids["train"]])
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
  assert np.all(weights[train_cells] > 0)
  assert np.all(np.delete(weights, train_cells) == 0)
  initial = robust.initial_group_weights(s.groups[2][s.split_ids["train"]], len(weights))
  assert not np.allclose(weights, initial)   # the weights moved


def test_robust_run_killed_and_resumed_equals_uninterrupted(robust_run, tmp_path, kill_training):
  """Group weights and the source classifier are part of the saved state: a resumed run takes
  the same steps (bitwise) as the uninterrupted one."""
  _, _, reference, _, state = robust_run
  kill_training(robust_config(), tmp_path)   # mid-way through the second epoch
  _, resumed = trainer.train(trainer.setup(robust_config()), tmp_path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(resumed.params))
  np.testing.assert_array_equal(state.robust["group_weights"], resumed.robust["group_weights"])


def test_dann_trains_on_cached_frozen_features(tmp_path):
  """With the frozen-feature cache the step applies the model from the first trainable block on;
  the last block's output is still what the source classifier sees."""
  c = robust_config()
  c.train.group_dro_step = 0.0
  c.train.feature_cache = True
  c.train.num_epochs, c.train.steps_per_epoch = 1, 2
  s = trainer.setup(c)
  assert s.features is not None
  before = np.asarray(s.state.params[robust.SOURCE_HEAD]["logits"]["kernel"])
  loop, state = trainer.train(s, tmp_path)
  assert loop["finished"]
  assert np.any(before != np.asarray(state.params[robust.SOURCE_HEAD]["logits"]["kernel"]))
