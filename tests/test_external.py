"""External evaluation (cxr_jax.evaluate.external) on real cxr-external images, and the
within-source figures it reports."""

import csv
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from configs import default
from cxr_jax import paths, predict
from cxr_jax.evaluate import external
from cxr_jax.evaluate.summary import within_source

SIZE = 48
PER_GROUP = 5  # images of each (source, label) cell of cxr-external


@pytest.fixture(scope="module")
def external_root():
  root = paths.default_data_root().parent / "cxr-external"
  if not (root / "manifest.csv").is_file():
    pytest.fail(f"cxr-external not found at {root} (expected beside CXR_DATA's cxr3)")
  return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, save_random_run):
  """A run saved without training: VGG16 at 48 px, random (He-normal) weights, its own data dir."""
  config = default.get_config()
  config.data.image_size = SIZE
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  config.eval.num_bootstrap = 50
  config.data.max_reject_fraction = 0.1  # the external test's one broken file in 16
  return save_random_run(tmp_path_factory.mktemp("run"), config, "torchvision")


def _cells(rows):
  cells = {}
  for r in rows:
    cells[(r["source"], r["label"])] = cells.get((r["source"], r["label"]), 0) + 1
  return cells


def test_external_set_without_a_class_per_source_reports_what_is_defined(
    workdir, external_root, tmp_path, subset_manifest):
  folder, rows = subset_manifest(external_root / "manifest.csv", tmp_path / "ext-small", PER_GROUP)
  counts = _cells(rows)
  assert sorted(counts) == [("kermany-test", "normal"), ("kermany-test", "pneumonia"),
                            ("siim-fisabio-rsna", "covid")]
  unreadable = folder / "broken.png"
  unreadable.write_bytes(b"not an image at all")
  with open(folder / "manifest.csv", "a", newline="") as f:  # 1 of 16 files: evaluated anyway
    f.write(f"{unreadable},covid,siim:broken,siim:broken,siim-fisabio-rsna,1,1,\n")
  results = external.evaluate_external(workdir, [f"manifest:{folder}"])

  m = results["ext-small"]
  out = workdir / "external" / "ext-small"
  for name in ("metrics.json", "report.md", "predictions.csv", "roc.png", "confusion_matrix.png"):
    assert (out / name).is_file(), name
  assert m["num_examples"] == 3 * PER_GROUP
  assert [r["file"] for r in m["unreadable"]] == [str(unreadable)]
  assert str(unreadable) in (out / "report.md").read_text()
  with open(out / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  # Preprocessed exactly as the run's own images: predict.py on the same files agrees.
  direct = predict.predict_files(workdir, [r["file"] for r in rows[:4]], batch_size=4)
  for row, d in zip(rows[:4], direct, strict=True):
    for c, p in d["probs"].items():
      assert float(row[f"p_{c}"]) == pytest.approx(p, abs=2e-6)

  siim, kermany = m["within_source"]["siim-fisabio-rsna"], m["within_source"]["kermany-test"]
  assert siim["covid_auc"]["value"] is None and "negative" in siim["covid_auc"]["why"]
  assert siim["normal_vs_pneumonia_auc"]["value"] is None
  assert kermany["covid_auc"]["value"] is None and "positive" in kermany["covid_auc"]["why"]
  ker = [r for r in rows if r["source"] == "kermany-test"]
  expected = skm.roc_auc_score([r["label"] == "pneumonia" for r in ker],
                               [1 - float(r["p_normal"]) for r in ker])
  assert kermany["normal_vs_pneumonia_auc"]["value"] == pytest.approx(expected, abs=1e-6)
  for source, w in m["within_source"].items():
    mine = [r for r in rows if r["source"] == source]
    for c, share in w["called"].items():
      assert share == pytest.approx(np.mean([r["prediction"] == c for r in mine]))
  assert m["per_class"]["covid"]["specificity"] is not None  # pooled: COVID vs Kermany
  assert json.loads((out / "metrics.json").read_text())["headline"]["by_source"]["siim-fisabio-rsna"][
      "sensitivity"].keys() == {"covid"}


def test_unknown_labels_are_named_with_the_option_that_maps_them(external_root, tmp_path,
                                                                 subset_manifest):
  folder, _ = subset_manifest(external_root / "manifest.csv", tmp_path / "renamed", PER_GROUP)
  text = (folder / "manifest.csv").read_text().replace(",covid,", ",COVID-19,")
  (folder / "manifest.csv").write_text(text)
  with pytest.raises(ValueError, match=r"'COVID-19': 5.*;COVID-19=LABEL'"):
    external.check_source(f"manifest:{folder}")
  scan = external.check_source(f"manifest:{folder};COVID-19=covid")
  assert sum(r.label == "covid" for r in scan.records) == PER_GROUP
  scan = external.check_source(f"manifest:{folder};COVID-19=")
  assert not any(r.label == "covid" for r in scan.records) and len(scan.excluded) == PER_GROUP


def test_a_missing_external_source_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    external.check_source(f"manifest:{tmp_path / 'nowhere'}")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no usable image"):
    external.check_source(f"folder:{tmp_path / 'empty'}")


def test_within_source_by_hand():
  # Source a: COVID and normal; source b: normal and pneumonia only.
  labels = np.array([0, 0, 1, 1, 1, 2, 2])
  probs = np.array([[.8, .1, .1], [.3, .6, .1], [.4, .5, .1], [.1, .8, .1],
                    [.2, .7, .1], [.6, .1, .3], [.1, .5, .4]])
  sources = np.array(["a", "a", "a", "b", "b", "b", "b"])
  w = within_source(labels, probs, sources, ["covid", "normal", "pneumonia"])
  # a: COVID scores .8, .3 against normal's .4 -> pairs (.8>.4), (.3<.4): AUC 0.5.
  assert w["a"]["covid_auc"]["value"] == pytest.approx(0.5)
  assert w["a"]["normal_vs_pneumonia_auc"]["value"] is None
  assert w["a"]["called"] == pytest.approx({"covid": 1 / 3, "normal": 2 / 3, "pneumonia": 0})
  # b: 1 - p(normal): normals .2, .3; pneumonias .9, .5 -> every pair ordered: AUC 1.
  assert w["b"]["normal_vs_pneumonia_auc"]["value"] == pytest.approx(1.0)
  assert w["b"]["covid_auc"]["value"] is None
  assert w["b"]["labels"] == {"covid": 0, "normal": 2, "pneumonia": 2}


def test_experiment_runs_are_scored_on_external_sets_even_when_added_after_training(
    external_root, cxr3_root, tmp_path, subset_manifest):
  from configs import smoke
  from cxr_jax import experiments

  data_dir, _ = subset_manifest(cxr3_root / "manifest.csv", tmp_path / "cxr3-small", 5)
  first, _ = subset_manifest(external_root / "manifest.csv", tmp_path / "ext-a", PER_GROUP)
  second, _ = subset_manifest(external_root / "manifest.csv", tmp_path / "ext-b", PER_GROUP)
  config = smoke.get_config()
  config.data.sources = (f"manifest:{data_dir}",)
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.num_folds = 2
  config.train.num_epochs = 1
  config.train.steps_per_epoch = 1
  config.eval.num_bootstrap = 10
  config.experiment.num_folds = 1
  config.eval.external = (f"manifest:{first}",)
  workdir = tmp_path / "cv"

  doc = experiments.run_experiment(config, workdir, "cv")  # the trainer scores ext-a

  run = workdir / "runs" / "cv_fold0"
  assert (run / "external" / "ext-a" / "metrics.json").is_file()
  assert set(doc["groups"]["cv"]["external"]["0"]) == {"ext-a"}
  text = (workdir / "cv.md").read_text()
  assert "## External sets" in text and "| cv | 0 | ext-a | kermany-test |" in text
  trained_at = (run / "metrics.json").stat().st_mtime_ns
  config.eval.external = (f"manifest:{first}", f"manifest:{second}")

  doc = experiments.run_experiment(config, workdir, "cv")  # not retrained: ext-b scored

  assert doc["status"] == {"cv_fold0": "skipped"}
  assert (run / "metrics.json").stat().st_mtime_ns == trained_at
  assert set(doc["groups"]["cv"]["external"]["0"]) == {"ext-a", "ext-b"}
  a, b = (json.loads((run / "external" / n / "metrics.json").read_text()) for n in ("ext-a", "ext-b"))
  assert a["accuracy"] == b["accuracy"]  # the same images, the same kept model
