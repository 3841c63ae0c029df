"""Models: VGG16/19 (Lee et al. 2020); `create_model(config.model)` builds one from the config."""

from cxr_jax.models.factory import create_model
from cxr_jax.models.vgg import BLOCK_NAMES, VGG, block_convs, conv_class

__all__ = ["BLOCK_NAMES", "VGG", "block_convs", "conv_class", "create_model"]
