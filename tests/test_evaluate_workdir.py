"""evaluate_workdir and explain_workdir end to end on a small generated manifest at 32 px."""

import csv
import json

import cv2
import jax
import numpy as np
import pytest

from configs import default
from cxr_jax import checkpoint, data
from cxr_jax.evaluate import evaluate_workdir
from cxr_jax.explain import explain_workdir
from cxr_jax.weights.preprocessing import PREPROCESSING

SIZE = 32


def _write_source(root):
  """36 JPEGs; source 'clinic' is mostly covid, 'archive' mostly normal and pneumonia; some
  patients have two or three images."""
  rng = np.random.default_rng(0)
  rows = []
  for c, label in enumerate(data.LABELS):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(12):
      image = np.clip(rng.normal(60 + 50 * c, 30, (40, 36)), 0, 255).astype(np.uint8)
      name = f"{label}/img{i}.jpg"
      cv2.imwrite(str(root / name), image)
      source = "clinic" if (label == "covid") == (i < 9) else "archive"
      rows.append(dict(file=name, label=label, patient_id=f"p{c}{i // 3 if i < 6 else i}",
                       patient_group=f"p{c}{i // 3 if i < 6 else i}", source=source))
  with open(root / "manifest.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def save_small_run(root, save_random_run, size=SIZE, **explain):
  """A saved random run over the generated source in `root` at `size` px (config.explain fields
  as given)."""
  _write_source(root / "src")
  config = default.get_config()
  config.data.sources = (f"manifest:{root / 'src'}",)
  config.data.data_dir = str(root / "tfds")
  config.data.image_size = size
  config.data.test_fraction = 0.4
  config.data.num_folds = 2
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  config.train.eval_batch_size = 4   # the last batch is padded
  config.explain.update(explain)
  return save_random_run(root / "run", config, "caffe", seed=1, bias_sd=0.1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, save_random_run):
  return save_small_run(tmp_path_factory.mktemp("gen"), save_random_run)


def test_evaluate_workdir_writes_consistent_outputs(workdir):
  metrics = evaluate_workdir(workdir)
  for name in ("metrics.json", "report.md", "predictions.csv", "roc.png", "pr.png",
               "confusion_matrix.png", "reliability.png"):
    assert (workdir / name).stat().st_size > 0, name
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved["accuracy"] == metrics["accuracy"]
  assert saved["intervals"]["unit"] == "patient_group"
  assert set(saved["by_source"]) <= {"clinic", "archive"}
  report = (workdir / "report.md").read_text()
  assert "![ROC curves](roc.png)" in report and "## By source" in report

  # The test split, and every row's probabilities, recomputed without the evaluation code.
  trained = checkpoint.load_trained(workdir)
  built = data.build_dataset(trained.config.data)
  test_ids = data.make_splits(built.metadata, trained.config.data)["test"]
  with open(workdir / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(int(r["id"]) for r in rows) == sorted(test_ids.tolist())
  assert len(rows) == saved["num_examples"]
  images = {int(ex["id"]): ex["image"] for ex in built.as_dataset().as_numpy_iterator()}
  spec = PREPROCESSING["caffe"]
  x = np.stack([images[int(r["id"])] for r in rows]).astype(np.float32)
  x = (np.repeat(x, 3, -1) * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])
  expected = np.asarray(jax.nn.softmax(trained.model.apply(trained.variables, x)))
  got = np.array([[float(r[f"p_{c}"]) for c in data.LABELS] for r in rows])
  np.testing.assert_allclose(got, expected, atol=1e-5)
  labels = np.array([data.LABELS.index(r["label"]) for r in rows])
  assert saved["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == labels))


def test_evaluate_rejects_a_config_that_changes_the_inputs(workdir):
  config = checkpoint.load_trained(workdir).config
  config.data.image_size = 64
  with pytest.raises(ValueError, match="data.image_size"):
    evaluate_workdir(workdir, config=config)


@pytest.mark.parametrize("field,value", [("sources", ("manifest:/elsewhere/cxr9",)),
                                         ("fold", 1), ("split_seed", 7), ("test_fraction", 0.3)])
def test_evaluate_refuses_a_config_that_names_other_images_as_the_test_split(
    workdir, field, value):
  config = checkpoint.load_trained(workdir).config
  setattr(config.data, field, value)
  with pytest.raises(ValueError, match=rf"data\.{field}: run .*given .*--external=KIND:PATH"):
    evaluate_workdir(workdir, config=config)


def test_explain_workdir_writes_right_and_wrong_overlays(workdir):
  result = explain_workdir(workdir, per_class=1, method="gradcam++")
  out = workdir / "explain_test_gradcam++"
  index = json.loads((out / "index.json").read_text())
  assert index["layer"] == "block5/conv3" and index["method"] == "gradcam++"
  assert index["images"] and sum(result["counts"].values()) == len(index["images"])
  for entry in index["images"]:
    assert entry["outcome"] in ("correct", "wrong")
    predicted = max(entry["probs"], key=entry["probs"].get)
    assert (predicted == entry["label"]) == (entry["outcome"] == "correct")
    assert entry["explained_class"] == predicted
    assert (out / entry["overlay"]).read_bytes()[:4] == b"\x89PNG"
    assert entry["overlay"].startswith(f"{entry['label']}/{entry['outcome']}/")
  assert max(result["counts"].values()) == 1


def test_evaluators_skip_what_is_written_and_load_the_run_only_for_what_is_missing(
    tmp_path, save_random_run, monkeypatch):
  from cxr_jax import evaluate
  from cxr_jax.evaluate.run import LoadedRun

  run_dir = save_small_run(tmp_path, save_random_run)
  reads, predicted = [], []
  real_load, real_predict = checkpoint.load_trained, LoadedRun._predict
  monkeypatch.setattr(checkpoint, "load_trained",
                      lambda *a, **k: reads.append(a) or real_load(*a, **k))
  monkeypatch.setattr(LoadedRun, "_predict",
                      lambda self, loaded, name: predicted.append(len(loaded.ids)) or
                      real_predict(self, loaded, name))
  val, fit = evaluate.from_config(None, ["val", "temperature"])
  results = evaluate.run_evaluators(lambda: LoadedRun.from_workdir(run_dir), [val, fit], run_dir)
  # One read; the validation split predicted once for its evaluation and the temperature fit.
  assert len(reads) == 1 and len(predicted) == 1
  assert results[fit.key]["temperature"] == results[val.key]["calibration"]["temperature"]
  assert (run_dir / "eval_val" / "metrics.json").is_file()
  assert (run_dir / "temperature" / "temperature.json").is_file()

  again = evaluate.run_evaluators(lambda: LoadedRun.from_workdir(run_dir), [val, fit], run_dir)
  assert len(reads) == 1 and len(predicted) == 1     # all written: nothing loaded or predicted
  assert again[fit.key] == json.loads(json.dumps(results[fit.key]))
  assert again[val.key]["accuracy"] == results[val.key]["accuracy"]
  redone = evaluate.run_one(run_dir, fit) | fit.run(LoadedRun.from_workdir(run_dir), redo=True)
  assert redone["temperature"] == results[fit.key]["temperature"] and len(reads) == 2
  with pytest.raises(ValueError, match="unknown \\['tset'\\]; known: .*'test'"):
    evaluate.from_config(None, ["tset"])


def test_with_ood_one_forward_pass_per_split_gives_the_predicted_probabilities(workdir):
  """With config.eval.ood on, an evaluated split's probabilities are its outputs' (one forward
  pass per split, not two), and they are what the plain predict function gives: the same
  forward pass run block by block, equal to float32 rounding."""
  from cxr_jax.evaluate.run import LoadedRun

  run = LoadedRun.from_workdir(workdir)
  calls = []
  run.predict_fn = lambda variables, x: calls.append(len(x)) or pytest.fail("second pass")
  pred = run.predictions("test")
  out, labels, ids = run.outputs("test")
  assert calls == [] and pred.probs is not None
  np.testing.assert_array_equal(pred.ids, ids)
  np.testing.assert_array_equal(pred.probs, out["probs"])
  plain = LoadedRun.from_workdir(workdir)
  plain.config.eval.ood = False
  reference = plain.predictions("test")
  np.testing.assert_array_equal(reference.ids, ids)
  # One ulp of the largest probability per operation of the softmax and the head at most.
  np.testing.assert_allclose(pred.probs, reference.probs, rtol=0, atol=8 * np.finfo(np.float32).eps)
