"""Class probabilities (and optionally Grad-CAM overlays) of a trained model for new image files.

  python -m cxr_jax.predict --workdir=W INPUT... [--cam DIR] [--which best|latest]
      [--dtype float32|bfloat16] [--reject-ood] [--ood-score SCORE] [--abstain]

An INPUT is an image file, a folder (every image file below it, sorted) or a reader spec such as
`manifest:PATH` or `folder:PATH` (`cxr_jax.data.readers`; its files in the reader's order). Each
image gets the preprocessing of the run's training data (decode, CLAHE, square resize from the
saved config; normalisation of the run's pretrained weights). One JSON line per image, in input
order, on stdout, written batch by batch as they are scored: {"file", "prediction", "probs":
{class: p}, "ood": {"score", "value", "threshold"}, "in_distribution": true/false, "reason",
"doubt": {"value", "threshold", "answered"}, "answer_reason"} (+ "cam": overlay path), or
{"file", "error"} for a file that cannot be used. The other files are still processed; the exit
status is 1 if any file failed. Compiled forward passes are kept in the persistent compilation
cache, so a second call starts in seconds.

"in_distribution" is false where the image's out-of-distribution score (`cxr_jax.evaluate.ood`;
config.eval.ood_score of the run, or --ood-score) exceeds the threshold its evaluation chose on the
validation split: the image is unlike the run's training images and its class probabilities are
not to be trusted. With --reject-ood such an image gets "prediction": null and no "probs".
"answered" is false where the image's doubt (the larger of its ranks among the validation images
by confidence and by the run's config.eval.ood_score) exceeds the level at which the validation images were right
config.eval.answer_accuracy of the time (95 %): an answer for a person to check, not to take; with
--abstain such an image gets no class either (selective prediction). The fit is the one the
run's evaluation stored (workdir/ood_fit.npz); prediction never refits it. A fit made at
config.eval.ood_image_size reads each image preprocessed again at that size (a second forward
pass; the class probabilities stay the run's size's).
Without one for the kept parameters, "in_distribution" is null and "reason" says what writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cxr_jax.data.records import LABELS  # noqa: E402
from cxr_jax.evaluate.ood import SCORES, OodFit, load_stored  # noqa: E402  (NumPy only)


def _parse(argv):
  parser = argparse.ArgumentParser(prog="python -m cxr_jax.predict", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained run's workdir")
  parser.add_argument("images", nargs="+", metavar="INPUT",
                      help="image files (PNG, JPEG, DICOM...), folders, or KIND:PATH reader specs")
  parser.add_argument("--cam", metavar="DIR", help="write Grad-CAM overlays of the predicted class here")
  parser.add_argument("--method", default="gradcam", choices=("gradcam", "gradcam++"))
  parser.add_argument("--layer", default=None, help="Grad-CAM layer (default: config.explain.layer "
                      "or block5/conv3)")
  parser.add_argument("--which", default="best", choices=("best", "latest"), help="checkpoint")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="computation dtype of the forward pass (default: the run's "
                      "config.model.dtype). bfloat16 is faster only on CPUs with bf16 units "
                      "(avx512_bf16, amx_bf16); its probabilities differ from float32's by "
                      "bfloat16 rounding (tests/test_bf16.py)")
  parser.add_argument("--reject-ood", action="store_true", help="no class for images flagged out "
                      "of distribution (prediction null, probs left out)")
  parser.add_argument("--ood-score", default=None, choices=SCORES,
                      help="the out-of-distribution score that flags (default: the run's "
                      "config.eval.ood_score)")
  parser.add_argument("--abstain", action="store_true", help="no class for images not answered: "
                      "less familiar or less confident than the validation images that were right "
                      "config.eval.answer_accuracy of the time (prediction null, probs left out)")
  return parser.parse_args(argv)


def expand_inputs(inputs) -> list[str]:
  """Files of each INPUT, in order: the file itself, a folder's image files below it (sorted), or
  a reader spec's usable records, then its rejected rows (so they get their error line)."""
  from cxr_jax.data import readers

  files = []
  for item in map(str, inputs):
    kind = item.split(":", 1)[0]
    if ":" in item and kind in readers.KINDS:
      scan = readers.read_source(item)
      files += [r.path for r in scan.records] + [r.file for r in scan.rejects]
    elif Path(item).is_dir():
      files += sorted(str(p) for p in Path(item).rglob("*")
                      if p.suffix.lower() in readers.IMAGE_SUFFIXES and p.is_file())
    else:
      files.append(item)
  return files


def load_images(files, data_config, image_size: int = 0
                ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
  """Preprocessed uint8 [S, S, 1] images by input position (S: data_config's image_size, or
  `image_size` where given), and the error of every failed file. Files are decoded on one thread
  per core (OpenCV releases the GIL while it decodes and resizes)."""
  import dataclasses
  from concurrent.futures import ThreadPoolExecutor

  from cxr_jax.data.preprocess import PreprocessConfig

  config = PreprocessConfig.from_data_config(data_config)
  if image_size:
    config = dataclasses.replace(config, image_size=int(image_size))
  with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1) or 1) as pool:
    done = list(pool.map(lambda file: _load_one(file, config), files))
  images = {k: image for k, (image, _) in enumerate(done) if image is not None}
  errors = {k: error for k, (_, error) in enumerate(done) if error is not None}
  return images, errors


def _load_one(file, config) -> tuple[np.ndarray | None, str | None]:
  from cxr_jax.data.preprocess import DecodeError, process_file

  try:
    return process_file(file, config).image, None
  except FileNotFoundError:
    return None, "no such file"
  except IsADirectoryError:
    return None, "is a directory, not an image file"
  except DecodeError as e:
    return None, str(e)
  except Exception as e:  # noqa: BLE001 - any unusable input must not stop the others
    return None, f"cannot use as an image ({type(e).__name__}: {e})"


def _cam_path(cam_dir: Path, file: str, used: set) -> Path:
  stem, n = Path(file).stem, 0
  name = f"{stem}.png"
  while name in used:  # two inputs with the same name in different folders
    n += 1
    name = f"{stem}_{n}.png"
  used.add(name)
  return cam_dir / name


def predict_files(workdir, files, **kwargs) -> list[dict]:
  """One result dict per file, in input order (see module doc); `iter_predictions`' arguments."""
  return list(iter_predictions(workdir, files, **kwargs))


def stored_fit(workdir, trained) -> tuple[OodFit | None, str]:
  """The out-of-distribution fit the run's evaluation stored for these parameters
  (`ood.load_stored`), or None and why there is none (the "reason" of every prediction then)."""
  from cxr_jax import checkpoint

  fit, why = load_stored(workdir, checkpoint.model_digest(trained.variables))
  return fit, why and f"{why}: python launch.py --mode=evaluate --workdir={workdir} fits and stores it"


def iter_predictions(workdir, files, *, cam_dir=None, method="gradcam", layer=None, which="best",
                     batch_size=16, dtype=None, reject_ood=False, ood_score=None, abstain=False):
  """Yields one result dict per file, in input order, a batch at a time. Batch i+1 is decoded
  while the model runs on batch i (JAX dispatches asynchronously), so decoding and the forward
  pass overlap and results stream over any number of files, one batch behind the decoding.
  `reject_ood`: no class for images flagged out of distribution, `abstain`: none for images not
  answered (either: ValueError without a stored fit); `ood_score`: the score that flags (default:
  the fit's)."""
  from cxr_jax import checkpoint
  from cxr_jax.data.preprocess import normalise_images
  from cxr_jax.evaluate import compute_variables, make_outputs_fn
  from cxr_jax.explain import DEFAULT_LAYER, make_cam_fn

  trained = checkpoint.load_trained(workdir, which=which, dtype=dtype)
  flags = Flags(workdir, trained, reject_ood, ood_score, abstain)
  size = int(trained.config.data.image_size)
  # Every batch is padded to one shape (one compilation for any number of files); fewer files than
  # a batch get the next power of two instead, so one image runs a forward pass of one, not of 16.
  batch_size = min(batch_size, 1 << max(len(files) - 1, 0).bit_length())
  outputs_fn = make_outputs_fn(trained.model)
  variables = compute_variables(trained.model, trained.variables)  # rounded once, not per batch
  run = lambda x: outputs_fn(variables, x)
  if cam_dir:
    layer = layer or (trained.config.get("explain") or {}).get("layer", DEFAULT_LAYER)
    cam_fn = make_cam_fn(trained.model, layer, method)
    Path(cam_dir).mkdir(parents=True, exist_ok=True)
    run = lambda x: {**outputs_fn(variables, x),
                     "cam": cam_fn(variables, x, np.full(batch_size, -1, np.int32))["cam"]}

  def batch_of(names, at_size):
    """(normalised images [batch_size, S, S, 3] as the training batches, errors by position)."""
    images, errors = load_images(names, trained.config.data, at_size)
    batch = np.zeros((batch_size, at_size or size, at_size or size, 1), np.uint8)
    for k, image in images.items():
      batch[k] = image
    return normalise_images(batch, trained.preprocessing), errors, bool(images)

  pending, used, ood_size = None, set(), None
  for start in range(0, len(files), batch_size):
    names = [str(f) for f in files[start:start + batch_size]]
    x, errors, any_image = batch_of(names, 0)
    out = run(x) if any_image else None  # dispatched, not waited for
    if ood_size is None:   # known once the fit is loaded, beside the first batch's pass
      ood_size = flags.image_size()
      blocks_fn = make_outputs_fn(trained.model, head=False) if ood_size else None
    if ood_size and out is not None:
      # The fit reads the image at its own size (config.eval.ood_image_size): decode again.
      x_ood, errors_ood, _ = batch_of(names, ood_size)
      out = {**out, **blocks_fn(variables, x_ood)}
      errors = {**errors_ood, **errors}
    if pending:
      yield from _results(*pending, cam_dir, used, flags)
    pending = (names, errors, x, out)
  if pending:
    yield from _results(*pending, cam_dir, used, flags)


class Flags:
  """The out-of-distribution fields of each prediction from the stored fit (`stored_fit`). The
  fit is loaded and matched to the parameters (hashing them: ~0.3 s on 2 cores) on a thread,
  beside the first batch's decoding and compilation; a missing fit with --reject-ood or --abstain
  fails at once, one for other parameters before the first result."""

  def __init__(self, workdir, trained, reject: bool, score: str | None, abstain: bool = False):
    from concurrent.futures import ThreadPoolExecutor

    from cxr_jax import checkpoint

    self.reject, self.score, self.abstain = reject, score, abstain
    self.needs = "--reject-ood" if reject else "--abstain" if abstain else None
    if self.needs and not (Path(workdir) / checkpoint.OOD_FILE).is_file():
      raise ValueError(f"{self.needs}: {stored_fit(workdir, trained)[1]}")
    pool = ThreadPoolExecutor(1)
    self._pending = pool.submit(stored_fit, workdir, trained)
    pool.shutdown(wait=False)   # the task runs on; `fit` waits for it

  def fit(self) -> tuple[OodFit | None, str]:
    fit, why = self._pending.result()
    if self.needs and fit is None:
      raise ValueError(f"{self.needs}: {why}")
    return fit, why

  def image_size(self) -> int:
    """The size the fit's scores read images at (`OodFit.image_size`; 0: the run's)."""
    fit, _ = self.fit()
    return fit.image_size if fit is not None else 0

  def of_batch(self, out) -> list[dict]:
    """Each row's {"ood", "in_distribution", "reason", "doubt", "answer_reason"} from the model's
    outputs on a batch."""
    fit, why = self.fit()
    if fit is None:
      return [{"in_distribution": None, "reason": why}] * len(out["probs"])
    scores = fit.scores({k: out[k] for k in ("logits", "features", "blocks", "input")})
    return [fit.verdict(scores, k, self.score) for k in range(len(out["probs"]))]


def _results(names, errors, x, out, cam_dir, used, flags: Flags):
  probs = None if out is None else np.asarray(out["probs"])
  verdicts = None if out is None else flags.of_batch(out)
  for k, file in enumerate(names):
    if k in errors:
      yield {"file": file, "error": errors[k]}
      continue
    p = probs[k].tolist()
    result = {"file": file, "prediction": LABELS[int(np.argmax(p))],
              "probs": dict(zip(LABELS, p, strict=True)), **verdicts[k]}
    if ((flags.reject and not result["in_distribution"])
        or (flags.abstain and not result["doubt"]["answered"])):
      result["prediction"] = None
      del result["probs"]
    if cam_dir:
      from cxr_jax.explain import save_overlay  # matplotlib: only for overlays

      path = _cam_path(Path(cam_dir), file, used)
      save_overlay(path, x[k], np.asarray(out["cam"][k]), p, LABELS,
                   heading=f"{Path(file).name}: predicted {result['prediction']}")
      result["cam"] = str(path)
    yield result


def main(argv=None) -> int:
  args = _parse(argv)
  from cxr_jax import host_memory, paths

  host_memory.configure("auto")  # before JAX starts its threads, as launch.py
  paths.use_compilation_cache()
  failed = total = 0
  try:
    for r in iter_predictions(args.workdir, expand_inputs(args.images), cam_dir=args.cam,
                              method=args.method, layer=args.layer, which=args.which,
                              batch_size=args.batch_size, dtype=args.dtype,
                              reject_ood=args.reject_ood, ood_score=args.ood_score,
                              abstain=args.abstain):
      print(json.dumps(r), flush=True)
      total += 1
      if "error" in r:
        failed += 1
        print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
  except (FileNotFoundError, ValueError) as e:  # the workdir, its settings or a spec, not an image
    print(f"error: {e}", file=sys.stderr)
    return 2
  if failed:
    print(f"{failed} of {total} files could not be used", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
