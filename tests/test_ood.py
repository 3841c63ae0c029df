"""Out-of-distribution scores, their fit and selective prediction (cxr_jax.evaluate.ood), against
hand-computed values; the evaluation's section on a small saved run."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from cxr_jax import checkpoint, data
from cxr_jax.evaluate import evaluate_workdir, external, ood
from cxr_jax.evaluate import workdir as workdir_module
from tests.test_evaluate_workdir import _write_source, workdir  # noqa: F401  (workdir: a fixture)


def test_msp_and_energy_by_hand():
  logits = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  e = np.e
  # T = 2: logits / T = [1, 0, 0] and [0.5, 0.5, 0.5].
  np.testing.assert_allclose(ood.msp_score(logits, 2.0), [1 - e / (e + 2), 1 - 1 / 3], rtol=1e-12)
  np.testing.assert_allclose(ood.energy_score(logits, 2.0),
                             [-2 * np.log(e + 2), -2 * (np.log(3) + 0.5)], rtol=1e-12)
  # Large logits: no overflow (logsumexp shifted by the row's maximum).
  assert ood.energy_score(np.array([[1000.0, 0.0]]))[0] == pytest.approx(-1000.0)
  assert ood.msp_score(np.array([[1000.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-300)


def test_mahalanobis_with_a_known_covariance():
  means = np.array([[0.0, 0.0], [4.0, 0.0]])
  precision = np.linalg.inv(np.diag([4.0, 1.0]))
  features = np.array([[1.0, 2.0], [3.0, 0.0]])
  # [1, 2]: 1/4 + 4 = 4.25 from class 0, 9/4 + 4 = 6.25 from class 1; [3, 0]: 9/4 and 1/4.
  np.testing.assert_allclose(ood.mahalanobis_score(features, means, precision), [4.25, 0.25],
                             rtol=1e-12)


def test_shared_gaussian_is_ledoit_wolf_of_the_class_centred_features():
  rng = np.random.default_rng(0)
  scale = np.array([1.0, 2.0, 3.0])
  labels = np.repeat([0, 1], 4000)
  true_means = np.array([[0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
  features = true_means[labels] + rng.normal(size=(8000, 3)) * scale
  means, precision, shrinkage = ood.shared_gaussian(features, labels, 2)
  np.testing.assert_allclose(means, [features[labels == c].mean(axis=0) for c in (0, 1)],
                             rtol=1e-12)
  # The estimator's definition: (1 - s) S + s tr(S) / F I, S the class-centred second moment.
  centred = features - means[labels]
  sample = centred.T @ centred / len(centred)
  shrunk = (1 - shrinkage) * sample + shrinkage * np.trace(sample) / 3 * np.eye(3)
  np.testing.assert_allclose(np.linalg.inv(precision), shrunk, rtol=1e-9)
  # With 8000 images for 3 features it is the sampling covariance: diag(1, 4, 9) to ~3 % (the
  # standard error of a variance from n draws is sqrt(2 / n) ~ 1.6 %).
  assert 0 <= shrinkage < 0.02
  np.testing.assert_allclose(np.diag(np.linalg.inv(precision)), scale ** 2, rtol=0.05)
  with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no training image"):
    ood.shared_gaussian(features, labels, 3)


def test_knn_distance_by_hand():
  bank = ood.unit_rows(np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]]))
  query = np.array([[2.0, 0.0], [0.0, -1.0]])
  np.testing.assert_allclose(ood.knn_score(query, bank, 1), [0.0, np.sqrt(2)], atol=1e-7)
  np.testing.assert_allclose(ood.knn_score(query, bank, 2), [np.sqrt(2), np.sqrt(2)], atol=1e-7)
  np.testing.assert_allclose(ood.knn_score(query, bank, 3), [2.0, 2.0], atol=1e-7)
  with pytest.raises(ValueError, match="k=4 nearest"):
    ood.knn_score(query, bank, 4)


def test_knn_over_blocks_weighs_each_block_alike_by_hand():
  # Two training images; block "b" has more channels and larger values than "a", and still
  # each block's unit row is half of the concatenation's length.
  train = {"a": np.array([[1.0, 0.0], [0.0, 1.0]]),
           "b": np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])}
  bank = ood.block_rows(train, ("a", "b"))
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0)
  np.testing.assert_allclose(bank[0], np.array([1, 0, 1, 0, 0]) / np.sqrt(2))
  query = {"a": np.array([[3.0, 0.0], [2.0, 0.0]]),
           "b": np.array([[7.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}
  rows = ood.block_rows(query, ("a", "b"))
  # Query 0 is training image 0's direction in both blocks; query 1 agrees with image 0 in block
  # a and with image 1 in block b: |(0, 0, 1, 0, -1)| / sqrt(2) = 1 from either.
  np.testing.assert_allclose(ood.knn_score(rows, bank, 1), [0.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(ood.knn_score(rows, bank, 2), [np.sqrt(2), 1.0], atol=1e-7)
  # knn_blocks' rows put the input first, centred: a thumbnail equal to the centre is a zero
  # part (unit_rows leaves it zero), so only the blocks' parts remain.
  outputs = {"input": np.array([[4.0, 6.0], [5.0, 6.0]]), "blocks": query}
  parts = ood.input_and_blocks(outputs, np.array([4.0, 6.0]), ("a", "b"))
  np.testing.assert_allclose(parts[0], np.r_[0.0, 0.0, rows[0] * np.sqrt(2)] / np.sqrt(3))
  np.testing.assert_allclose(parts[1, :2], np.array([1.0, 0.0]) / np.sqrt(3))


@pytest.mark.parametrize("n, keep, kept", [(100, 0.95, 95), (7, 0.95, 7), (40, 0.9, 36),
                                           (10, 1.0, 10), (3, 0.01, 1)])
def test_threshold_keeps_the_requested_share(n, keep, kept):
  scores = np.random.default_rng(n).permutation(n).astype(float)
  threshold = ood.threshold_keeping(scores, keep)
  assert np.sum(scores <= threshold) == kept == int(np.ceil(keep * n))


def test_risk_coverage_of_perfect_uninformative_and_worst_scores():
  correct = np.array([True] * 8 + [False] * 2)
  perfect = ood.risk_coverage(np.arange(10.0), correct)      # the two errors ranked last
  assert perfect["aurc"] == pytest.approx((1 / 9 + 2 / 10) / 10, rel=1e-12)
  assert perfect["aurc"] == pytest.approx(perfect["aurc_optimal"], rel=1e-12)
  assert perfect["risk_all"] == 0.2 and perfect["coverage"][-1] == 1.0
  constant = ood.risk_coverage(np.zeros(10), correct)        # one tie: no information
  assert constant["aurc"] == pytest.approx(0.2, rel=1e-12)
  assert constant["risk"] == pytest.approx([0.2] * 10, rel=1e-12)
  worst = ood.risk_coverage(-np.arange(10.0), correct)       # the errors kept first
  assert worst["aurc"] == pytest.approx((1 + 1 + sum(2 / k for k in range(3, 11))) / 10, rel=1e-12)
  # A random ranking's area is the error rate on average.
  rng = np.random.default_rng(0)
  rand = [ood.risk_coverage(rng.random(10), correct)["aurc"] for _ in range(4000)]
  assert np.mean(rand) == pytest.approx(0.2, abs=4 * np.std(rand) / np.sqrt(4000))


def test_doubt_is_the_larger_rank_among_validation_images():
  val_msp, val_flag = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 2.0, 3.0, 4.0])
  # msp 0.25 beats 2 of 4 validation images, flag 1.0 none (ties are not beaten), 9 all four.
  got = ood.doubt([0.25, 0.05, 0.05, 0.4], [1.0, 2.5, 9.0, 0.0], val_msp, val_flag)
  np.testing.assert_array_equal(got, [0.5, 0.5, 1.0, 0.75])


@pytest.mark.parametrize("correct, accuracy, want", [
    ([1, 1, 0, 1, 1, 0, 0], 0.8, 0.5),     # 4 of 5 right up to doubt 0.5; 4 of 6 at 0.6
    ([1, 1, 0, 1, 1, 0, 0], 0.6, 0.6),     # 4 of 6 = 0.67; all 7: 4 of 7 = 0.57
    ([1, 1, 1, 1, 1, 1, 1], 1.0, 0.7),     # every image right: answer all of them
    ([1, 1, 1, 1, 1, 1, 0], 0.85, 0.7),    # 6 of 7 = 0.857: the wrong last one answered too
    ([0, 0, 1, 1, 1, 1, 1], 0.99, -1.0),   # the least doubtful already wrong: answer nothing
])
def test_answer_threshold_is_the_largest_doubt_keeping_the_accuracy(correct, accuracy, want):
  doubts = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
  order = np.random.default_rng(3).permutation(7)    # the input order does not matter
  assert ood.answer_threshold(doubts[order], np.array(correct, bool)[order], accuracy) == want


def test_answer_threshold_answers_a_tie_whole():
  # Doubt 0.2 is shared by a right and a wrong image: 2 of 3 right up to it, so 0.8 stops at 0.1
  # (the right one of the tie alone would make 2 of 2).
  doubts, correct = np.array([0.1, 0.2, 0.2, 0.3]), np.array([True, True, False, True])
  assert ood.answer_threshold(doubts, correct, 0.8) == 0.1
  assert ood.answer_threshold(doubts, correct, 0.75) == 0.3    # 3 of 4


def test_auroc_of_separated_and_identical_scores():
  assert ood.auroc([0.0, 1.0, 2.0], [3.0, 4.0]) == 1.0
  assert ood.auroc([0.0, 1.0], [0.0, 1.0]) == 0.5
  assert ood.auroc([], [1.0]) is None


def _outputs(rng, features, labels):
  """Constructed model outputs: logits favouring the label, the features as the last block's,
  two blocks (the features' first and last halves) and an input thumbnail (the features again,
  doubled)."""
  logits = np.eye(3)[labels] * 3 + rng.normal(size=(len(labels), 3))
  half = features.shape[1] // 2
  return dict(logits=logits, features=features, input=2 * features,
              blocks={"b1": features[:, :half], "b2": features[:, half:]})


def _synthetic_fit(rng, features_in, labels_in, keep=0.95):
  """A fit on constructed outputs: three classes, features shifted per class; a third each for
  training, validation and the reference (test) split."""
  out = _outputs(rng, features_in, labels_in)
  n = len(labels_in) // 3
  part = lambda a, b: {"logits": out["logits"][a:b], "features": out["features"][a:b],
                       "input": out["input"][a:b],
                       "blocks": {k: v[a:b] for k, v in out["blocks"].items()}}
  reference = dict(part(2 * n, None), correct=out["logits"][2 * n:].argmax(1) == labels_in[2 * n:],
                   sources=np.array(["own"] * (len(labels_in) - 2 * n)))
  return part, ood.fit(part(0, n), labels_in[:n], part(n, 2 * n), labels_in[n:2 * n],
                       temperature=1.5, keep=keep, k=5, score="mahalanobis", model_digest="x",
                       reference=reference, answer_accuracy=0.99)


def test_far_away_images_are_flagged_and_told_apart(tmp_path):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 900)
  centres = rng.normal(size=(3, 16)) * 3
  features = centres[labels] + rng.normal(size=(900, 16))
  part, fit = _synthetic_fit(rng, features, labels)
  assert fit.n_train == 300 and fit.n_val == 300
  val_scores = fit.scores(part(300, 600))
  for s in ood.SCORES:
    assert np.mean(val_scores[s] <= fit.thresholds[s]) == pytest.approx(0.95, abs=1 / 300)
  # The saved fit loads (NumPy only) into the same scores.
  path = tmp_path / checkpoint.OOD_FILE
  path.write_bytes(fit.to_bytes())
  loaded = ood.OodFit.load(path)
  far = _outputs(rng, rng.normal(size=(50, 16)) * 3 + 20, rng.integers(0, 3, 50))
  for s, v in fit.scores(far).items():
    np.testing.assert_array_equal(v, loaded.scores(far)[s])
  assert loaded.thresholds == fit.thresholds and loaded.describe() == fit.describe()
  for b, (means, precision) in fit.blocks.items():   # each block's Gaussian, over its 8 features
    assert means.shape == (3, 8) and precision.shape == (8, 8)
    np.testing.assert_array_equal(loaded.blocks[b][1], precision)
  by_hand = np.mean([ood.mahalanobis_score(far["blocks"][b], *fit.blocks[b]) / 8
                     for b in ("b1", "b2")], axis=0)
  np.testing.assert_allclose(loaded.scores(far)["mahalanobis_blocks"], by_hand, rtol=1e-12)

  section = ood.evaluate_ood(loaded, far, np.zeros(50, int), np.array(["far"] * 50),
                             is_reference=False, class_names=("covid", "normal", "pneumonia"))
  assert section["auroc"]["mahalanobis"]["far"] == 1.0 and section["auroc"]["knn"]["all"] == 1.0
  assert section["flagged"]["mahalanobis"]["far"] == 1.0
  assert section["flagged"]["mahalanobis"]["reference"] < 0.15   # ~5 %, as validation
  pooled = section["selective"]["pooled"]["mahalanobis"]
  assert pooled["images"] == 350 and pooled["accuracy_kept"] > pooled["accuracy_all"]
  assert section["by_source"]["far"]["kept"] == 0.0
  assert section["by_source"]["far"]["accuracy_kept"] is None
  # Far images are doubted beyond every validation image and never answered; the validation
  # images answered are right at least answer_accuracy of the time.
  assert section["selective"]["this"]["doubt"]["kept"] == 0.0
  assert section["by_source_answered"]["far"]["kept"] == 0.0
  val, val_labels = part(300, 600), labels[300:600]
  answered = loaded.doubt(loaded.scores(val)) <= loaded.answer_threshold
  assert 0 < answered.sum() < 300
  assert np.mean((val["logits"].argmax(1) == val_labels)[answered]) >= 0.99
  np.testing.assert_array_equal(loaded.val_msp, np.sort(val_scores["msp"]))
  verdict = loaded.verdict(loaded.scores(far), 0)
  assert verdict["in_distribution"] is False and "unlike the training images" in verdict["reason"]
  assert verdict["doubt"]["value"] == 1.0 and verdict["doubt"]["answered"] is False
  assert verdict["ood"]["threshold"] == fit.thresholds["mahalanobis"]


def test_check_within_refuses_a_fit_on_other_splits():
  meta = dict(patient_group=np.array(["a", "a", "b", "c", "d"]))
  splits = dict(train=np.array([0, 1, 2]), val=np.array([3]), test=np.array([4]))
  data.check_within(meta, splits, np.array([0, 2]))
  with pytest.raises(AssertionError, match="outside the train split"):
    data.check_within(meta, splits, np.array([0, 3]))
  leaky = dict(splits, test=np.array([1, 4]))      # a training patient's image in test
  with pytest.raises(AssertionError, match="Patient groups in both train and test"):
    data.check_within(meta, leaky, np.array([0, 2]))


@pytest.fixture
def no_plots(monkeypatch):
  monkeypatch.setattr(workdir_module, "write_plots", lambda metrics, out: {})


def test_evaluation_fits_on_the_training_split_and_reports(workdir, tmp_path, monkeypatch,  # noqa: F811
                                                           no_plots):
  fitted = []
  real_fit = ood.fit
  monkeypatch.setattr(ood, "fit", lambda *a, **k: fitted.append(a[1]) or real_fit(*a, **k))
  metrics = evaluate_workdir(workdir)
  section = metrics["ood"]
  trained = checkpoint.load_trained(workdir)
  built = data.build_dataset(trained.config.data)
  splits = data.make_splits(built.metadata, trained.config.data)
  assert section["defined"] and section["is_reference"] and not section["auroc"]
  assert section["fit"]["n_train"] == len(np.unique(splits["train"])) == len(fitted[0])
  assert section["fit"]["n_val"] == len(splits["val"])
  assert section["fit"]["model_digest"] == checkpoint.model_digest(trained.variables)
  assert json.loads((workdir / "metrics.json").read_text())["ood"]["fit"] == section["fit"]
  assert "## Out of distribution" in (workdir / "report.md").read_text()
  assert (workdir / checkpoint.OOD_FILE).is_file()

  # External sets and other splits reuse the stored fit and tell their sources from the test split.
  _write_source(tmp_path / "ext")
  ext = external.evaluate_external(workdir, [f"manifest:{tmp_path / 'ext'}"])["ext"]["ood"]
  assert len(fitted) == 1 and ext["fit"] == section["fit"]
  assert set(ext["auroc"]["energy"]) == {"clinic", "archive", "all"}
  assert ext["selective"]["pooled"]["msp"]["images"] == metrics["num_examples"] + 36
  val = evaluate_workdir(workdir, "val")["ood"]
  for s in ood.SCORES:   # the thresholds were chosen on these images
    assert val["flagged"][s]["all"] <= 1 - section["fit"]["keep"] + 1e-9

  # A training split that shares a patient with the test split is refused before any fit.
  (workdir / checkpoint.OOD_FILE).unlink()
  real_splits = data.make_splits

  def leaky(meta, config):
    s = real_splits(meta, config)
    return dict(s, train=np.append(s["train"], s["test"][:1]))
  monkeypatch.setattr(data, "make_splits", leaky)
  with pytest.raises(AssertionError, match="Patient groups in both train and test"):
    evaluate_workdir(workdir)


def test_image_size_setting():
  from configs import default

  config = default.get_config()
  assert ood.image_size(config) == 0                       # the default: the run's own size
  own = config.data.image_size
  for size, want in ((own, 0), (2 * own, 2 * own)):
    config.eval.ood_image_size = size
    assert ood.image_size(config) == want and ood.settings(config, None)["image_size"] == want
  config.eval.ood_image_size = -1   # (ConfigDict itself refuses a float for an int field)
  with pytest.raises(ValueError, match="eval.ood_image_size"):
    ood.image_size(config)


def test_ood_image_size_reads_the_blocks_at_that_size_and_predict_agrees(tmp_path, no_plots,
                                                                         save_random_run):
  """At eval.ood_image_size the fit, the evaluation and predict read the input and the blocks of
  the films preprocessed at that size, the logits at the run's; a change of the setting refits."""
  from cxr_jax import predict
  from cxr_jax.data.preprocess import PreprocessConfig, normalise_images, process_file
  from cxr_jax.evaluate import make_outputs_fn
  from tests.test_evaluate_workdir import SIZE, save_small_run

  run_dir = save_small_run(tmp_path, save_random_run)
  trained = checkpoint.load_trained(run_dir)
  config = trained.config.copy_and_resolve_references()
  config.eval.ood_image_size = 2 * SIZE
  metrics = evaluate_workdir(run_dir, config=config)
  fit = ood.OodFit.load(run_dir / checkpoint.OOD_FILE)
  assert fit.image_size == metrics["ood"]["fit"]["image_size"] == 2 * SIZE
  assert f"reads the images at {2 * SIZE} px" in (run_dir / "report.md").read_text()

  # By hand, outside the dataset pipeline: the test split's files preprocessed at each size.
  built = data.build_dataset(config.data)
  test_ids = np.unique(data.make_splits(built.metadata, config.data)["test"])
  test_files = built.metadata["file"][test_ids].tolist()
  outputs_fn = make_outputs_fn(trained.model)

  def outputs_at(size, fn):
    prep = dataclasses.replace(PreprocessConfig.from_data_config(config.data), image_size=size)
    x = np.stack([process_file(f, prep).image for f in test_files])
    return jax.tree.map(np.asarray, fn(trained.variables,
                                       normalise_images(x, trained.preprocessing)))
  # (This run's head flattens block5: at another size it could not run; the blocks alone can.)
  at_run = outputs_at(SIZE, outputs_fn)
  at_ood = outputs_at(2 * SIZE, make_outputs_fn(trained.model, head=False))
  assert set(at_ood) == set(ood.IMAGE_OUTPUTS)
  by_hand = fit.scores({**at_run, **{k: at_ood[k] for k in ood.IMAGE_OUTPUTS}})
  at_run_size = fit.scores(at_run)   # what reading the blocks at the run's size would give
  # float32 features through one batch or several (XLA's sums in another order): a few ulps,
  # amplified at most ~1/d^2 by the distance's sqrt(2 - 2 cos); the two sizes differ by far more.
  for s in ("knn_blocks", "mahalanobis", "msp"):
    np.testing.assert_allclose(fit.reference["scores"][s], by_hand[s], rtol=1e-4, atol=1e-6)
  assert np.abs(at_run_size["knn_blocks"] - by_hand["knn_blocks"]).max() > 1e-2

  # predict reads the size from the stored fit: the same scores, the run-size probabilities.
  got = predict.predict_files(run_dir, test_files, batch_size=4)
  np.testing.assert_allclose([r["ood"]["value"] for r in got], by_hand[fit.score],
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose([[r["probs"][c] for c in data.LABELS] for r in got],
                             at_run["probs"], atol=1e-5)

  # The setting back at the run's size: the stored fit no longer matches, so it is made again.
  evaluate_workdir(run_dir)
  assert ood.OodFit.load(run_dir / checkpoint.OOD_FILE).image_size == 0
