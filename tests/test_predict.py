"""`python -m cxr_jax.predict` on cxr3 images and on unusable files."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from cxr_jax import checkpoint, predict
from cxr_jax.data.preprocess import PreprocessConfig, process_file
from cxr_jax.weights.preprocessing import PREPROCESSING

SIZE = 32


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, save_random_run):
  """A run saved without training: VGG16 at 32 px with random (He-normal) weights."""
  config = default.get_config()
  config.data.image_size = SIZE
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  return save_random_run(tmp_path_factory.mktemp("run"), config, "torchvision")


@pytest.fixture(scope="module")
def images(cxr3_root):
  """One cxr3 image per class."""
  return [str(next(iter(sorted((cxr3_root / label).glob("*.jpg"))))) for label in
          ("covid", "normal", "pneumonia")]


def _reference_probs(workdir, files):
  trained = checkpoint.load_trained(workdir)
  spec = PREPROCESSING["torchvision"]
  config = PreprocessConfig(SIZE, clahe=True, clahe_clip_limit=2.0, clahe_tile_grid=8)
  x = np.stack([process_file(f, config).image for f in files]).astype(np.float32)
  x = (np.repeat(x, 3, axis=-1) * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])
  return np.asarray(jax.nn.softmax(trained.model.apply(trained.variables, x)))


def test_predict_good_and_bad_files(workdir, images, tmp_path, capsys):
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes(open(images[0], "rb").read()[:3000])
  missing = tmp_path / "missing.png"
  files = [images[0], str(corrupt), images[1], str(missing), str(truncated), images[2]]
  cam_dir = tmp_path / "cams"
  status = predict.main(["--workdir", str(workdir), "--cam", str(cam_dir), "--batch-size", "2",
                         *files])
  captured = capsys.readouterr()
  lines = [json.loads(line) for line in captured.out.splitlines()]
  assert status == 1
  assert [r["file"] for r in lines] == files   # one line per input, in input order
  good = [lines[k] for k in (0, 2, 5)]
  expected = _reference_probs(workdir, images)
  for r, p in zip(good, expected, strict=True):
    assert "error" not in r
    np.testing.assert_allclose([r["probs"][c] for c in ("covid", "normal", "pneumonia")], p,
                               rtol=1e-4, atol=1e-6)
    assert r["prediction"] == ("covid", "normal", "pneumonia")[int(np.argmax(p))]
    assert open(r["cam"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert "not a decodable image" in lines[1]["error"]
  assert lines[3]["error"] == "no such file"
  assert "truncated" in lines[4]["error"]
  assert sorted(p.name for p in cam_dir.iterdir()) == sorted(
      f.rsplit("/", 1)[-1].replace(".jpg", ".png") for f in images)
  assert "3 of 6 files could not be used" in captured.err and str(corrupt) in captured.err


# `python -m cxr_jax.predict ARGS`, then a check that the process never imported TensorFlow (6 s of
# a cold start that loading a model and predicting do not need), scikit-learn or SciPy (1 s) or,
# without --cam, matplotlib: the data, evaluate and explain packages load them lazily.
_PREDICT_WITHOUT_HEAVY_IMPORTS = """
import runpy, sys
sys.argv = ["cxr_jax.predict", *sys.argv[1:]]
try:
  runpy.run_module("cxr_jax.predict", run_name="__main__")
finally:
  heavy = ("tensorflow", "sklearn", "scipy", "matplotlib")
  loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
  print("heavy modules:", loaded[:3], file=sys.stderr)
  if loaded:
    sys.exit(99)
"""


@pytest.mark.slow   # a fresh interpreter imports jax (~10 s on 2 cores)
def test_predict_command_line(workdir, images, tmp_path, capsys):
  bad = tmp_path / "notes.txt"
  bad.write_text("not an image")
  folder = tmp_path / "incoming"
  folder.mkdir()
  (folder / "x.jpg").write_bytes(open(images[2], "rb").read())
  run = subprocess.run([sys.executable, "-c", _PREDICT_WITHOUT_HEAVY_IMPORTS, f"--workdir={workdir}",
                        images[1], str(bad), str(folder)], capture_output=True, text=True,
                       timeout=300)
  assert "heavy modules: []" in run.stderr, run.stderr[-2000:]
  assert run.returncode == 1, run.stderr
  first, second, third = [json.loads(line) for line in run.stdout.splitlines()]
  assert third["file"] == str(folder / "x.jpg") and "error" not in third
  assert sum(first["probs"].values()) == pytest.approx(1.0, abs=1e-5)
  assert second["file"] == str(bad) and "error" in second
  # Only good files: exit status 0, same numbers (to float32 rounding: alone it runs as a batch of
  # one instead of four, a different blocking of the same sums).
  assert predict.main([f"--workdir={workdir}", images[1]]) == 0
  assert json.loads(capsys.readouterr().out)["probs"] == pytest.approx(first["probs"], rel=1e-5,
                                                                      abs=1e-6)
  # A folder that is not a workdir: a clear message, status 2.
  assert predict.main([f"--workdir={tmp_path}", images[1]]) == 2
  assert "not a cxr_jax training workdir" in capsys.readouterr().err


def test_folder_and_manifest_inputs_stream_batch_by_batch(workdir, images, tmp_path, monkeypatch):
  import shutil

  folder = tmp_path / "incoming"
  (folder / "sub").mkdir(parents=True)
  copies = [shutil.copy(images[0], folder / "b.jpg"), shutil.copy(images[1], folder / "sub/a.jpg"),
            shutil.copy(images[2], folder / "c.jpg")]
  (folder / "notes.txt").write_text("not an image")          # not an image suffix: not an input
  assert predict.expand_inputs([folder]) == sorted(map(str, copies))
  manifest = tmp_path / "manifest.csv"
  manifest.write_text("file,label,patient_id\nincoming/c.jpg,covid,p1\nincoming/gone.png,normal,p2\n")
  assert predict.expand_inputs([f"manifest:{manifest}", images[1]]) == [
      str(folder / "c.jpg"), str(tmp_path / "incoming/gone.png"), images[1]]

  # Streaming: the first batch's results come once the second batch is decoded (it overlaps the
  # first one's forward pass), before the third.
  decoded = []
  real_load = predict.load_images
  monkeypatch.setattr(predict, "load_images",
                      lambda files, *a: decoded.append(list(files)) or real_load(files, *a))
  files = predict.expand_inputs([folder, f"manifest:{manifest}"])
  stream = predict.iter_predictions(workdir, files, batch_size=2)
  first = [next(stream), next(stream)]
  assert len(decoded) == 2
  rest = list(stream)
  assert len(decoded) == 3 and [r["file"] for r in first + rest] == files
  assert rest[-1] == {"file": str(tmp_path / "incoming/gone.png"), "error": "no such file"}
  # Same numbers as the same files given one by one in one batch.
  alone = predict.predict_files(workdir, sorted(map(str, copies)), batch_size=4)
  for a, b in zip(first + rest[:1], alone, strict=True):
    np.testing.assert_allclose(list(a["probs"].values()), list(b["probs"].values()), rtol=1e-5,
                               atol=1e-6)


def test_fewer_files_than_a_batch_run_the_next_power_of_two(workdir, images, monkeypatch):
  """One image is one forward pass of one image, not of a padded batch of 16 (a cold single
  prediction pays for the compilation and the run of every padded row); three run as four."""
  from cxr_jax import evaluate

  shapes = []
  real = evaluate.make_outputs_fn
  def recording(model):
    fn = real(model)
    return lambda variables, x: shapes.append(x.shape[0]) or fn(variables, x)
  monkeypatch.setattr(evaluate, "make_outputs_fn", recording)
  one = predict.predict_files(workdir, images[:1], batch_size=16)
  three = predict.predict_files(workdir, images, batch_size=16)
  many = predict.predict_files(workdir, images * 3, batch_size=4)
  assert shapes == [1, 4, 4, 4, 4]
  # Same numbers whatever the batch's shape: float32 rounding of a different blocking at most.
  for a, b in ((one[0], three[0]), (three[2], many[8])):
    np.testing.assert_allclose(list(a["probs"].values()), list(b["probs"].values()), rtol=1e-5,
                               atol=1e-6)


def _stored_fit(run, images, flagged: int, answered: int = 0):
  """An out-of-distribution fit for `run` made by hand (numpy only, as prediction loads it): the
  model's own outputs on `images` as training and validation features, and the Mahalanobis
  threshold set so that the `flagged` (< len(images)) images farthest from the class means are out
  of distribution; the answer threshold at the `answered`-th smallest doubt (0: none)."""
  from cxr_jax.evaluate import make_outputs_fn, ood

  trained = checkpoint.load_trained(run)
  spec = PREPROCESSING["torchvision"]
  config = PreprocessConfig(SIZE, clahe=True, clahe_clip_limit=2.0, clahe_tile_grid=8)
  x = np.stack([process_file(f, config).image for f in images]).astype(np.float32)
  x = (np.repeat(x, 3, axis=-1) * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])
  out = jax.tree.map(np.asarray, make_outputs_fn(trained.model)(trained.variables, x))
  f = out["features"].astype(np.float64)
  means = np.stack([f.mean(axis=0)] * 3)
  precision = np.eye(f.shape[1]) / f.var(axis=0).mean()
  distance = ood.mahalanobis_score(f, means, precision)
  ranked = np.sort(distance)[::-1]   # the cut halfway between the last flagged and the next
  cut = (ranked[flagged - 1] + ranked[flagged]) / 2
  thresholds = {s: np.inf for s in ood.SCORES} | {"mahalanobis": float(cut)}
  centre = out["input"].mean(axis=0)
  bank_blocks = ood.input_and_blocks(dict(out, blocks={"block5": f}), centre, ["block5"])
  # Validation scores between the images' own (and one below all): image j of a score's order
  # beats j + 1 of them whatever its scores' rounding in another batch shape.
  between = lambda v: np.sort(np.r_[v.min() - 1, (np.sort(v)[1:] + np.sort(v)[:-1]) / 2])
  val_msp, val_flag = between(ood.msp_score(out["logits"])), between(distance)
  doubts = np.sort(ood.doubt(ood.msp_score(out["logits"]), distance, val_msp, val_flag))
  fit = ood.OodFit("mahalanobis", 0.95, 1.0, means, precision, 0.0, ood.unit_rows(f),
                   bank_blocks, centre, 1, {"block5": (means, precision)}, thresholds,
                   checkpoint.model_digest(trained.variables), len(f), len(f),
                   dict(scores={s: np.zeros(0) for s in ood.SCORES}, correct=np.zeros(0, bool),
                        sources=np.zeros(0, str)), 0.95, val_msp, val_flag,
                   float(doubts[answered - 1]) if answered else -1.0)
  (run / checkpoint.OOD_FILE).write_bytes(fit.to_bytes())
  return distance


def test_predict_reports_the_out_of_distribution_flag_and_doubt_and_withholds_the_class(
    tmp_path, images, save_random_run, capsys):
  config = default.get_config()
  config.data.image_size = SIZE
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  run = save_random_run(tmp_path / "run", config, "torchvision")
  assert predict.main([f"--workdir={run}", images[0]]) == 0   # no fit: said, not refused
  line = json.loads(capsys.readouterr().out)
  assert line["in_distribution"] is None and "python launch.py --mode=evaluate" in line["reason"]
  assert predict.main([f"--workdir={run}", "--reject-ood", images[0]]) == 2
  assert "--reject-ood: no out-of-distribution fit" in capsys.readouterr().err
  assert predict.main([f"--workdir={run}", "--abstain", images[0]]) == 2
  assert "--abstain: no out-of-distribution fit" in capsys.readouterr().err

  distance = _stored_fit(run, images, flagged=1)
  far = int(np.argmax(distance))
  assert predict.main([f"--workdir={run}", *images]) == 0
  lines = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
  for k, r in enumerate(lines):
    assert r["in_distribution"] == (k != far) and r["ood"]["score"] == "mahalanobis"
    assert r["ood"]["value"] == pytest.approx(distance[k], rel=1e-4)   # float32 features
    assert r["prediction"] in ("covid", "normal", "pneumonia") and "probs" in r
    assert ("unlike" in r["reason"]) == (k == far) and "threshold" in r["reason"]
  assert predict.main([f"--workdir={run}", "--reject-ood", *images]) == 0
  rejected = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
  assert rejected[far]["prediction"] is None and "probs" not in rejected[far]
  assert all(r == lines[k] for k, r in enumerate(rejected) if k != far)
  # Another score flags by its own threshold (here infinite: nothing flagged).
  assert predict.main([f"--workdir={run}", "--reject-ood", "--ood-score=energy", *images]) == 0
  assert all(json.loads(r)["in_distribution"] for r in capsys.readouterr().out.splitlines())

  # Answered: the doubt, the larger of each image's ranks by 1 - max probability and by the
  # distance (among validation scores placed between these images', `_stored_fit`), at most the
  # answer threshold.
  _stored_fit(run, images, flagged=1, answered=1)
  assert predict.main([f"--workdir={run}", *images]) == 0
  lines = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
  msp = np.array([1 - max(r["probs"].values()) for r in lines])
  rank = lambda v: np.array([(np.sum(v < x) + 1) / len(v) for x in v])
  doubt = np.maximum(rank(msp), rank(distance))
  assert [r["doubt"]["value"] for r in lines] == pytest.approx(doubt, abs=1e-12)
  assert [r["doubt"]["answered"] for r in lines] == list(doubt <= doubt.min())
  assert not lines[far]["doubt"]["answered"]   # the largest distance: doubt 1 > the smallest
  assert predict.main([f"--workdir={run}", "--abstain", *images]) == 0
  abstained = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
  for r, full in zip(abstained, lines, strict=True):
    assert (r["prediction"] is None) == (not full["doubt"]["answered"]) == ("probs" not in r)
    assert ("for a person to read" in r["answer_reason"]) == (not full["doubt"]["answered"])

  # A fit made for other parameters is not used.
  other = save_random_run(tmp_path / "other", config, "torchvision", seed=5)
  (other / checkpoint.OOD_FILE).write_bytes((run / checkpoint.OOD_FILE).read_bytes())
  assert predict.main([f"--workdir={other}", images[0]]) == 0
  line = json.loads(capsys.readouterr().out)
  assert line["in_distribution"] is None and "fitted for other parameters" in line["reason"]


@pytest.mark.slow   # a fresh interpreter imports jax (~10 s on 2 cores)
def test_predict_with_a_fit_imports_no_heavy_module(tmp_path, images, save_random_run):
  """Scoring with the stored fit and --reject-ood need NumPy alone (the fit loads without
  scikit-learn or SciPy)."""
  config = default.get_config()
  config.data.image_size = SIZE
  config.model.hidden = (8,)
  config.model.pretrained = "none"
  run = save_random_run(tmp_path / "run", config, "torchvision")
  _stored_fit(run, images, flagged=1)
  done = subprocess.run([sys.executable, "-c", _PREDICT_WITHOUT_HEAVY_IMPORTS, f"--workdir={run}",
                         "--reject-ood", *images], capture_output=True, text=True, timeout=300)
  assert "heavy modules: []" in done.stderr, done.stderr[-2000:]
  lines = [json.loads(line) for line in done.stdout.splitlines()]
  assert [r["in_distribution"] for r in lines].count(False) == 1
