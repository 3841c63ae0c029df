"""The trainer with BatchNorm (DenseNet): frozen stages keep params and statistics, resume, evaluate.

conftest's `tiny_densenet` stands in for the full DenseNet121 (same stages, transitions, norm5,
head and BatchNorm handling; compiles in seconds).
"""

import jax
import numpy as np
import pytest

from configs import smoke
from cxr_jax import checkpoint, models
from cxr_jax.train import trainer

FROZEN, TRAINED = ("stage1", "stage2", "stage3"), ("stage4", "stage5", "features")


pytestmark = pytest.mark.usefixtures("tiny_densenet")


def densenet_config(num_epochs=2, steps=3):
  c = smoke.get_config()
  c.model.arch = "densenet121"
  c.model.hidden = ()
  c.model.dropout = 0.0
  c.model.trainable_blocks = 2
  c.train.num_epochs = num_epochs
  c.train.steps_per_epoch = steps
  c.eval.num_bootstrap = 20
  return c


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def changed(a, b) -> bool:
  return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b)))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """FT2 DenseNet trained 2 epochs x 3 steps and evaluated: (initial variables, workdir)."""
  workdir = tmp_path_factory.mktemp("densenet")
  s = trainer.setup(densenet_config())
  initial = {"params": as_numpy(s.state.params), "batch_stats": as_numpy(s.state.batch_stats)}
  checkpoint.write_run_info(workdir, s.config, s.versions)
  trainer.train(s, workdir)
  metrics = trainer.evaluate_kept(s, workdir)
  return initial, workdir, metrics


def test_frozen_stages_keep_params_and_batch_statistics(trained_run):
  initial, workdir, _ = trained_run
  final = as_numpy(checkpoint._restore_variables(workdir, "latest"))
  assert set(final) == {"params", "batch_stats"}
  for stage in FROZEN:
    for col in ("params", "batch_stats"):
      jax.tree.map(np.testing.assert_array_equal, initial[col][stage], final[col][stage])
  for stage in TRAINED:
    assert changed(initial["params"][stage], final["params"][stage]), f"{stage} params did not train"
    assert changed(initial["batch_stats"][stage], final["batch_stats"][stage]), (
        f"{stage} batch statistics were not updated in train mode")


def test_kept_model_carries_batch_statistics_into_evaluation(trained_run):
  _, workdir, metrics = trained_run
  kept = checkpoint.load_trained(workdir)
  assert set(kept.variables) == {"params", "batch_stats"}
  assert (workdir / "metrics.json").is_file() and 0.0 <= metrics["accuracy"] <= 1.0
  # Evaluation must use the running statistics: the same images give the same probabilities
  # one at a time as in a batch (batch statistics would make them depend on the batch).
  x = np.random.default_rng(0).standard_normal((4, 48, 48, 3)).astype(np.float32)
  batch = kept.model.apply(kept.variables, x, train=False)
  single = np.concatenate([kept.model.apply(kept.variables, x[i:i + 1], train=False)
                           for i in range(4)])
  np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-5)


def test_kill_and_resume_equals_uninterrupted_with_batch_statistics(trained_run, tmp_path,
                                                                    kill_training):
  _, reference, _ = trained_run
  kill_training(densenet_config(), tmp_path)
  trainer.train(trainer.setup(densenet_config()), tmp_path)
  jax.tree.map(np.testing.assert_array_equal,
               as_numpy(checkpoint._restore_variables(reference, "latest")),
               as_numpy(checkpoint._restore_variables(tmp_path, "latest")))


def test_data_parallel_step_averages_batch_statistics_and_keeps_frozen_ones():
  """Two replicas (vmap stands in for pmap: same collectives) see different images: trained
  stages end with the mean of their statistics, identical on both; frozen stages bitwise as before."""
  import functools

  import jax.numpy as jnp

  from cxr_jax.train import optim
  from cxr_jax.train.step import AXIS, TrainState, train_step

  config = densenet_config()
  model = models.create_model(config.model)
  x = np.random.default_rng(1).standard_normal((2, 4, 48, 48, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x[0, :1], train=False)
  plan = models.fine_tuning_plan(config.model)
  tx = optim.make_optimizer(variables["params"], plan, config.train)
  state = TrainState(jnp.asarray(0), variables["params"], tx.init(variables["params"]),
                     optim.make_plateau(config.train).init({}), jax.random.PRNGKey(1),
                     variables["batch_stats"])
  step = functools.partial(train_step, model=model, tx=tx, num_classes=3,
                           frozen=plan.frozen)
  batch = {"image": x, "label": np.zeros((2, 4), np.int32), "weight": np.ones((2, 4), np.float32)}
  stacked = jax.tree.map(lambda v: jnp.stack([v, v]), state)
  new = jax.jit(jax.vmap(step, axis_name=AXIS))(stacked, batch)[0].batch_stats

  stats_of = jax.jit(lambda images: model.apply(variables, images, train=True,
                                                mutable=["batch_stats"])[1]["batch_stats"])
  per_replica = [stats_of(x[d]) for d in range(2)]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *per_replica)
  for stage in TRAINED:
    jax.tree.map(lambda n, e: np.testing.assert_allclose(n[0], e, rtol=1e-5, atol=1e-6),
                 new[stage], expected[stage])
    jax.tree.map(lambda n: np.testing.assert_array_equal(n[0], n[1]), new[stage])
    assert changed(per_replica[0][stage], per_replica[1][stage])   # the replicas really differed
  for stage in FROZEN:
    jax.tree.map(lambda n, v: np.testing.assert_array_equal(n[0], v), new[stage],
                 variables["batch_stats"][stage])
