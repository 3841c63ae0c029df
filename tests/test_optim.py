"""Fine-tuning degree labels, plateau schedule and early stopping, on constructed inputs."""

import jax
import numpy as np
import optax
import pytest

from configs import default
from cxr_jax.models import BLOCK_NAMES, FineTuningPlan, fine_tuning_plan
from cxr_jax.train import optim


def _tree():
  params = {f"block{i}": {"conv1": {"kernel": np.zeros((3, 3, 1, 1)), "bias": np.zeros(1)}}
            for i in range(1, 6)}
  params["head"] = {"logits": {"kernel": np.zeros((1, 3)), "bias": np.zeros(3)}}
  return params


@pytest.mark.parametrize("k", range(6))
def test_labels_follow_fine_tuning_degree(k):
  plan = FineTuningPlan(BLOCK_NAMES, k)
  labels = plan.param_labels(_tree())
  frozen = {name for name, sub in labels.items()
            if set(jax.tree.leaves(sub)) == {optim.FROZEN}}
  assert frozen == {f"block{i}" for i in range(1, 6 - k)}
  assert set(jax.tree.leaves(labels["head"])) == {optim.TRAINABLE}
  assert plan.trainable == tuple(f"block{i}" for i in range(6 - k, 6))


def test_bad_degree_is_refused():
  with pytest.raises(ValueError, match="trainable_blocks=6"):
    FineTuningPlan(BLOCK_NAMES, 6).param_labels(_tree())


def test_frozen_params_never_move_even_with_gradient():
  config = default.get_config()
  config.model.trainable_blocks = 1
  params = jax.tree.map(lambda x: np.ones_like(x, np.float32), _tree())
  tx = optim.make_optimizer(params, fine_tuning_plan(config.model), config.train)
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = optax.apply_updates(params, updates)
  for i in range(1, 5):
    np.testing.assert_array_equal(moved[f"block{i}"]["conv1"]["kernel"], 1.0)
  assert np.all(moved["block5"]["conv1"]["kernel"] < 1.0)
  assert np.all(moved["head"]["logits"]["kernel"] < 1.0)


def test_rmsprop_matches_keras_update():
  # Keras RMSprop, first step from zero accumulators: v = (1-rho) g^2; x -= lr g / (sqrt(v) + eps).
  config = default.get_config()
  tx = optim.base_optimizer(config.train)
  g = np.array([0.3, -2.0, 1e-4], np.float32)
  updates, _ = tx.update(g, tx.init(g))
  lr, rho, eps = 1e-5, 0.9, 1e-7
  expected = -lr * g / (np.sqrt((1 - rho) * g**2) + eps)
  np.testing.assert_allclose(updates, expected, rtol=1e-5)


def _update_sizes(train_config, total_steps, n):
  """|update| of n RMSprop steps on a constant gradient: the rate times 1/sqrt(1 - rho^(k+1))."""
  tx = optim.base_optimizer(train_config, total_steps)
  g = np.ones(1, np.float32)
  state, sizes = tx.init(g), []
  for _ in range(n):
    updates, state = tx.update(g, state)
    sizes.append(float(abs(updates[0])))
  return np.array(sizes)


def test_cosine_schedule_anneals_to_zero_at_the_runs_end():
  config = default.get_config().train
  constant = _update_sizes(config, None, 5)
  config.lr_schedule = "cosine"
  cosine = _update_sizes(config, 4, 5)
  factor = 0.5 * (1 + np.cos(np.pi * np.minimum(np.arange(5), 4) / 4))   # 1, .85, .5, .15, 0
  np.testing.assert_allclose(cosine, constant * factor, rtol=1e-5, atol=1e-12)
  assert cosine[-1] == 0.0
  config.warmup_steps = 2
  warm = _update_sizes(config, 6, 3)    # linear from 0 over 2 steps, then the peak
  np.testing.assert_allclose(warm, constant[:3] * np.array([0.0, 0.5, 1.0]), rtol=1e-5, atol=1e-12)


def test_cosine_schedule_needs_the_runs_length():
  config = default.get_config().train
  config.lr_schedule = "cosine"
  with pytest.raises(ValueError, match="run's length"):
    optim.base_optimizer(config)
  config.lr_schedule = "step"
  with pytest.raises(ValueError, match="lr_schedule='step'"):
    optim.base_optimizer(config, 10)


def test_plateau_reduces_lr_after_patience_epochs_of_stall():
  config = default.get_config().train
  config.plateau_factor, config.plateau_patience = 0.5, 2
  plateau = optim.make_plateau(config)
  state = plateau.init({})
  scales = []
  for val_loss in [1.0, 0.8, 0.8, 0.8, 0.7, 0.9, 0.9, 0.9, 0.9]:
    state = optim.plateau_step(plateau, state, val_loss)
    scales.append(float(state.scale))
  assert scales == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_early_stopping_keeps_best_epoch_and_stops_after_patience():
  stopper = optim.EarlyStopping(patience=3)
  losses = [1.0, 0.7, 0.75, 0.69, 0.8, 0.9, 0.71]
  decisions = [stopper.update(epoch, loss) for epoch, loss in enumerate(losses)]
  assert [d[0] for d in decisions] == [True, True, False, True, False, False, False]
  assert [d[1] for d in decisions] == [False] * 6 + [True]
  restored = optim.EarlyStopping.from_dict(stopper.to_dict())
  assert restored.best_epoch == 3 and restored.best_loss == pytest.approx(0.69)
