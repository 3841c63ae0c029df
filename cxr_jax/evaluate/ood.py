"""Knowing when the model does not know: out-of-distribution scores, their fit, and selective
prediction.

Every score says how unlike the run's training images an image is; higher is less familiar.
  msp          1 - the largest class probability of softmax(logits / T) (Hendrycks & Gimpel 2017),
               T the run's validation temperature (`calibration`; 1 where none was fitted)
  energy       -T logsumexp(logits / T) (Liu et al. 2020), the same T
  mahalanobis  min over classes c of (f - mu_c)' S^-1 (f - mu_c) (Lee et al. 2018), f the last
               block's output averaged over space, mu_c the class means of the training split's
               features and S their shared (class-centred) covariance, shrunk towards a scaled
               identity by Ledoit-Wolf: with ~1000 training images for 512 (VGG) or 1024 (DenseNet)
               ReLU features the sample covariance is singular or nearly so, and Ledoit-Wolf's
               shrinkage is a closed-form estimate from the training features alone, nothing to
               tune on held-out images (a fixed ridge would be one more choice to make somewhere)
  knn          distance from f / |f| to its k-th nearest training feature, each scaled to unit
               length (Sun et al. 2022)
  knn_blocks   the same over the input and every block: a 16 x 16 thumbnail of the input
               (`inference.thumbnail`, centred on the training split's mean thumbnail) and each
               block's pooled output, each scaled to unit length and concatenated (`block_rows`),
               so that each part weighs alike whatever its size. The input and the early blocks
               see acquisition (film, exposure, field of view, a child's anatomy) that the last
               block, trained to separate the classes, averages away: on the quick-start model it
               told cxr3's test split from cxr-plus's collections, which that model never saw,
               better than knn (Kermany 0.973 against 0.873, SIIM 0.746 against 0.739; the blocks
               without the input 0.940 and 0.752; results/ood_quickstart_128px/). Second moments
               of the block outputs (per-channel spatial standard deviation, alone or beside the
               means; Sastry & Oore's idea without the higher orders) and thresholds per predicted
               class did not improve on it there.
  mahalanobis_blocks  Lee et al.'s feature ensemble without its weights: the mean over the five
               blocks of each block's pooled-feature Mahalanobis distance divided by its number of
               features (a Gaussian's squared distance is chi-square with that many degrees of
               freedom, so each term is ~1 on training-like images). Lee et al. fit the weights on
               out-of-distribution validation images; this project has none to fit on, so all
               blocks weigh alike. The early blocks (frozen ImageNet filters under FT2) see
               acquisition and anatomy, the last what the head reads.
doubt (selective prediction: when to answer at all): the larger of an image's ranks among the
               validation images by msp and by the flagging score (config.eval.ood_score), each
               the share of validation images scoring lower: 0.99 is as uncertain or as unfamiliar
               as the top 1 % of validation on at least one of the two. One minus it is the
               smaller of the two conformal p-values (Vovk et al. 2005), so "doubt <= t" answers
               an image only where it is both familiar and confident. msp alone ranks errors
               inside the training collections best but answers every confident Kermany child;
               the flagging score alone answers uncertain familiar images. On the quick-start
               model the combination ranks errors almost as well as msp on the test split (area
               under the risk-coverage curve 0.110 against 0.103; knn_blocks 0.169) and better
               than either pooled with cxr-plus, collections it never saw (0.599 against 0.668
               and 0.629; results/ood_quickstart_128px/answer.md). The answer threshold
               (`answer_threshold`) is the largest doubt at which the validation images at or
               under it were right at least config.eval.answer_accuracy of the time.
The fit (`fit`) reads the training split only; each score's threshold keeps config.eval.ood_keep
of the validation split's images (`threshold_keeping`); the test split's scores are stored with it
as the reference every other set is told apart from. `OodFit.load` needs NumPy alone, so
prediction scores images without scikit-learn or SciPy (they are imported inside the two
functions that need them, which prediction never calls).

`evaluate_ood` is the evaluation of one scored set against that reference: AUROC per source,
the share flagged at each threshold, and selective prediction (accuracy on the images kept, the
risk-coverage curve and its area), beside the figures on all images. `run_fit` and `run_section`
are the loaded run's side (`run.LoadedRun`): the fit made once per run from its cached outputs
(`run_outputs`: one forward pass per split, two at config.eval.ood_image_size) or read
from the stored one, and the section the split and external evaluations (`workdir.Split`,
`external.External`) add to their metrics.json.

At config.eval.ood_image_size (`image_size`; 0, the default: the run's own size) every score but
msp and energy reads the images preprocessed at that size (the input thumbnail and the pooled
blocks of the same parameters: the convolutions take any size), the logits staying the run's. The
blocks see more of the film's acquisition at 256 px than at the quick start's 128: on the
quick-start model mahalanobis_blocks told cxr-external's SIIM films from its test split at AUROC
0.923 (0.600 at 128 px) and knn_blocks Kermany's at 0.996 (0.961), while the multi-source model,
trained on both collections, flags at most 5 % of them (results/ood_quickstart_128px/
image_size.md, results/ood_multisource_128px/image_size_256.md); a control says part of it is how
the files were made rather than the hospital (results/ood_quickstart_128px/resolution.md). It
costs a second forward pass at that size (~5x prediction's at 128 -> 256), so it is opt-in.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

SCORES = ("msp", "energy", "mahalanobis", "knn", "mahalanobis_blocks", "knn_blocks")
DESCRIPTIONS = dict(
    msp="1 - maximum softmax probability (after the temperature)",
    energy="energy -T logsumexp(logits / T)",
    mahalanobis="Mahalanobis distance to the nearest class mean of the training features",
    knn="distance to the k-th nearest training image's features (unit length)",
    mahalanobis_blocks="mean over the five blocks of Mahalanobis distance / features",
    knn_blocks="distance to the k-th nearest training image over the input thumbnail and every "
               "block's features (each unit length)")
_CURVE_POINTS = 101   # risk-coverage points kept in metrics.json (the area uses every image)


def _logsumexp(x: np.ndarray) -> np.ndarray:
  top = x.max(axis=1, keepdims=True)
  return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits, temperature: float = 1.0) -> np.ndarray:
  """1 - max softmax(logits / T) [N]: 0 for a certain prediction, 1 - 1/C for a uniform one."""
  z = np.asarray(logits, np.float64) / temperature
  return 1.0 - np.exp(z.max(axis=1) - _logsumexp(z))


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
  """-T logsumexp(logits / T) [N]: low where some logit is large."""
  return -temperature * _logsumexp(np.asarray(logits, np.float64) / temperature)


def mahalanobis_score(features, means, precision) -> np.ndarray:
  """min_c (f - mu_c)' P (f - mu_c) [N] for features [N, F], class means [C, F] and the shared
  precision matrix P [F, F] (the inverse covariance)."""
  f = np.asarray(features, np.float64)
  d = f[:, None, :] - np.asarray(means, np.float64)[None]          # [N, C, F]
  return np.einsum("ncf,fg,ncg->nc", d, np.asarray(precision, np.float64), d).min(axis=1)


def unit_rows(features) -> np.ndarray:
  """Each row scaled to unit length (a zero row stays zero)."""
  f = np.asarray(features, np.float64)
  norm = np.linalg.norm(f, axis=1, keepdims=True)
  return f / np.where(norm > 0, norm, 1.0)


def block_rows(blocks: dict, names) -> np.ndarray:
  """The features of parts `names` (of `blocks`, {part: [N, F_b]}), each row scaled to unit
  length, concatenated and divided by sqrt(number of parts): unit rows in which every part weighs
  alike [N, sum F_b]."""
  return np.concatenate([unit_rows(blocks[b]) for b in names], axis=1) / np.sqrt(len(names))


def input_and_blocks(outputs: dict, centre, blocks) -> np.ndarray:
  """knn_blocks' rows: `block_rows` of the input thumbnail minus `centre` (the training split's
  mean thumbnail; uncentred, every chest film's thumbnail points the same way) and of the pooled
  outputs of `blocks`, in that order."""
  parts = {"input": np.asarray(outputs["input"], np.float64) - centre, **outputs["blocks"]}
  return block_rows(parts, ["input", *blocks])


def knn_score(features, bank, k: int) -> np.ndarray:
  """Euclidean distance of each unit-length feature row to its k-th nearest row of `bank` (rows
  already unit length: `unit_rows`) [N]."""
  q, bank = unit_rows(features), np.asarray(bank, np.float64)
  if not 1 <= k <= len(bank):
    raise ValueError(f"k={k} nearest neighbours of a bank of {len(bank)} training features")
  sq = np.maximum(2.0 - 2.0 * q @ bank.T, 0.0)   # |a - b|^2 of unit vectors
  return np.sqrt(np.partition(sq, k - 1, axis=1)[:, k - 1])


def shared_gaussian(features, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray, float]:
  """(class means [C, F], precision [F, F], Ledoit-Wolf shrinkage) of the features: every class's
  mean, and the inverse of their shared covariance (each image centred on its class mean),
  shrunk by Ledoit-Wolf (see the module doc)."""
  from sklearn.covariance import LedoitWolf  # fitting only; prediction loads the result

  f, labels = np.asarray(features, np.float64), np.asarray(labels)
  missing = [c for c in range(num_classes) if not np.any(labels == c)]
  if missing:
    raise ValueError(f"class(es) {missing} have no training image: no class mean to measure from")
  means = np.stack([f[labels == c].mean(axis=0) for c in range(num_classes)])
  estimate = LedoitWolf(assume_centered=True).fit(f - means[labels])
  return means, estimate.precision_, float(estimate.shrinkage_)


def threshold_keeping(scores, keep: float) -> float:
  """The smallest threshold t with at least `keep` of `scores` <= t: an image is flagged when its
  score exceeds t, so ceil(keep * N) of these images are kept (more where scores tie)."""
  s = np.sort(np.asarray(scores, np.float64))
  if not len(s) or not 0.0 < keep <= 1.0:
    raise ValueError(f"a threshold keeping {keep} of {len(s)} scores")
  return float(s[int(np.ceil(keep * len(s) - 1e-9)) - 1])


def doubt(msp, flag, val_msp, val_flag) -> np.ndarray:
  """[N] the larger of each image's two ranks among the validation images (`val_msp`, `val_flag`:
  their msp and flagging scores, sorted): the share of them scoring strictly lower on msp, and
  on the flagging score (module doc)."""
  rank = lambda v, ref: np.searchsorted(ref, np.asarray(v, np.float64), side="left") / len(ref)
  return np.maximum(rank(msp, val_msp), rank(flag, val_flag))


def answer_threshold(doubts, correct, accuracy: float) -> float:
  """The largest doubt t among `doubts` (the validation images') at which the images with doubt
  <= t are right at least `accuracy` of the time; -1 (answer nothing) where no t is."""
  d, correct = np.asarray(doubts, np.float64), np.asarray(correct, bool)
  if not len(d) or not 0.0 < accuracy <= 1.0:
    raise ValueError(f"an answer threshold for accuracy {accuracy} on {len(d)} images")
  order = np.argsort(d, kind="stable")
  d, right = d[order], np.cumsum(correct[order])
  last = np.append(d[1:] != d[:-1], True)          # the last image of each tie
  kept = np.arange(1, len(d) + 1)
  ok = last & (right >= accuracy * kept - 1e-9)   # 0.95 * 20 is 19.000000000000004 in floats
  return float(d[ok].max()) if ok.any() else -1.0


@dataclasses.dataclass
class OodFit:
  """A run's fitted scores (see the module doc), versioned by the kept parameters' digest."""
  score: str                 # the score that flags images (config.eval.ood_score)
  keep: float                # share of validation images each threshold keeps
  temperature: float
  means: np.ndarray          # [C, F]
  precision: np.ndarray      # [F, F]
  shrinkage: float
  bank: np.ndarray           # [N_train, F] unit-length training features
  bank_blocks: np.ndarray    # [N_train, 256 + sum F_b] the training split's input_and_blocks
  input_centre: np.ndarray   # [256] the training split's mean input thumbnail
  k: int
  blocks: dict               # {block: (class means [C, F_b], precision [F_b, F_b])}
  thresholds: dict           # {score: threshold}
  model_digest: str
  n_train: int
  n_val: int
  reference: dict            # the test split: {"scores": {score: [N]}, "correct", "sources"}
  answer_accuracy: float     # validation accuracy the answer threshold keeps
  val_msp: np.ndarray        # [N_val] the validation split's msp, sorted (doubt's ranks)
  val_flag: np.ndarray       # [N_val] its flagging score (`score`), sorted
  answer_threshold: float    # answer where doubt <= this (-1: answer nothing)
  # The size the feature scores read images at (config.eval.ood_image_size; `image_size`): 0, the
  # run's own size (and every fit stored before the setting existed).
  image_size: int = 0

  def scores(self, outputs: dict) -> dict[str, np.ndarray]:
    """{score: [N]} of images given the model's outputs (`inference.make_outputs_fn`): logits
    [N, C], the last block's pooled features [N, F], every block's ("blocks") and the input
    thumbnail ("input")."""
    logits, features = outputs["logits"], outputs["features"]
    per_block = [mahalanobis_score(outputs["blocks"][b], means, precision) / len(precision)
                 for b, (means, precision) in self.blocks.items()]
    return dict(msp=msp_score(logits, self.temperature),
                energy=energy_score(logits, self.temperature),
                mahalanobis=mahalanobis_score(features, self.means, self.precision),
                knn=knn_score(features, self.bank, self.k),
                mahalanobis_blocks=np.mean(per_block, axis=0),
                knn_blocks=knn_score(input_and_blocks(outputs, self.input_centre, self.blocks),
                                     self.bank_blocks, self.k))

  def doubt(self, scores: dict) -> np.ndarray:
    """[N] the doubt of images given their `scores` (see the module doc)."""
    return doubt(scores["msp"], scores[self.score], self.val_msp, self.val_flag)

  def describe(self) -> dict:
    """The fit's settings for metrics.json (no arrays)."""
    return dict(score=self.score, keep=self.keep, temperature=self.temperature,
                shrinkage=self.shrinkage, k=self.k, thresholds=self.thresholds,
                model_digest=self.model_digest, n_train=self.n_train, n_val=self.n_val,
                covariance="shared, class-centred, Ledoit-Wolf shrinkage",
                answer_accuracy=self.answer_accuracy, answer_threshold=self.answer_threshold,
                image_size=self.image_size)

  def to_bytes(self) -> bytes:
    """An .npz of plain arrays (loadable without pickle)."""
    ref = self.reference
    meta = {k: getattr(self, k) for k in ("score", "keep", "temperature", "shrinkage", "k",
                                          "thresholds", "model_digest", "n_train", "n_val",
                                          "answer_accuracy", "answer_threshold",
                                          "image_size")}
    buffer = io.BytesIO()
    blocks = {f"{part}@{b}": array for b, pair in self.blocks.items()
              for part, array in zip(("means", "precision"), pair, strict=True)}
    meta["blocks"] = list(self.blocks)
    np.savez(buffer, meta=np.array(json.dumps(meta)), means=self.means, precision=self.precision,
             bank=self.bank.astype(np.float32),
             bank_blocks=self.bank_blocks.astype(np.float32), input_centre=self.input_centre,
             val_msp=self.val_msp, val_flag=self.val_flag, ref_correct=np.asarray(ref["correct"], bool),
             **blocks,
             ref_sources=np.asarray(ref["sources"]).astype(str),
             **{f"ref_{s}": np.asarray(v, np.float64) for s, v in ref["scores"].items()})
    return buffer.getvalue()

  @classmethod
  def load(cls, path) -> OodFit:
    with np.load(Path(path), allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      if (set(SCORES) - {k[4:] for k in z.files if k.startswith("ref_")} - {"correct", "sources"}
          or "val_msp" not in z.files):
        raise ValueError(f"{path} holds another version's scores: evaluate the run again")
      reference = dict(scores={s: z[f"ref_{s}"] for s in SCORES}, correct=z["ref_correct"],
                       sources=z["ref_sources"])
      blocks = {b: (z[f"means@{b}"], z[f"precision@{b}"]) for b in meta.pop("blocks")}
      return cls(means=z["means"], precision=z["precision"], bank=z["bank"],
                 bank_blocks=z["bank_blocks"], input_centre=z["input_centre"], blocks=blocks,
                 val_msp=z["val_msp"], val_flag=z["val_flag"], reference=reference, **meta)

  def verdict(self, scores: dict, index: int, score: str | None = None) -> dict:
    """The prediction's fields for image `index` of `scores` ({score: [N]}): the score, its
    threshold, "in_distribution" and a one-line reason."""
    score = score or self.score
    value, threshold = float(scores[score][index]), float(self.thresholds[score])
    inside = value <= threshold
    reason = (f"{score} {value:.4g} {'<=' if inside else '>'} threshold {threshold:.4g}, which "
              f"{100 * self.keep:.0f} % of the validation images stay under: "
              + ("like the training images" if inside else
                 "unlike the training images, the class probabilities are not to be trusted"))
    doubt_value = float(doubt(scores["msp"][index:index + 1], scores[self.score][index:index + 1],
                              self.val_msp, self.val_flag)[0])
    answered = doubt_value <= self.answer_threshold
    return {"ood": {"score": score, "value": value, "threshold": threshold},
            "in_distribution": bool(inside), "reason": reason,
            "doubt": {"value": doubt_value, "threshold": self.answer_threshold,
                      "answered": bool(answered)},
            "answer_reason": (
                f"doubt {doubt_value:.3f} {'<=' if answered else '>'} {self.answer_threshold:.3f}: "
                + (f"validation images this familiar and confident were right at least "
                   f"{100 * self.answer_accuracy:.0f} % of the time" if answered else
                   f"less familiar or less confident than the validation images that were right "
                   f"{100 * self.answer_accuracy:.0f} % of the time: for a person to read"))}


def fit(train: dict, train_labels, val: dict, val_labels, *, temperature: float, keep: float,
        k: int, score: str, model_digest: str, reference: dict,
        answer_accuracy: float, image_size: int = 0) -> OodFit:
  """Fits every score on the training split's outputs (`inference.make_outputs_fn`'s) and
  thresholds them, and the answer threshold, on the validation split's (`val`, `val_labels`).
  `reference`: the test split's outputs with "correct" and "sources", scored and kept (not its
  outputs) for every later evaluation to compare against. `image_size`: the size the outputs'
  image features were read at (recorded; 0: the run's)."""
  if score not in SCORES:
    raise ValueError(f"eval.ood_score must be one of {SCORES}, got {score!r}")
  num_classes = np.asarray(train["logits"]).shape[1]
  means, precision, shrinkage = shared_gaussian(train["features"], train_labels, num_classes)
  blocks = {b: shared_gaussian(f, train_labels, num_classes)[:2]
            for b, f in train["blocks"].items()}
  bank = unit_rows(train["features"]).astype(np.float32)
  centre = np.asarray(train["input"], np.float64).mean(axis=0)
  bank_blocks = input_and_blocks(train, centre, blocks).astype(np.float32)
  partial = OodFit(score, float(keep), float(temperature), means, precision, shrinkage, bank,
                   bank_blocks, centre, min(int(k), len(bank)), blocks, {}, model_digest,
                   len(bank), len(val["logits"]), {}, float(answer_accuracy), None, None, -1.0,
                   int(image_size))
  val_scores = partial.scores(val)
  partial.thresholds = {s: threshold_keeping(v, keep) for s, v in val_scores.items()}
  partial.val_msp, partial.val_flag = np.sort(val_scores["msp"]), np.sort(val_scores[score])
  val_correct = np.asarray(val["logits"]).argmax(axis=1) == np.asarray(val_labels)
  partial.answer_threshold = answer_threshold(partial.doubt(val_scores), val_correct,
                                              answer_accuracy)
  partial.reference = dict(scores=partial.scores(reference),
                           correct=np.asarray(reference["correct"], bool),
                           sources=np.asarray(reference["sources"]).astype(str))
  return partial


def risk_coverage(scores, correct) -> dict:
  """Selective prediction's risk-coverage curve: the images kept from the lowest score up, the
  error rate of those kept at each coverage, and its area (AURC: the mean risk over the coverages
  1/N..N/N; Geifman et al. 2019). Tied scores are kept together, in random order: the risk inside
  a tie is its expectation, so a constant score's area is the error rate (no information) and a
  score ranking every error last has the smallest area the errors allow (`aurc_optimal`)."""
  s, wrong = np.asarray(scores, np.float64), ~np.asarray(correct, bool)
  n = len(s)
  if not n:
    raise ValueError("risk-coverage of no images")
  order = np.argsort(s, kind="stable")
  s, wrong = s[order], wrong[order].astype(np.float64)
  errors = np.concatenate([[0.0], np.cumsum(wrong)])
  starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))   # first index of each tie
  ends = np.append(starts[1:], n)
  group = np.repeat(np.arange(len(starts)), ends - starts)
  rate = (errors[ends] - errors[starts]) / (ends - starts)             # error rate inside a tie
  kept = np.arange(1, n + 1)
  risk = (errors[starts][group] + (kept - starts[group]) * rate[group]) / kept
  m = int(wrong.sum())
  optimal = np.maximum(kept - (n - m), 0) / kept
  at = np.unique(np.linspace(0, n - 1, min(n, _CURVE_POINTS)).round().astype(int))
  return dict(aurc=float(risk.mean()), aurc_optimal=float(optimal.mean()),
              risk_all=float(m / n), coverage=(kept[at] / n).tolist(), risk=risk[at].tolist())


def auroc(inside, outside) -> float | None:
  """Area under the ROC curve of telling `outside` scores (positives) from `inside` ones; None
  where either side is empty."""
  from sklearn.metrics import roc_auc_score  # evaluation only

  inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
  if not len(inside) or not len(outside):
    return None
  truth = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
  return float(roc_auc_score(truth, np.concatenate([inside, outside])))


def _selective(scores, correct, threshold) -> dict:
  """Accuracy on every image and on those the threshold keeps; the kept share."""
  correct = np.asarray(correct, bool)
  kept = np.asarray(scores) <= threshold
  return dict(images=int(len(correct)), kept=float(kept.mean()) if len(kept) else None,
              accuracy_all=float(correct.mean()) if len(correct) else None,
              accuracy_kept=float(correct[kept].mean()) if kept.any() else None)


def _per_source(scores, correct, sources, labels, preds, threshold, class_names) -> dict:
  """Per source: the selective figures and each class's sensitivity on all and on kept images."""
  out = {}
  for source in sorted(set(sources.tolist())):
    sel = sources == source
    entry = _selective(scores[sel], correct[sel], threshold)
    kept = sel & (scores <= threshold)
    for name, subset in (("all", sel), ("kept", kept)):
      entry[f"sensitivity_{name}"] = {
          c: float(np.mean(preds[subset & (labels == k)] == k)) if np.any(subset & (labels == k))
          else None for k, c in enumerate(class_names) if np.any(sel & (labels == k))}
    out[source] = entry
  return out


def evaluate_ood(fit: OodFit, outputs: dict, labels, sources, *, is_reference: bool,
                 class_names) -> dict:
  """The out-of-distribution section of one evaluated set (the run's outputs over it,
  `inference.make_outputs_fn`'s, with their labels and sources): scores
  from `fit`, compared with `fit.reference` (the run's own test split).

  - auroc[score][source]: telling the test split from each source of this set (not for the test
    split itself, `is_reference`), and "all" of it;
  - flagged[score][source]: the share of each source's images above the threshold, the test
    split's own sources under "reference";
  - selective: on this set and, for another set, pooled with the test split ("pooled"): per score
    the accuracy on all and on kept images, the kept share and the risk-coverage curve with its
    area; per source (the flagging score) the same, with each held class's sensitivity.
  """
  labels, sources = np.asarray(labels), np.asarray(sources).astype(str)
  preds = np.asarray(outputs["logits"]).argmax(axis=1)
  correct = preds == labels
  scores = fit.scores(outputs)
  ref = fit.reference
  out = dict(fit=fit.describe(), descriptions=dict(DESCRIPTIONS), is_reference=is_reference,
             sources=sorted(set(sources.tolist())), auroc={}, flagged={}, selective={})
  for s in SCORES:
    t = fit.thresholds[s]
    out["flagged"][s] = {src: float(np.mean(scores[s][sources == src] > t))
                         for src in out["sources"]}
    out["flagged"][s]["all"] = float(np.mean(scores[s] > t))
    out["flagged"][s]["reference"] = float(np.mean(ref["scores"][s] > t))
    if not is_reference:
      out["auroc"][s] = {src: auroc(ref["scores"][s], scores[s][sources == src])
                         for src in out["sources"]}
      out["auroc"][s]["all"] = auroc(ref["scores"][s], scores[s])
  scores = dict(scores, doubt=fit.doubt(scores))
  thresholds = dict(fit.thresholds, doubt=fit.answer_threshold)
  sets = {"this": (scores, correct, sources)}
  if not is_reference:
    sets["pooled"] = ({s: np.concatenate([fit.doubt(ref["scores"]) if s == "doubt" else
                                          ref["scores"][s], scores[s]]) for s in thresholds},
                      np.concatenate([ref["correct"], correct]),
                      np.concatenate([ref["sources"], sources]))
  for name, (sc, corr, _) in sets.items():
    out["selective"][name] = {s: dict(_selective(sc[s], corr, thresholds[s]),
                                      risk_coverage=risk_coverage(sc[s], corr)) for s in thresholds}
  out["by_source"] = _per_source(scores[fit.score], correct, sources, labels, preds,
                                 fit.thresholds[fit.score], list(class_names))
  out["by_source_answered"] = _per_source(scores["doubt"], correct, sources, labels, preds,
                                          fit.answer_threshold, list(class_names))
  return out


# The run's side (a `run.LoadedRun`, its outputs cached per split): the fit stored beside the kept
# checkpoint and the section every evaluation of the run writes. Imports below NumPy stay inside.

def settings(config, temperature: float | None) -> dict:
  """The settings a fit is made with (config.eval.ood_*; the temperature of the run's validation
  split, 1 where none was fitted)."""
  from cxr_jax.evaluate.run import eval_setting

  return dict(score=str(eval_setting(config, "ood_score", "knn")),
              keep=float(eval_setting(config, "ood_keep", 0.95)),
              k=int(eval_setting(config, "ood_knn_k", 10)),
              answer_accuracy=float(eval_setting(config, "answer_accuracy", 0.95)),
              temperature=1.0 if temperature is None else float(temperature),
              image_size=image_size(config))


# What the scores read of the image itself (`inference.make_outputs_fn`'s keys): at
# config.eval.ood_image_size these come from the image preprocessed at that size
# (`run_outputs`, `predict`), the logits from the run's own.
IMAGE_OUTPUTS = ("input", "blocks", "features")


def image_size(config) -> int:
  """The size, in pixels, the feature scores read images at: config.eval.ood_image_size, 0 where
  that is 0 or the run's own data.image_size (one forward pass serves logits and scores)."""
  from cxr_jax.evaluate.run import eval_setting

  size = eval_setting(config, "ood_image_size", 0)
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ValueError(f"eval.ood_image_size must be a whole number of pixels >= 0 (0: the run's "
                     f"data.image_size), got {size!r}")
  return 0 if size == int(config.data.image_size) else size


def load_stored(workdir, digest: str) -> tuple[OodFit | None, str]:
  """The fit stored in `workdir` (checkpoint.OOD_FILE) if it was made for these parameters
  (`digest`, `checkpoint.model_digest`); else None and why not."""
  from cxr_jax import checkpoint

  path = Path(workdir) / checkpoint.OOD_FILE
  if not path.is_file():
    return None, f"no out-of-distribution fit in {workdir} ({checkpoint.OOD_FILE})"
  try:
    stored = OodFit.load(path)
  except (ValueError, KeyError) as e:   # an earlier version's fit
    return None, str(e)
  if stored.model_digest != digest:
    return None, f"{path} was fitted for other parameters than this checkpoint's"
  return stored, ""


def stored_fit(workdir, digest: str, wanted: dict) -> OodFit | None:
  """The stored fit (`load_stored`) if it was also made with these settings; None otherwise."""
  stored, _ = load_stored(workdir, digest)
  if stored is None:
    return None
  wanted = dict(wanted, k=min(wanted["k"], stored.n_train))
  if any(getattr(stored, key) != value for key, value in wanted.items()):
    return None
  return stored


def run_temperature(run) -> float | None:
  """The temperature the scores divide the logits by: the run's validation fit's with
  eval.temperature_scaling, else none."""
  from cxr_jax.evaluate.run import eval_setting

  if not eval_setting(run.config, "temperature_scaling", True):
    return None
  return run.recorded_validation_fit()["temperature"]


def run_outputs(run, name, loaded=None) -> tuple[dict, np.ndarray, np.ndarray]:
  """`run.outputs` of split `name` (or of `loaded`) as the scores read them, once per run. At
  config.eval.ood_image_size (`image_size`; 0: `run.outputs` itself) what they read of the image
  (`IMAGE_OUTPUTS`: input thumbnail, pooled blocks) comes from a second forward pass over the same
  images preprocessed at that size (`run.outputs_at`), the logits and probabilities staying the
  run's size's: the model's answer is the one it was trained to give."""
  out, labels, ids = run.outputs(name, loaded)
  size = image_size(run.config)
  if not size:
    return out, labels, ids

  def compute():
    at = run.outputs_at(loaded or run.split(name), ids, size)
    return {**out, **{k: at[k] for k in IMAGE_OUTPUTS}}, labels, ids
  return run.cached(("ood_outputs", name, size), compute)


def run_fit(run) -> OodFit | str:
  """The fit of `run`'s kept model: the one stored beside its checkpoint for these parameters and
  settings, else fitted on the training split (asserted: `data.check_within`), thresholded on the
  validation split, the test split as reference, and stored (process 0). A string says why there
  is none."""
  import jax

  from cxr_jax import checkpoint, data, files

  digest = checkpoint.model_digest(run.trained.variables)
  wanted = settings(run.config, run_temperature(run))
  stored = stored_fit(run.workdir, digest, wanted)
  if stored is not None:
    return stored
  meta, splits = run.built.metadata, run.splits
  train_ids = np.unique(np.asarray(splits.get("train", ())))
  data.check_within(meta, splits, train_ids, "train")
  if not len(train_ids) or not len(splits.get("val", ())):
    return ("not fitted: no " + ("training" if not len(train_ids) else "validation") + " split "
            "(the threshold is chosen on the validation split: data.num_folds > 1)")
  (train, train_labels, _), (val, val_labels, _) = run_outputs(run, "train"), run_outputs(run, "val")
  outputs, labels, ids = run_outputs(run, "test") if len(splits.get("test", ())) else (
      jax.tree.map(lambda v: v[:0], train), train_labels[:0], np.zeros(0, int))
  reference = dict(outputs, correct=outputs["logits"].argmax(axis=1) == labels,
                   sources=meta["source"][ids])
  made = fit(train, train_labels, val, val_labels, reference=reference, model_digest=digest,
             **wanted)
  if jax.process_index() == 0:
    files.write_atomic(Path(run.workdir) / checkpoint.OOD_FILE, made.to_bytes())
  return made


def run_section(run, outputs: dict, labels, sources, *, is_reference: bool) -> dict:
  """metrics["ood"] of a set the run evaluated (`evaluate_ood` against the run's fit), or why
  there is none."""
  from cxr_jax.data.records import LABELS

  made = run.cached("ood_fit", lambda: run_fit(run))
  if isinstance(made, str):
    return dict(defined=False, why=made)
  return dict(evaluate_ood(made, outputs, labels, sources, is_reference=is_reference,
                           class_names=LABELS), defined=True)
