"""Temperature scaling and ECE (cxr_jax.evaluate.calibration), and their place in the reports."""

import json

import numpy as np
import pytest
from scipy import special

from cxr_jax import checkpoint
from cxr_jax.evaluate import calibration, external
from cxr_jax.evaluate import workdir as workdir_module
from cxr_jax.evaluate.metrics import calibration as reliability
from cxr_jax.evaluate.workdir import evaluate_workdir
from tests.test_evaluate_workdir import _write_source, workdir  # noqa: F401  (workdir: a fixture)


def _calibrated(n=20000, num_classes=3, seed=0):
  """Logits z and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 2.0, (n, num_classes))
  probs = special.softmax(logits, axis=1)
  labels = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
  return logits, labels


def test_ece_by_hand():
  probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.15, 0.75, 0.1], [0.3, 0.25, 0.45]])
  labels = np.array([0, 1, 1, 0])
  # 5 bins: (.8, 1] holds .9 (right); (.6, .8] holds .7 (wrong) and .75 (right); (.4, .6] .45 (wrong).
  ece = 1 / 4 * abs(1 - 0.9) + 2 / 4 * abs(0.5 - 0.725) + 1 / 4 * abs(0 - 0.45)
  assert calibration.expected_calibration_error(probs, labels, num_bins=5) == pytest.approx(ece)


def test_ece_is_small_when_calibrated_and_large_when_overconfident():
  logits, labels = _calibrated()
  assert calibration.expected_calibration_error(special.softmax(logits, 1), labels) < 0.02
  assert calibration.expected_calibration_error(special.softmax(3 * logits, 1), labels) > 0.1


def test_ece_agrees_with_the_reliability_curve():
  logits, labels = _calibrated(n=500, seed=1)
  probs = special.softmax(2 * logits, axis=1)
  assert calibration.expected_calibration_error(probs, labels, num_bins=10) == pytest.approx(
      reliability(labels, probs)["ece"])


def test_fit_temperature_undoes_overconfidence():
  logits, labels = _calibrated()
  temperature = calibration.fit_temperature(3 * logits, labels)
  assert temperature == pytest.approx(3.0, rel=0.05)
  assert temperature == calibration.fit_temperature(3 * logits, labels)  # deterministic
  summary = calibration.calibration_summary(3 * logits, labels, temperature)
  assert summary["nll_after"] < summary["nll_before"] - 0.1
  assert summary["ece_after"] < 0.02 < 0.1 < summary["ece_before"]
  assert summary["nll_before"] == pytest.approx(calibration.mean_nll(3 * logits, labels))
  json.dumps(summary, allow_nan=False)


def test_fit_temperature_on_log_probabilities_equals_the_logits():
  logits, labels = _calibrated(n=2000, seed=2)
  from_probs = calibration.logits_from_probs(special.softmax(3 * logits, axis=1))
  assert calibration.fit_temperature(from_probs, labels) == pytest.approx(
      calibration.fit_temperature(3 * logits, labels), rel=1e-4)


@pytest.mark.parametrize("logits,labels,reason", [
    (np.zeros((0, 3)), np.zeros(0, int), "no validation examples"),
    ([], [], "no validation examples"),
    ([[2.0, 0.0, -1.0]], [0], "a single validation example"),
    ([[np.nan, 0.0], [1.0, 0.0]], [0, 1], "non-finite"),
    ([[1.0, 0.0], [1.0, 0.0]], [0, 2], "labels outside"),
])
def test_fit_temperature_without_a_fit_returns_one_and_says_why(logits, labels, reason):
  assert reason in calibration.fit_problem(logits, labels)
  assert calibration.fit_temperature(logits, labels) == 1.0


@pytest.fixture
def no_plots(monkeypatch):
  """Skips the PNGs (seconds each; test_evaluate_workdir checks them)."""
  monkeypatch.setattr(workdir_module, "write_plots", lambda metrics, out: {})


def test_evaluation_reports_calibration_before_and_after(workdir, no_plots):  # noqa: F811
  metrics = evaluate_workdir(workdir)
  cal = json.loads((workdir / "metrics.json").read_text())["calibration"]
  assert cal == metrics["calibration"]
  assert cal["temperature"] > 0 and cal["n_val"] > 1 and len(cal["model_digest"]) == 16
  assert cal["ece_before"] == pytest.approx(cal["ece"])  # the reliability curve's ECE
  assert "## Calibration" in (workdir / "report.md").read_text()

  # On the validation split itself the fit is in-sample: the same T, and NLL cannot rise.
  val = evaluate_workdir(workdir, "val")["calibration"]
  assert val["temperature"] == pytest.approx(cal["temperature"]) and val["n_val"] == cal["n_val"]
  assert val["nll_after"] <= val["nll_before"] + 1e-9


def test_no_validation_split_is_said_not_fitted(workdir, tmp_path, no_plots):  # noqa: F811
  trained = checkpoint.load_trained(workdir)
  config = trained.config
  config.data.num_folds = 1
  run = tmp_path / "run"
  checkpoint.save_trained(run, config, trained.variables, trained.preprocessing)
  cal = evaluate_workdir(run)["calibration"]
  assert cal["temperature"] is None and cal["why"] == "not fitted: no validation split"
  assert "not fitted: no validation split" in (run / "report.md").read_text()


def test_external_sets_reuse_the_runs_validation_temperature(workdir, tmp_path,  # noqa: F811
                                                             no_plots):
  _write_source(tmp_path / "ext")
  spec = f"manifest:{tmp_path / 'ext'}"
  fitted = evaluate_workdir(workdir)["calibration"]
  reused = external.evaluate_external(workdir, [spec])["ext"]["calibration"]
  assert {k: reused[k] for k in ("temperature", "n_val", "model_digest")} == {
      k: fitted[k] for k in ("temperature", "n_val", "model_digest")}
  assert "ece_after" in reused and "nll_after" in reused

  (workdir / "metrics.json").unlink()  # no recorded fit: fitted again, the same
  again = external.run_temperature(workdir, checkpoint.load_trained(workdir))
  assert again["temperature"] == pytest.approx(fitted["temperature"])
