"""The knn score of the pooled block outputs with the run's model applied at a larger input size
than it was trained at (stop 46): do the blocks see, at 192 or 256 px, what tells a collection the
model never saw from its own? The convolutions take any size and the quick start's head pools
globally, so the same parameters read the same films at 128 (the run's size), 192 and 256 px; the
data pipeline preprocesses each size from the original files (CLAHE, resize) as for a run of that
size. Development set cxr-plus, 300 images per source drawn with seed 0 (the 256 px pass runs at
~2 images/s on 2 cores); cxr-external (all 827) printed for the report. The seen-collection rows:
blocks 1-3 of an FT2 model are ImageNet's, frozen, so a model trained on cxr3 + cxr-plus scores
with the same features against a bank that also holds the cxr-plus images (the 600, and
at the largest size 1,100 further SIIM images); and leave-one-source-out
needs no retraining for them: each cxr3 source held out of the bank (training split) and of the
threshold (validation split) and told from the other sources' test images. The control: the
cxr3 test split's own films saved again as cxr-plus's copies were made (squashed to 256 x 256 as
SIIM's, to 224 x 224 as Kermany's; JPEG quality 95, written under SCRATCH, never into the
repository) and scored like another collection: a score that flags them reads how the file was
made, not the film.

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/resolution.py WORKDIR SCRATCH \
      128 192 256 > results/ood_quickstart_128px/resolution.md

computes SCRATCH/moments_SIZE.npz where missing (the run's train / val / test splits, cxr-plus's
subsample, cxr-external), SCRATCH/control_SIZE.npz (the resaved test films) and, at the largest
size, SCRATCH/more_siim_SIZE.npz (1,100 further SIIM images for the seen-collection bank), then
writes the tables.
"""
import csv
import os
import sys
from pathlib import Path

import numpy as np

from cxr_jax import paths
from cxr_jax.evaluate import ood

# $CXR_PLUS and $CXR_EXTERNAL (as the Makefile's) override the folders beside the repository.
PLUS = f"manifest:{paths.default_plus_root()}"
EXTERNAL = "manifest:" + os.environ.get("CXR_EXTERNAL",
                                        str(paths.default_plus_root().parent / "cxr-external"))
PER_SOURCE = 300
MORE_SIIM = 1100   # with the 300: ~ the SIIM images of a multi-source run's training split


def resave_test_split(workdir: Path, scratch: Path) -> list[str]:
  """The run's test films saved again as cxr-plus's copies were made; their manifest specs."""
  import cv2

  from cxr_jax.data.records import LABELS
  from cxr_jax.evaluate.run import LoadedRun

  run = LoadedRun.from_workdir(workdir)
  meta, ids = run.built.metadata, run.split("test").ids
  specs = []
  for name, side in (("as-siim-256", 256), ("as-kermany-224", 224)):
    root = scratch / name
    rows = [("file", "label", "patient_id", "patient_group", "source", "width", "height")]
    for i in ids:
      film = cv2.imread(str(meta["file"][i]), cv2.IMREAD_GRAYSCALE)
      if film is None:
        raise FileNotFoundError(f"{meta['file'][i]}: not readable as an image")
      out = root / f"{i}.jpg"
      out.parent.mkdir(parents=True, exist_ok=True)
      cv2.imwrite(str(out), cv2.resize(film, (side, side), interpolation=cv2.INTER_AREA),
                  [cv2.IMWRITE_JPEG_QUALITY, 95])
      rows.append((out.name, LABELS[meta["label"][i]], meta["patient_id"][i],
                   meta["patient_group"][i], f"{meta['source'][i]} {name}", side, side))
    with open(root / "manifest.csv", "w", newline="") as f:
      csv.writer(f, lineterminator="\n").writerows(rows)
    specs.append(f"manifest:{root}")
  return specs


def plus_ids(ids, sources, more_siim: int = 0) -> np.ndarray:
  """cxr-plus's development subsample: PER_SOURCE images per source (seed 0); with `more_siim`,
  instead that many other SIIM images, drawn next (a bank the size of a multi-source run's
  training share of SIIM)."""
  rng = np.random.default_rng(0)
  drawn = np.sort(np.concatenate([rng.choice(ids[sources == s], PER_SOURCE, replace=False)
                                  for s in sorted(set(sources))]))
  if not more_siim:
    return drawn
  rest = np.setdiff1d(ids[sources == "siim-fisabio-rsna"], drawn)
  return np.sort(rng.choice(rest, more_siim, replace=False))


def extract(workdir: Path, out: Path, size: int, specs, draw=None,
            splits=("train", "val", "test")) -> None:
  """Every block's pooled output ("blockN_mean", `inference.make_outputs_fn`'s: what the product's
  scores read) and the logits of the run's model at `size` px, on its `splits` and on `specs`
  (`draw`: {spec: fn(ids, sources) -> the ids to use})."""
  from cxr_jax import checkpoint, data
  from cxr_jax.data.records import NO_LABEL
  from cxr_jax.evaluate import external, inference
  from cxr_jax.evaluate.run import LoadedRun, LoadedSplit, data_batches

  trained = checkpoint.load_trained(workdir)
  config = trained.config.copy_and_resolve_references()
  with config.unlocked():
    config.data.image_size = size
  run = LoadedRun(workdir, trained, config)
  arrays = {}

  def over(tag, loaded):
    outputs, labels, ids = inference.run_batches(lambda x: run.outputs_fn(run.variables, x),
                                                 data_batches(loaded, run.batch_size))
    arrays.update({f"{tag}/{name}_mean": v for name, v in outputs["blocks"].items()})
    arrays[f"{tag}/logits"] = outputs["logits"]
    arrays[f"{tag}/labels"] = labels
    arrays[f"{tag}/sources"] = np.asarray(loaded.built.metadata["source"][ids]).astype(str)
    print(size, tag, len(labels), file=sys.stderr, flush=True)

  for split in splits:
    over(split, run.split(split))
  for spec in specs:
    cfg = external.external_data_config(config, spec)
    built = data.build_dataset(cfg.data, every_class=False)
    meta = built.metadata
    ids = meta["id"][meta["label"] != NO_LABEL]
    if spec in (draw or {}):
      ids = draw[spec](ids, np.asarray(meta["source"][ids]).astype(str))
    over(external.external_name(spec), LoadedSplit(run.trained, cfg, built, ids))
  np.savez(out, **arrays)


def pooled_rows(get, tag: str, blocks) -> np.ndarray:
  """knn_blocks' rows (`ood.block_rows`) of the pooled outputs of `blocks` of set `tag`."""
  return ood.block_rows({b: get(tag, f"block{b}_mean") for b in blocks}, blocks)


def tables(z, control, size: int, more=None) -> None:
  """`more`: the cache of the further SIIM images for the seen-collection bank (or None)."""
  get = lambda t, k: (control if t.startswith("as-") else z)[f"{t}/{k}"]
  resaved = sorted({k.split("/")[0] for k in control.files})
  groups = [(t, s, get(t, "sources") == s) for t in ("cxr-plus", "cxr-external")
            for s in sorted(set(get(t, "sources")))]
  groups += [(t, "cxr3 test " + t, slice(None)) for t in resaved]
  tags = ["val", "test", "cxr-plus", "cxr-external", *resaved]
  rows = lambda t, blocks: pooled_rows(get, t, blocks)
  print(f"\n### {size} px\n")
  print("| knn (k=10) over the pooled means of blocks | " +
        " | ".join(f"{t}: {s}" if t.startswith("cxr") else s for t, s, _ in groups)
        + " | test flagged |")
  print("|" + " --- |" * (len(groups) + 2))
  for blocks in ((1,), (2,), (3,), (4,), (5,), (1, 2), (1, 2, 3), (1, 2, 3, 4, 5)):
    bank = rows("train", blocks)
    sc = {t: ood.knn_score(rows(t, blocks), bank, 10) for t in tags}
    thr = ood.threshold_keeping(sc["val"], 0.95)
    cells = [f"{ood.auroc(sc['test'], sc[t][m]):.3f} ({100 * np.mean(sc[t][m] > thr):.0f} %)"
             for t, _, m in groups]
    print(f"| {'-'.join(map(str, (blocks[0], blocks[-1]))) if len(blocks) > 1 else blocks[0]} | "
          + " | ".join(cells) + f" | {100 * np.mean(sc['test'] > thr):.0f} % |")
  # Which of cxr3's own collections SIIM resembles (blocks 1-3): AUROC of each test source
  # against cxr-plus SIIM, and the seen-collection check.
  blocks = (1, 2, 3)
  bank = rows("train", blocks)
  siim = get("cxr-plus", "sources") == "siim-fisabio-rsna"
  test_src = get("test", "sources")
  s_test = ood.knn_score(rows("test", blocks), bank, 10)
  s_siim = ood.knn_score(rows("cxr-plus", blocks), bank, 10)[siim]
  print("\nBlocks 1-3: AUROC of cxr-plus SIIM against each source of the test split: " + ", ".join(
      f"{s} ({int(np.sum(test_src == s))}) {ood.auroc(s_test[test_src == s], s_siim):.3f}"
      for s in sorted(set(test_src))) + ".")
  banks = {"the 600 cxr-plus images": np.concatenate([bank, rows("cxr-plus", blocks)])}
  if more is not None:   # the development subsample's SIIM figure on 1,100 images it did not hold
    extra = pooled_rows(lambda t, k: more[f"{t}/{k}"], "cxr-plus", blocks)
    thr = ood.threshold_keeping(ood.knn_score(rows("val", blocks), bank, 10), 0.95)
    s_extra = ood.knn_score(extra, bank, 10)
    print(f"Blocks 1-3, the {len(extra)} further cxr-plus SIIM images: AUROC "
          f"{ood.auroc(s_test, s_extra):.3f} ({100 * np.mean(s_extra > thr):.0f} % flagged).")
    banks[f"those and {len(extra)} further SIIM images"] = np.concatenate(
        [banks["the 600 cxr-plus images"], extra])
  ext = get("cxr-external", "sources")
  for what, seen in banks.items():
    sc = {t: ood.knn_score(rows(t, blocks), seen, 10) for t in ("val", "test", "cxr-external")}
    thr = ood.threshold_keeping(sc["val"], 0.95)
    print(f"Blocks 1-3 against a bank that also holds {what} (a model trained on their "
          f"collections): test flagged {100 * np.mean(sc['test'] > thr):.0f} %, " + ", ".join(
              f"cxr-external {s} flagged {100 * np.mean(sc['cxr-external'][ext == s] > thr):.0f} "
              f"% (AUROC {ood.auroc(sc['test'], sc['cxr-external'][ext == s]):.3f})"
              for s in sorted(set(ext))) + ".")

  for blocks in ((1, 2), (1, 2, 3)):
    loso(get, blocks)


def loso(get, blocks) -> None:
  """`blocks` (ImageNet's, frozen in FT2: no model saw the held-out source through them) with each
  cxr3 source held out of the bank and threshold: AUROC against the others' test images."""
  split_rows = {t: pooled_rows(get, t, blocks) for t in ("train", "val", "test")}
  src = {t: get(t, "sources") for t in split_rows}
  cells, aurocs = [], []
  for s in sorted(set(src["train"])):
    bank = split_rows["train"][src["train"] != s]
    held = ood.knn_score(np.concatenate([split_rows[t][src[t] == s] for t in src]), bank, 10)
    rest = ood.knn_score(split_rows["test"][src["test"] != s], bank, 10)
    thr = ood.threshold_keeping(ood.knn_score(split_rows["val"][src["val"] != s], bank, 10), 0.95)
    aurocs.append(ood.auroc(rest, held))
    cells.append(f"{s} {aurocs[-1]:.3f} ({100 * np.mean(held > thr):.0f} % flagged, "
                 f"{100 * np.mean(rest > thr):.0f} % of the rest's test)")
  print(f"Blocks {blocks[0]}-{blocks[-1]}, each cxr3 source held out: {'; '.join(cells)}; mean "
        f"{np.mean(aurocs):.3f}, worst {np.min(aurocs):.3f}.")


if __name__ == "__main__":
  workdir, scratch = Path(sys.argv[1]), Path(sys.argv[2])
  scratch.mkdir(parents=True, exist_ok=True)
  resaved = None   # the resaved films' specs, written where a control cache is missing
  print("AUROC against the run's test split (share flagged at the threshold keeping 95 % of the "
        f"validation split). cxr-plus: {PER_SOURCE} images per source (seed 0); the last columns "
        "are the test split's own films saved again as SIIM's and Kermany's copies were made.")
  for size in map(int, sys.argv[3:]):
    main, control = scratch / f"moments_{size}.npz", scratch / f"control_{size}.npz"
    if not main.exists():
      extract(workdir, main, size, (PLUS, EXTERNAL), draw={PLUS: plus_ids})
    if not control.exists():
      resaved = resaved or resave_test_split(workdir, scratch)
      extract(workdir, control, size, resaved, splits=())
    more = None
    if size == max(map(int, sys.argv[3:])):   # the seen-collection bank at the largest size
      more = scratch / f"more_siim_{size}.npz"
      if not more.exists():
        extract(workdir, more, size, (PLUS,), draw={PLUS: lambda i, s: plus_ids(i, s, MORE_SIIM)},
                splits=())
      more = np.load(more)
    tables(np.load(main), np.load(control), size, more)
