"""The source-recognition probe and `--mode=audit` end to end, on real cxr3 / cxr-external images."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from cxr_jax import checkpoint, models, paths
from cxr_jax.data.preprocess import PreprocessConfig, process_file
from cxr_jax.evaluate import audit_workdir
from cxr_jax.evaluate.probes import source_recognition

SIZE = 48


def _null_margin(num_sources: int, n: int) -> float:
  """4 standard deviations of a balanced accuracy under the null (predictions independent of
  the source): each class recall ~ Binomial(n/k, 1/k) / (n/k), averaged over k classes."""
  p = 1.0 / num_sources
  per_class_var = p * (1 - p) / (n / num_sources)
  return 4 * np.sqrt(per_class_var / num_sources)


def test_source_probe_finds_cxr3_collections_from_raw_thumbnails(cxr3_root, tmp_path,
                                                                subset_manifest):
  _, rows = subset_manifest(cxr3_root / "manifest.csv", tmp_path / "s", 24, columns=("source",))
  config = PreprocessConfig(16, clahe=False, clahe_clip_limit=2.0, clahe_tile_grid=8)
  x = np.stack([process_file(r["file"], config).image.reshape(-1) for r in rows]) / 255.0
  sources = [r["source"] for r in rows]
  probe = source_recognition(x, sources, [r["patient_group"] for r in rows])
  k = len(set(sources))
  assert k >= 4 and probe["defined"]
  assert probe["balanced_accuracy"] > 1 / k + _null_margin(k, len(rows))
  assert sum(map(sum, probe["confusion_matrix"])) == len(rows)


def test_source_probe_is_at_chance_when_source_and_image_are_independent():
  rng = np.random.default_rng(0)
  n, k = 400, 4
  x = rng.normal(size=(n, 16))
  sources = rng.permutation(np.repeat([f"s{i}" for i in range(k)], n // k))
  groups = [f"g{i}" for i in range(n)]
  probe = source_recognition(x, sources, groups)
  assert abs(probe["balanced_accuracy"] - 1 / k) < _null_margin(k, n)
  assert probe["chance_balanced_accuracy"] == pytest.approx(1 / k)


def test_source_probe_says_why_it_cannot_run():
  assert not source_recognition(np.zeros((4, 2)), ["a"] * 4, list("abcd"))["defined"]
  out = source_recognition(np.zeros((4, 2)), ["a", "a", "b", "b"], ["g", "g", "h", "h"])
  assert not out["defined"] and "one patient group" in out["why"]


class _HalvesSegmenter:
  """Two fixed lung boxes on every image (the stored segmenter is tested in test_lungs)."""
  version = "halves"

  def lungs_many(self, images, names=None):
    from cxr_jax.lungs import masks, segment
    out = []
    for image in images:
      h, w = image.shape[:2]
      mask = np.zeros((h, w), bool)
      mask[h // 5:4 * h // 5, w // 8:7 * w // 16] = True
      mask[h // 5:4 * h // 5, 9 * w // 16:7 * w // 8] = True
      out.append(segment.Found(mask, masks.check(mask)))
    return out


def _small_audit(cxr3_root, tmp_path, subset_manifest):
  """(config, its images, external folder, its images) of a small run: 6 images per cxr3 cell,
  4 per cxr-external cell, 48 px."""
  data, rows = subset_manifest(cxr3_root / "manifest.csv", tmp_path / "cxr3-small", 6)
  ext, ext_rows = subset_manifest(
      paths.default_data_root().parent / "cxr-external" / "manifest.csv", tmp_path / "ext-small", 4)
  config = default.get_config()
  config.data.sources = (f"manifest:{data}",)
  config.data.image_size = SIZE
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.num_folds = 2
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  config.eval.num_bootstrap = 20
  return config, rows, ext, ext_rows


def test_audit_end_to_end_writes_every_part(cxr3_root, tmp_path, subset_manifest):
  config, rows, ext, ext_rows = _small_audit(cxr3_root, tmp_path, subset_manifest)
  model = models.create_model(config.model)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, SIZE, SIZE, 3))))(jax.random.key(0))
  workdir = tmp_path / "run"
  checkpoint.save_trained(workdir, config, {"params": variables["params"]}, "torchvision")

  loso = tmp_path / "loso"   # a finished --mode=loso experiment's two files
  loso.mkdir()
  (loso / "loso.json").write_text(json.dumps({"rows": [{"held_out_source": "ieee8023"}]}))
  (loso / "loso.md").write_text("# Leave one source out\n\n| held-out source |\n| ieee8023 |\n")
  with pytest.raises(FileNotFoundError, match="--mode=loso"):
    audit_workdir(workdir, segmenter=_HalvesSegmenter(), loso=tmp_path / "nowhere")
  result = audit_workdir(workdir, [f"manifest:{ext}"], segmenter=_HalvesSegmenter(), loso=loso)

  out = workdir / "audit"
  for name in ("audit.md", "audit.json", "audit.png", "test/metrics.json", "test/report.md"):
    assert (out / name).is_file(), name
  assert (workdir / "external" / "ext-small" / "metrics.json").is_file()
  saved = json.loads((out / "audit.json").read_text())
  assert saved["internal"]["accuracy"] == pytest.approx(result["internal"]["accuracy"])
  kept = saved["source_recognition"]["kept_model"]
  assert kept["defined"] and kept["num_examples"] == len(rows)
  assert set(saved["external"]) == {"ext-small"}
  assert saved["external"]["ext-small"]["num_examples"] == len(ext_rows)
  text = (out / "audit.md").read_text()
  for heading in ("## Internal test split", "## External: ext-small", "## Source recognition",
                  "## Lungs blanked / outside blanked", "## Heatmap lung share", "## Not run"):
    assert heading in text
  assert "heatmap lung share" not in text.split("## Not run")[1]   # it ran: not listed as not run
  assert "heatmap_lung_share" not in saved["not_run"]
  assert saved["leave_one_source_out"]["rows"] == [{"held_out_source": "ieee8023"}]
  assert "leave_one_source_out" not in saved["not_run"]
  assert "| ieee8023 |" in text.split("## Leave one source out")[1]
  lungs = saved["lung_probes"]
  assert lungs["images"] == saved["internal"]["num_examples"] and not lungs["qc_failed"]
  assert set(lungs) >= {"original", "lungs_blanked", "outside_blanked"}
  # The original variant is the internal evaluation itself, image for image.
  assert lungs["original"]["accuracy"] == pytest.approx(saved["internal"]["accuracy"])
  # Grad-CAM on the same masks: chance is the fake segmenter's area share on every image.
  share = saved["heatmap_lung_share"]
  chance = _HalvesSegmenter().lungs_many([np.zeros((SIZE, SIZE))])[0].mask.mean()
  assert share["layer"] == config.explain.layer and not share["qc_failed"]
  assert share["images"] + share["no_positive_mass"] == lungs["images"]
  assert share["images"] > 0 and 0.0 <= share["mean_share"] <= 1.0
  assert share["mean_chance"] == pytest.approx(chance)
  assert all(p["chance"] == pytest.approx(chance) for p in share["per_image"])
  assert f"{share['mean_share']:.3f}" in text.split("## Heatmap lung share")[1]
  assert not (workdir / "metrics.json").exists()  # the audit leaves the run's own files alone


def test_heatmap_lung_share_section_names_chance_and_left_out_images():
  from cxr_jax.evaluate import audit
  share = dict(layer="block5/conv3", segmenter="halves", images=3, mean_share=0.5,
               mean_chance=0.375, share_minus_chance=0.125, no_positive_mass=1,
               qc_failed=[dict(id=4, file="x.png", reason="empty mask (no lung found)")])
  text = "\n".join(audit._share_lines(share))
  assert text.startswith("## Heatmap lung share") and "**0.500**" in text and "0.375" in text
  assert "+0.125" in text and "1 image(s) whose mask failed" in text and "1 with no positive" in text
  empty = "\n".join(audit._share_lines(dict(share, images=0, mean_share=None, mean_chance=None)))
  assert "no image's map has positive mass" in empty
  assert audit._share_lines(None) == []   # no segmenter: the part is listed under Not run instead
  assert "heatmap_lung_share" not in audit.NOT_RUN


REFERENCE = Path(__file__).parent / "data" / "audit_reference.json"
# Relative rounding of a float32 dot product of K terms summed in an unknown order: about
# u * sqrt(K) (u = 2^-24; Higham & Mary 2019's probabilistic bound), K = 3 * 3 * 512 for the
# longest one of the forward pass (block 5's convolutions): 4.1e-6. Every float of the audit is a
# function of the network's outputs, which is where instruction sets differ.
_FORWARD_RTOL = 2.0**-24 * np.sqrt(3 * 3 * 512)
# Leaves that name places or the machine, not figures of the run.
_NOT_FIGURES = ("workdir", "written", "figure", "machine", "why", "file", "run", "dataset")


def _figures(tree, prefix=""):
  """{path: value} of every number, bool and label of an audit, places and machine left out."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      if k not in _NOT_FIGURES:
        out.update(_figures(v, f"{prefix}/{k}"))
    return out
  if isinstance(tree, list):
    out = {}
    for i, v in enumerate(tree):
      out.update(_figures(v, f"{prefix}/{i}"))
    return out
  return {prefix: tree}


def test_audit_of_a_small_run_reproduces_its_reference_numbers_and_loads_the_run_once(
    cxr3_root, tmp_path, subset_manifest, save_random_run, monkeypatch):
  """The audit's numbers equal those main's code wrote before evaluators existed (commit 32e79ad,
  tests/data/audit_reference.json, written with CXR_WRITE_AUDIT_REFERENCE=1; the "ood" keys added
  with the out-of-distribution section and its knn_blocks keys with that score, the older values
  untouched each time; its two ood/fit/score labels knn_blocks since that became the default
  score, every figure unchanged; the "doubt" and "answer" keys added with selective
  prediction's answer rule, the older values untouched; the ood/fit/image_size keys, 0, with
  eval.ood_image_size), and the run's
  checkpoint is read once for all parts (main's code read it 4 times). Floats agree to the
  forward pass's float32 rounding (`_FORWARD_RTOL`: another CPU's instruction set sums the
  convolutions in another order; an AVX2 EPYC's out-of-distribution thresholds differ from the
  AVX-512 reference's by 1.0-1.2e-6 relative); counts and labels exactly."""
  config, _, ext, _ = _small_audit(cxr3_root, tmp_path, subset_manifest)
  workdir = save_random_run(tmp_path / "run", config, "torchvision", seed=3, bias_sd=0.1)
  reads = []
  real_load = checkpoint.load_trained
  monkeypatch.setattr(checkpoint, "load_trained",
                      lambda *a, **k: reads.append(a) or real_load(*a, **k))
  result = audit_workdir(workdir, [f"manifest:{ext}"], segmenter=_HalvesSegmenter())
  got = _figures(json.loads(json.dumps(result)))
  if os.environ.get("CXR_WRITE_AUDIT_REFERENCE"):
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  want = json.loads(REFERENCE.read_text())
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    if isinstance(value, float):
      assert got[key] == pytest.approx(value, rel=_FORWARD_RTOL, abs=1e-7), key
    else:
      assert got[key] == value, key
  assert len(reads) == 1, f"the run's checkpoint was read {len(reads)} times"
