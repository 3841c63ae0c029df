"""Temperature scaling (Guo et al. 2017) and the expected calibration error: pure numpy/scipy.

One temperature T > 0 divides every logit. Fitted on held-out (validation) logits by minimising
the mean negative log-likelihood, it corrects a model's over- or under-confidence without
changing any ranking: argmax, accuracy, ROC and PR curves are the same at every T.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import optimize, special

# The search range of T. NLL(1/T) is convex, so NLL(log T) is unimodal and a bounded scalar search
# finds its minimum; an optimum at a bound means the logits carry (almost) no usable confidence.
_LOG_T_BOUNDS = (np.log(1e-2), np.log(1e2))
_LOG_T_TOL = 1e-6


def _logits_and_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
  """float64 logits [N, C] and int64 labels [N]; raises on shapes that do not pair up."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"expected logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
  return logits, labels.astype(np.int64)


def logits_from_probs(probs) -> np.ndarray:
  """Logits equivalent to softmax probabilities: log p (clipped at the smallest float32).

  softmax ignores a per-row shift, and log softmax(z) = z - logsumexp(z) is one, so
  softmax(log p / T) = softmax(z / T) at every T: the evaluation's probabilities suffice. The clip
  only touches probabilities float32 rounded to 0, which stay negligible at any T in range.
  """
  return np.log(np.clip(np.asarray(probs, np.float64), np.finfo(np.float32).tiny, None))


def scaled_probs(logits, temperature: float = 1.0) -> np.ndarray:
  """softmax(logits / T) [N, C], float64."""
  return special.softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def mean_nll(logits, labels, temperature: float = 1.0) -> float:
  """Mean negative log-likelihood of the labels under softmax(logits / T)."""
  logits, labels = _logits_and_labels(logits, labels)
  log_probs = special.log_softmax(logits / temperature, axis=1)
  return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """Top-label expected calibration error of probabilities [N, C] against labels [N].

  Each example's confidence is its largest probability, and it is correct when that class is its
  label. Confidences fall into `num_bins` equal-width bins (m/M, (m+1)/M] (a confidence of 0, which
  a softmax cannot give, counts in the first). With B_m the examples of bin m,

    ECE = sum_m |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|,

  0 for a perfectly calibrated model; empty bins add nothing. The bins follow
  `cxr_jax.evaluate.metrics.calibration` (the reliability plot), so both give the same ECE.
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if probs.ndim != 2 or labels.shape != probs.shape[:1] or not len(labels):
    raise ValueError(f"expected probs [N, C] and labels [N], N > 0; got {probs.shape} and "
                     f"{labels.shape}")
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
  ece = 0.0
  for m in np.unique(bins):
    sel = bins == m
    ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
  return float(ece)


def fit_problem(logits, labels) -> str | None:
  """Why no temperature can be fitted to these logits, or None when one can."""
  labels = np.asarray(labels)
  if labels.size == 0:
    return "no validation examples"
  if labels.size == 1:
    return "a single validation example"
  logits, labels = _logits_and_labels(logits, labels)
  if not np.all(np.isfinite(logits)):
    return "non-finite logits"
  if labels.min() < 0 or labels.max() >= logits.shape[1]:
    return f"labels outside [0, {logits.shape[1]})"
  return None


def fit_temperature(logits, labels) -> float:
  """The T > 0 (within [0.01, 100]) minimising the mean NLL of softmax(logits / T).

  Deterministic (bounded Brent search over log T, so T stays positive and the search is symmetric
  in over- and under-confidence). Where `fit_problem` names a reason, logs it and returns 1.0:
  the logits unchanged.
  """
  problem = fit_problem(logits, labels)
  if problem:
    logging.warning("temperature scaling not fitted (%s): T = 1", problem)
    return 1.0
  logits, labels = _logits_and_labels(logits, labels)
  result = optimize.minimize_scalar(
      lambda log_t: mean_nll(logits, labels, np.exp(log_t)), bounds=_LOG_T_BOUNDS,
      method="bounded", options=dict(xatol=_LOG_T_TOL))
  return float(np.exp(result.x))


def calibration_summary(logits_eval, labels_eval, temperature: float,
                        num_bins: int = 15) -> dict:
  """ECE and mean NLL of the evaluated examples before (T = 1) and after dividing by `temperature`."""
  return dict(
      temperature=float(temperature), num_bins=int(num_bins),
      ece_before=expected_calibration_error(scaled_probs(logits_eval), labels_eval, num_bins),
      ece_after=expected_calibration_error(scaled_probs(logits_eval, temperature), labels_eval,
                                           num_bins),
      nll_before=mean_nll(logits_eval, labels_eval),
      nll_after=mean_nll(logits_eval, labels_eval, temperature))
