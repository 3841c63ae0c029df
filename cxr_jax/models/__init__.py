"""Models: VGG16/19 (Lee et al. 2020), DenseNet121 (Bassi & Attux 2022); `create_model(config.model)` builds one from the config."""

from cxr_jax.models.densenet import STAGE_NAMES, DenseNet
from cxr_jax.models.factory import ARCHS, create_model, fine_tuning_plan
from cxr_jax.models.plan import FineTuningPlan
from cxr_jax.models.vgg import BLOCK_NAMES, VGG, block_convs, conv_class

__all__ = ["ARCHS", "BLOCK_NAMES", "STAGE_NAMES", "VGG", "DenseNet", "FineTuningPlan", "block_convs",
           "conv_class", "create_model", "fine_tuning_plan"]
