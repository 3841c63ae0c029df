"""Ported weights compute what the original framework computes.

Reference: torchvision-layout VGG `features` built here in torch (torchvision itself is not a
dependency) with random weights. Their state_dict goes through a real `torch.save` file, the
torch-free reader, the porter and the weights store; every block's output must agree with torch
to 1e-4 relative (max |diff| / max |torch|, float32).
"""

import h5py
import jax
import numpy as np
import pytest
import torch
from torch import nn

from cxr_jax.models import BLOCK_NAMES, VGG
from cxr_jax.weights import PREPROCESSING, convert_file, from_keras_h5, load_pretrained
from cxr_jax.weights.torch_file import read_state_dict

CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
RTOL = 1e-4


def torch_features(arch: str, seed: int = 0) -> nn.Sequential:
  """torchvision's `vgg16().features` / `vgg19().features` layout, He-initialised like it."""
  torch.manual_seed(seed)
  layers, c_in = [], 3
  for v in CFG[arch]:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      continue
    conv = nn.Conv2d(c_in, v, kernel_size=3, padding=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.uniform_(conv.bias, -0.1, 0.1)  # non-zero, so a lost bias shows
    layers += [conv, nn.ReLU(inplace=True)]
    c_in = v
  return nn.Sequential(*layers).eval()


def torchvision_state_dict(features: nn.Sequential) -> dict:
  """As torchvision names it, with a (small) classifier the porter must ignore."""
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  state["classifier.0.weight"] = torch.zeros(4, 8)
  return state


def torch_block_outputs(features: nn.Sequential, x_nhwc: np.ndarray) -> list[np.ndarray]:
  outs, x = [], torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
  with torch.no_grad():
    for layer in features:
      x = layer(x)
      if isinstance(layer, nn.MaxPool2d):
        outs.append(x.permute(0, 2, 3, 1).numpy())
  return outs


def jax_block_outputs(arch: str, backbone: dict, x_nhwc: np.ndarray) -> list[np.ndarray]:
  model = VGG(depth=int(arch[3:]))
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, stop="block5",
                                           mutable=["intermediates"])[1]["intermediates"])
  sown = apply(backbone, x_nhwc)
  return [np.asarray(sown[b]["output"][0]) for b in BLOCK_NAMES]


def assert_close(got, want, what):
  assert got.shape == want.shape, what
  err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  assert err <= RTOL, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("arch,shape,legacy", [
    ("vgg16", (2, 96, 160), False),
    ("vgg19", (2, 96, 160), True),
    ("vgg16", (1, 224, 224), True),
])
def test_torchvision_port_matches_torch(arch, shape, legacy, tmp_path, monkeypatch):
  monkeypatch.setenv("CXR_JAX_WEIGHTS", str(tmp_path / "weights"))
  features = torch_features(arch)
  path = tmp_path / f"{arch}.pth"
  torch.save(torchvision_state_dict(features), path, _use_new_zipfile_serialization=not legacy)
  convert_file(arch, "torchvision", path, verify=False)  # random weights: no published hash
  pretrained = load_pretrained(arch, "torchvision")      # from the store, not from the file
  assert pretrained.preprocessing == "torchvision"
  assert pretrained.version.startswith("torchvision-")

  x = np.random.default_rng(0).normal(size=shape + (3,)).astype(np.float32)
  want = torch_block_outputs(features, x)
  got = jax_block_outputs(arch, pretrained.params, x)
  for block, g, w in zip(BLOCK_NAMES, got, want, strict=True):
    assert_close(g, w, f"{arch} {shape} {block}")
  # Globally pooled features (the "gap" head's input).
  assert_close(got[-1].mean(axis=(1, 2)), want[-1].mean(axis=(1, 2)), "pooled block5")


def test_torch_reader_matches_torch_load(tmp_path):
  """Zip and legacy files; non-contiguous, shared-storage and non-float32 tensors."""
  base = torch.randn(6, 5)
  state = {"a": base, "a_t": base.t(), "row": base[2], "half": torch.randn(3).half(),
           "long": torch.arange(7), "double": torch.randn(2, 2).double()}
  for legacy in (False, True):
    path = tmp_path / f"s{legacy}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    got = read_state_dict(path)
    reference = torch.load(path, weights_only=True)
    assert set(got) == set(reference)
    for key, value in reference.items():
      np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)
      assert got[key].dtype == value.numpy().dtype


def normalise(u: np.ndarray, spec: dict) -> np.ndarray:
  """The documented PREPROCESSING formula (what the data pipeline must do)."""
  if spec["channel_order"] == "bgr":
    u = u[..., ::-1]
  return ((u * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])).astype(np.float32)


def test_preprocessing_specs():
  rgb = np.array([[[10, 20, 30]]], np.uint8)
  np.testing.assert_allclose(normalise(rgb, PREPROCESSING["caffe"])[0, 0],
                             [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
  np.testing.assert_allclose(normalise(rgb, PREPROCESSING["torchvision"])[0, 0],
                             [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                              (30 / 255 - 0.406) / 0.225], rtol=1e-6)


def write_keras_h5(path, features: nn.Sequential, arch: str, naming: str = "keras2") -> None:
  """A Keras VGG notop weights file: root attr layer_names; per layer a group with attr
  weight_names and the datasets they name (tf ordering: kernels HWIO).

  naming "keras2": weight names `block1_conv1/kernel:0` (nested groups, Keras 2 save_weights);
  "keras1": `block1_conv1_W_1:0` (flat, as in the 2016 files keras.applications downloads).
  """
  depth = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}[arch]
  convs = [m for m in features if isinstance(m, nn.Conv2d)]
  layer_names, weights, i = ["input_1"], {"input_1": []}, 0
  for b, n in enumerate(depth, start=1):
    for c in range(1, n + 1):
      name = f"block{b}_conv{c}"
      kernel = convs[i].weight.detach().numpy().transpose(2, 3, 1, 0)
      bias = convs[i].bias.detach().numpy()
      names = ([f"{name}/kernel:0", f"{name}/bias:0"] if naming == "keras2"
               else [f"{name}_W_1:0", f"{name}_b_1:0"])
      layer_names.append(name)
      weights[name] = list(zip(names, (kernel, bias), strict=True))
      i += 1
    layer_names.append(f"block{b}_pool")
    weights[f"block{b}_pool"] = []
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [n.encode("utf8") for n in layer_names]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for name in sorted(layer_names):  # Keras creates the groups sorted by name
      group = f.create_group(name)
      group.attrs["weight_names"] = [w.encode("utf8") for w, _ in weights[name]]
      for w, value in weights[name]:
        group.create_dataset(w, data=value)


@pytest.mark.parametrize("arch,naming", [("vgg16", "keras2"), ("vgg19", "keras1")])
def test_keras_h5_port_matches_torch_on_caffe_input(arch, naming, tmp_path):
  features = torch_features(arch, seed=1)
  path = tmp_path / f"{arch}_notop.h5"
  write_keras_h5(path, features, arch, naming)
  backbone = from_keras_h5(path, arch)
  # Keras VGG weights expect caffe input: BGR, 0..255, ImageNet mean subtracted.
  u = np.random.default_rng(1).integers(0, 256, size=(2, 64, 96, 3)).astype(np.float32)
  x = normalise(u, PREPROCESSING["caffe"])
  want = torch_block_outputs(features, x)
  got = jax_block_outputs(arch, backbone, x)
  for block, g, w in zip(BLOCK_NAMES, got, want, strict=True):
    assert_close(g, w, f"keras {arch} {block}")
