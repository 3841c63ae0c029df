"""Class probabilities (and optionally Grad-CAM overlays) of a trained model for new image files.

  python -m cxr_jax.predict --workdir=W IMAGE... [--cam DIR] [--which best|latest]

Each image gets the preprocessing of the run's training data (decode, CLAHE, square resize from
the saved config; normalisation of the run's pretrained weights). One JSON line per image, in
input order, on stdout: {"file", "prediction", "probs": {class: p}} (+ "cam": overlay path), or
{"file", "error"} for a file that cannot be used. The other files are still processed; the exit
status is 1 if any file failed.
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


def _parse(argv):
  parser = argparse.ArgumentParser(prog="python -m cxr_jax.predict", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained run's workdir")
  parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, DICOM...)")
  parser.add_argument("--cam", metavar="DIR", help="write Grad-CAM overlays of the predicted class here")
  parser.add_argument("--method", default="gradcam", choices=("gradcam", "gradcam++"))
  parser.add_argument("--layer", default=None, help="Grad-CAM layer (default: config.explain.layer "
                      "or block5/conv3)")
  parser.add_argument("--which", default="best", choices=("best", "latest"), help="checkpoint")
  parser.add_argument("--batch-size", type=int, default=8)
  return parser.parse_args(argv)


def load_images(files, data_config) -> tuple[dict[int, np.ndarray], dict[int, str]]:
  """Preprocessed uint8 [S, S, 1] images by input position, and the error of every failed file."""
  from cxr_jax.data.preprocess import DecodeError, PreprocessConfig, process_file

  config = PreprocessConfig.from_data_config(data_config)
  images, errors = {}, {}
  for k, file in enumerate(files):
    try:
      images[k] = process_file(file, config).image
    except FileNotFoundError:
      errors[k] = "no such file"
    except IsADirectoryError:
      errors[k] = "is a directory, not an image file"
    except DecodeError as e:
      errors[k] = str(e)
    except Exception as e:  # noqa: BLE001 - any unusable input must not stop the others
      errors[k] = f"cannot use as an image ({type(e).__name__}: {e})"
  return images, errors


def normalise(images: np.ndarray, preprocessing: str) -> np.ndarray:
  """uint8 [N, S, S, 1] -> the model's float32 [N, S, S, 3], exactly as the training pipeline."""
  from cxr_jax.data import pipeline

  return pipeline.normalise_images(images, preprocessing)


def _cam_path(cam_dir: Path, file: str, used: set) -> Path:
  stem, n = Path(file).stem, 0
  name = f"{stem}.png"
  while name in used:  # two inputs with the same name in different folders
    n += 1
    name = f"{stem}_{n}.png"
  used.add(name)
  return cam_dir / name


def predict_files(workdir, files, *, cam_dir=None, method="gradcam", layer=None, which="best",
                  batch_size=8) -> list[dict]:
  """One result dict per file, in input order (see module doc)."""
  from cxr_jax import train
  from cxr_jax.evaluate import make_predict_fn
  from cxr_jax.explain import DEFAULT_LAYER, make_cam_fn, save_overlay

  trained = train.load_trained(workdir, which=which)
  images, errors = load_images(files, trained.config.data)
  results = [{"file": str(f), "error": errors[k]} if k in errors else None
             for k, f in enumerate(files)]
  if cam_dir:
    layer = layer or (trained.config.get("explain") or {}).get("layer", DEFAULT_LAYER)
    cam_fn = make_cam_fn(trained.model, layer, method)
    Path(cam_dir).mkdir(parents=True, exist_ok=True)
  else:
    predict_fn = make_predict_fn(trained.model)
  variables = trained.variables
  order, used = sorted(images), set()
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    # Padded to a full batch: one compilation for any number of files.
    batch = np.zeros((batch_size,) + images[chunk[0]].shape, np.uint8)
    batch[:len(chunk)] = np.stack([images[k] for k in chunk])
    x = normalise(batch, trained.preprocessing)
    if cam_dir:
      out = cam_fn(variables, x, np.full(batch_size, -1, np.int32))
      probs = np.asarray(out["probs"])
    else:
      probs = np.asarray(predict_fn(variables, x))
    for row, k in enumerate(chunk):
      p = probs[row].tolist()
      results[k] = {"file": str(files[k]), "prediction": LABELS[int(np.argmax(p))],
                    "probs": dict(zip(LABELS, p, strict=True))}
      if cam_dir:
        path = _cam_path(Path(cam_dir), files[k], used)
        save_overlay(path, x[row], np.asarray(out["cam"][row]), p, LABELS,
                     heading=f"{Path(files[k]).name}: predicted {results[k]['prediction']}")
        results[k]["cam"] = str(path)
  return results


def main(argv=None) -> int:
  args = _parse(argv)
  try:
    results = predict_files(args.workdir, args.images, cam_dir=args.cam, method=args.method,
                            layer=args.layer, which=args.which, batch_size=args.batch_size)
  except (FileNotFoundError, ValueError) as e:  # the workdir or its settings, not an image
    print(f"error: {e}", file=sys.stderr)
    return 2
  for r in results:
    print(json.dumps(r), flush=True)
    if "error" in r:
      print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
  failed = sum("error" in r for r in results)
  if failed:
    print(f"{failed} of {len(results)} files could not be used", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
