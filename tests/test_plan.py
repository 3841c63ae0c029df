"""The fine-tuning plan: FTk's frozen and trainable blocks, boundary and labels, VGG and DenseNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from cxr_jax.models import BLOCK_NAMES, STAGE_NAMES, FineTuningPlan, create_model, fine_tuning_plan
from cxr_jax.models.plan import FROZEN, TRAINABLE

BLOCKS = {"vgg16": BLOCK_NAMES, "densenet121": STAGE_NAMES}
ALWAYS_TRAIN = {"vgg16": {"head"}, "densenet121": {"features", "head"}}   # not blocks


def model_config(arch: str, k: int):
  c = default.get_config().model
  c.arch, c.trainable_blocks = arch, k
  return c


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def real_params(request):
  """(arch, the parameter shapes create_model's network has at 48 px)."""
  model = create_model(model_config(request.param, 2))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
  return request.param, variables["params"]


def test_the_blocks_are_each_archs_own():
  assert BLOCK_NAMES == ("block1", "block2", "block3", "block4", "block5")
  assert STAGE_NAMES == ("stage1", "stage2", "stage3", "stage4", "stage5")
  vgg = fine_tuning_plan(model_config("vgg19", 2))
  assert (vgg.frozen, vgg.trainable, vgg.boundary) == (
      ("block1", "block2", "block3"), ("block4", "block5"), "block3")
  # Issue 20 item 7: DenseNet's trainable blocks are its stages, never VGG's names.
  dense = fine_tuning_plan(model_config("densenet121", 2))
  assert (dense.frozen, dense.trainable, dense.boundary) == (
      ("stage1", "stage2", "stage3"), ("stage4", "stage5"), "stage3")


@pytest.mark.parametrize("arch", sorted(BLOCKS))
@pytest.mark.parametrize("k", range(6))
def test_degree_k_trains_the_last_k_blocks(arch, k):
  plan = fine_tuning_plan(model_config(arch, k))
  names = BLOCKS[arch]
  assert plan.block_names == names and plan.trainable_blocks == k
  assert plan.frozen == names[:5 - k] and plan.trainable == names[5 - k:]
  assert plan.boundary == (names[4 - k] if k < 5 else None)
  # The model puts its stop_gradient after the plan's frozen blocks.
  model = create_model(model_config(arch, k))
  assert model.frozen_blocks == 5 - k
  assert FineTuningPlan.freezing(names, model.frozen_blocks) == plan


@pytest.mark.parametrize("k", range(6))
def test_labels_of_a_real_parameter_tree(real_params, k):
  arch, params = real_params
  plan = fine_tuning_plan(model_config(arch, k))
  labels = plan.param_labels(params)
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  top = {name: set(jax.tree.leaves(sub)) for name, sub in labels.items()}
  expected = {**{b: {FROZEN} for b in BLOCKS[arch][:5 - k]},
              **{b: {TRAINABLE} for b in BLOCKS[arch][5 - k:]},
              **{name: {TRAINABLE} for name in ALWAYS_TRAIN[arch]}}
  assert top == expected
  # Robust training's source classifier is a top-level name of no block: it trains.
  with_source = dict(params, source_head={"logits": {"kernel": np.zeros((4, 2))}})
  assert jax.tree.leaves(plan.param_labels(with_source)["source_head"]) == [TRAINABLE]


def test_a_plan_refuses_another_archs_parameters(real_params):
  arch, params = real_params
  other = "densenet121" if arch == "vgg16" else "vgg16"
  with pytest.raises(ValueError, match="another arch"):
    fine_tuning_plan(model_config(other, 2)).param_labels(params)


@pytest.mark.parametrize("arch", sorted(BLOCKS))
@pytest.mark.parametrize("k", [-1, 6])
def test_degree_outside_0_to_5_is_refused_naming_the_field(arch, k):
  with pytest.raises(ValueError, match=rf"model\.trainable_blocks={k}\b.*0\.\.5"):
    fine_tuning_plan(model_config(arch, k))
  with pytest.raises(ValueError, match=rf"model\.trainable_blocks={k}\b"):
    create_model(model_config(arch, k))
  with pytest.raises(ValueError, match="frozen_blocks"):
    FineTuningPlan.freezing(BLOCKS[arch], 5 - k)


def test_unknown_arch_is_refused_naming_the_field():
  with pytest.raises(ValueError, match="model.arch"):
    fine_tuning_plan(model_config("resnet50", 2))
