"""Output neuron keeping copies exactly the mapped output neurons (and same-shape hidden layers)."""

import jax
import numpy as np
import pytest

from cxr_jax.data.records import LABELS
from cxr_jax.models.neuron_keeping import keep_output_neurons, neuron_mapping

OLD_CLASSES = ("Atelectasis", "No Finding", "Pneumonia", "Effusion", "Mass")


def head(seed: int, hidden=(8,), num_classes=3, features=6) -> dict:
  rng = np.random.default_rng(seed)
  layers, width = {}, features
  for i, h in enumerate(hidden):
    layers[f"dense{i + 1}"] = {"kernel": rng.normal(size=(width, h)).astype(np.float32),
                               "bias": rng.normal(size=(h,)).astype(np.float32)}
    width = h
  layers["logits"] = {"kernel": rng.normal(size=(width, num_classes)).astype(np.float32),
                      "bias": rng.normal(size=(num_classes,)).astype(np.float32)}
  return layers


def test_copies_exactly_the_mapped_neurons():
  new, old = head(0), head(1, num_classes=len(OLD_CLASSES))
  before = jax.tree.map(np.copy, new), jax.tree.map(np.copy, old)
  mapping = neuron_mapping((("pneumonia", "Pneumonia"), ("normal", "No Finding")), LABELS,
                           OLD_CLASSES)
  assert mapping == {2: 2, 1: 1}
  mapping = {2: 2, 1: 4}  # another correspondence, so equal indices cannot hide a bug
  kept = keep_output_neurons(new, old, mapping)
  k, b = kept["logits"]["kernel"], kept["logits"]["bias"]
  np.testing.assert_array_equal(k[:, 2], old["logits"]["kernel"][:, 2])
  np.testing.assert_array_equal(k[:, 1], old["logits"]["kernel"][:, 4])
  np.testing.assert_array_equal(b[[1, 2]], old["logits"]["bias"][[4, 2]])
  np.testing.assert_array_equal(k[:, 0], new["logits"]["kernel"][:, 0])  # covid: fresh
  assert b[0] == new["logits"]["bias"][0]
  np.testing.assert_array_equal(kept["dense1"]["kernel"], old["dense1"]["kernel"])
  np.testing.assert_array_equal(kept["dense1"]["bias"], old["dense1"]["bias"])
  # Pure: neither input changed.
  for got, want in ((new, before[0]), (old, before[1])):
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, got, want)))


def test_empty_mapping_keeps_only_same_shape_hidden_layers():
  new, old = head(0), head(1, num_classes=5)
  kept = keep_output_neurons(new, old, {})
  np.testing.assert_array_equal(kept["logits"]["kernel"], new["logits"]["kernel"])
  np.testing.assert_array_equal(kept["dense1"]["kernel"], old["dense1"]["kernel"])
  other = keep_output_neurons(head(0, hidden=(4,)), old, {})
  np.testing.assert_array_equal(other["dense1"]["kernel"], head(0, hidden=(4,))["dense1"]["kernel"])


def test_mismatches_are_refused():
  old = head(1, num_classes=5)
  with pytest.raises(ValueError, match="head/dense1 differs"):
    keep_output_neurons(head(0, hidden=(4,)), old, {2: 2})
  with pytest.raises(ValueError, match="out of range"):
    keep_output_neurons(head(0), old, {2: 7})
  with pytest.raises(ValueError, match="logits inputs differ"):
    keep_output_neurons(head(0, hidden=()), head(1, hidden=(), features=7), {0: 0})
  with pytest.raises(ValueError, match="not a class of the old head"):
    neuron_mapping(["pneumonia:Pneumonitis"], LABELS, OLD_CLASSES)
  with pytest.raises(ValueError, match="not a class of the new head"):
    neuron_mapping(["viral:Pneumonia"], LABELS, OLD_CLASSES)
  with pytest.raises(ValueError, match="mapped twice"):
    neuron_mapping(["pneumonia:Pneumonia", "pneumonia:Mass"], LABELS, OLD_CLASSES)
  assert neuron_mapping(["pneumonia:Pneumonia"], LABELS, OLD_CLASSES) == {2: 2}
