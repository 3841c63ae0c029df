"""Output neuron keeping (Bassi & Attux 2022): a new head inherits the neurons whose meaning the old
head already had.

In twice transfer (ImageNet -> NIH ChestX-ray14 -> COVID) the 3-class head replaces NIH's
multi-label head; the neurons of classes present in both (pneumonia <- Pneumonia, optionally
normal <- No Finding) keep their trained weights, the others stay freshly initialised.

Head params are `vgg.Head`'s (VGG and DenseNet): dense1..n {kernel, bias}, logits {kernel [H, C],
bias [C]}; column k of the logits kernel and entry k of its bias are output neuron k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def neuron_mapping(pairs: Sequence[tuple[str, str]] | Sequence[str], new_classes: Sequence[str],
                   old_classes: Sequence[str]) -> dict[int, int]:
  """{new index: old index} from class-name pairs ("new", "old") or strings "new:old".

  E.g. pairs=(("pneumonia", "Pneumonia"), ("normal", "No Finding")) with new_classes = LABELS
  and old_classes = the old head's class names.
  """
  mapping: dict[int, int] = {}
  for pair in pairs:
    new, old = pair.split(":", 1) if isinstance(pair, str) else pair
    if new not in new_classes:
      raise ValueError(f"kept neuron {new!r}->{old!r}: {new!r} is not a class of the new head "
                       f"{list(new_classes)}")
    if old not in old_classes:
      raise ValueError(f"kept neuron {new!r}->{old!r}: {old!r} is not a class of the old head "
                       f"{list(old_classes)}")
    k = list(new_classes).index(new)
    if k in mapping:
      raise ValueError(f"kept neuron {new!r} is mapped twice")
    mapping[k] = list(old_classes).index(old)
  return mapping


def keep_output_neurons(new_head: Mapping, old_head: Mapping,
                        mapping: Mapping[int, int]) -> dict:
  """`new_head` with the mapped output neurons (and matching hidden layers) taken from `old_head`.

  Every hidden dense layer (any entry but "logits") is copied when its shapes equal the old one's;
  a hidden layer of another shape makes the logits' inputs mean something else, so it is an
  error when neurons are to be kept. Then column new of the logits kernel and entry new of its
  bias become the old head's column/entry mapping[new]; everything else is `new_head`'s.
  Pure: the inputs are not modified; leaves come back as numpy arrays.
  """
  if "logits" not in new_head or "logits" not in old_head:
    raise ValueError("keep_output_neurons needs head params with a 'logits' layer in both heads")
  out = {name: {k: np.array(v) for k, v in layer.items()} for name, layer in new_head.items()}
  for name, layer in new_head.items():
    if name == "logits":
      continue
    old = old_head.get(name)
    same = old is not None and set(old) == set(layer) and all(
        np.shape(old[k]) == np.shape(layer[k]) for k in layer)
    if not same:
      if mapping:
        raise ValueError(f"keeping output neurons: hidden layer head/{name} differs between the old "
                         f"and the new head ({_shapes(old)} vs {_shapes(layer)}), so the logits' "
                         "inputs would not mean the same; use the same model.hidden")
      continue
    out[name] = {k: np.array(v) for k, v in old.items()}
  new_k, old_k = np.asarray(new_head["logits"]["kernel"]), np.asarray(old_head["logits"]["kernel"])
  if mapping and new_k.shape[0] != old_k.shape[0]:
    raise ValueError(f"keeping output neurons: logits inputs differ ({old_k.shape[0]} in the old "
                     f"head, {new_k.shape[0]} in the new)")
  for new, old in mapping.items():
    if not (0 <= new < new_k.shape[1] and 0 <= old < old_k.shape[1]):
      raise ValueError(f"kept neuron {new}<-{old}: out of range (new head has {new_k.shape[1]} "
                       f"outputs, old head {old_k.shape[1]})")
    out["logits"]["kernel"][:, new] = old_k[:, old]
    out["logits"]["bias"][new] = np.asarray(old_head["logits"]["bias"])[old]
  return out


def _shapes(layer) -> dict | None:
  return None if layer is None else {k: tuple(np.shape(v)) for k, v in layer.items()}
