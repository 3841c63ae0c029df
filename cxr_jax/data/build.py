"""build_dataset: read the sources, build (or reuse) the TFDS dataset, report rejects."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_jax import files, paths
from cxr_jax.data import readers
from cxr_jax.data.preprocess import PreprocessConfig
from cxr_jax.data.records import LABELS, NO_LABEL
from cxr_jax.data.tfds_builder import SPLIT, CxrDataset, make_builder_config

REPORT_NAME = "rejects.json"         # in the builder config's folder, rewritten on every build
_BUILD_LOG_NAME = "cxr_build.json"   # in the version folder, written once with the dataset
_STRING_FIELDS = ("patient_id", "patient_group", "source", "file", "sha1")


class DataBuildError(RuntimeError):
  """The sources cannot make a usable dataset (too many rejects, an empty class...)."""

  def __init__(self, message: str, report_path: Path | None = None):
    super().__init__(message)
    self.report_path = report_path  # The JSON report naming every rejected file.


@dataclasses.dataclass
class BuiltDataset:
  """A built TFDS dataset with its per-example metadata (arrays indexed by example id).

  Attributes:
    name: builder and config, e.g. 'cxr_dataset/s224_0123456789ab' (the hash covers content).
    version: name plus builder version, e.g. 'cxr_dataset/s224_0123456789ab:1.0.0'; record it
      with runs.
    data_dir: the TFDS data dir holding it.
    builder: the TFDS builder.
    metadata: id, label (index into LABELS, NO_LABEL = -1 for an image in none of them),
      patient_id, patient_group, source, file, orig_height, orig_width, sha1, findings; numpy
      arrays, metadata[k][i] belongs to example id i. patient_group joins the groups of
      duplicate files and of equal patient ids (see merge_patient_groups), so it can differ
      from the stored TFDS feature, which is the source's own. findings is the source's finding
      text ("" where unknown), read from the sources on every call rather than stored: it does
      not change the images, so builds made before it existed stay valid.
    rejects: [{file, reason}] for every source file that could not be used.
    duplicates: [{file, duplicate_of, ...}] files with the same content as a kept file.
    excluded: [{file, reason}] files left out by design (lateral views, ignored folders...).
    report_path: the JSON report of rejects, duplicates and exclusions.
    image_size: side of the stored square images.
  """
  name: str
  version: str
  data_dir: Path
  builder: CxrDataset
  metadata: dict[str, np.ndarray]
  rejects: list[dict]
  duplicates: list[dict]
  excluded: list[dict]
  report_path: Path
  image_size: int

  @property
  def num_examples(self) -> int:
    return len(self.metadata["id"])

  def as_dataset(self, decode_image: bool = True) -> tf.data.Dataset:
    """Every example, in id order, as a dict of tensors (image uint8 [H, W, 1], label, id...)."""
    decoders = None if decode_image else {"image": tfds.decode.SkipDecoding()}
    return self.builder.as_dataset(split=SPLIT, shuffle_files=False, decoders=decoders)


def default_sources() -> tuple[str, ...]:
  return (f"manifest:{paths.default_data_root()}",)


def source_specs(sources) -> list[str]:
  """data_config.sources as a list of canonical specs; a string (command-line override) may
  hold several, comma-separated: 'manifest:/a,folder:/b'. Empty means the default source."""
  if isinstance(sources, str):
    sources = [s for s in re.split(rf",(?=(?:{'|'.join(readers.KINDS)}):)", sources) if s]
  return [readers.canonical_source(s) for s in (tuple(sources) or default_sources())]


def metadata_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
  """Per-example dicts -> dict of numpy arrays, ordered by id."""
  rows = sorted(rows, key=lambda r: r["id"])
  out = {"id": np.array([r["id"] for r in rows], np.int64),
         "label": np.array([r["label"] for r in rows], np.int32),
         "orig_height": np.array([r["orig_height"] for r in rows], np.int32),
         "orig_width": np.array([r["orig_width"] for r in rows], np.int32)}
  for key in _STRING_FIELDS:
    out[key] = np.array([r[key] for r in rows], dtype=str)
  if not np.array_equal(out["id"], np.arange(len(rows))):
    raise DataBuildError("Example ids are not 0..N-1; delete the dataset folder and rebuild.")
  return out


def merge_patient_groups(groups: np.ndarray, links) -> np.ndarray:
  """Joins linked patient groups (duplicate images, equal patient ids; union-find); each is named
  by its smallest member, so the result does not depend on the order of links."""
  parent = {}

  def root(g):
    while parent.get(g, g) != g:
      g = parent[g]
    return g

  for a, b in links:
    ra, rb = root(a), root(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)
  return np.array([root(g) for g in groups], dtype=str) if parent else groups


def same_patient_links(patient_ids, groups) -> list[tuple[str, str]]:
  """(group, group) pairs that hold the same patient id. Ids carry their source's prefix, so an
  equal id is the same person, e.g. cxr3's and a ChestX-ray14 download's 'nih:1280'."""
  first, links = {}, []
  for patient, group in zip(patient_ids, groups, strict=True):
    seen = first.setdefault(patient, group)
    if seen != group:
      links.append((seen, group))
  return links


def findings_by_file(records, file_names) -> np.ndarray:
  """Each example's findings text, from the first record of its file (the one the build kept)."""
  by_file = {}
  for r in records:
    by_file.setdefault(r.path, r.findings)
  return np.array([by_file.get(f, "") for f in file_names], dtype=str)


def _check_usable(num_files: int, rejects: list[dict], label_counts, max_fraction: float,
                  report_path: Path, every_class: bool = True) -> None:
  """Fails with a clear message on too many rejects, or on an empty class when `every_class`."""
  fraction = len(rejects) / max(num_files, 1)
  if fraction > max_fraction:
    first = "\n".join(f"  {r['file']}: {r['reason']}" for r in rejects[:10])
    raise DataBuildError(
        f"{len(rejects)} of {num_files} source files were rejected ({fraction:.1%} > "
        f"max_reject_fraction={max_fraction}). Fix the files or the sources, or raise "
        f"data.max_reject_fraction. Report: {report_path}. First rejects:\n{first}", report_path)
  empty = [label for label in LABELS if not label_counts.get(label)]
  if not sum(label_counts.values()):
    raise DataBuildError(f"No usable labelled image in the sources. Report: {report_path}.",
                         report_path)
  if empty and every_class:
    raise DataBuildError(
        f"Class(es) {empty} have no usable images in the sources (counts: {dict(label_counts)}). "
        f"Check the labels / class folders of the sources. Report: {report_path}.", report_path)


def _prepare(builder: CxrDataset) -> dict:
  """Generates the dataset unless a complete build exists; returns its build log."""
  build_log_path = Path(builder.data_dir) / _BUILD_LOG_NAME
  # (is_prepared() logs a warning for a missing folder, hence the is_dir() first.)
  prepared = Path(builder.data_dir).is_dir() and builder.is_prepared()
  if prepared and build_log_path.is_file():
    return json.loads(build_log_path.read_text())
  logging.info("Building %s/%s into %s", builder.name, builder.builder_config.name,
               builder.data_dir)
  # A dataset without its build log (interrupted build) is regenerated, not trusted.
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if prepared
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  build_log = dict(rejects=[r.to_json() for r in builder.decode_rejects],
                   duplicates=builder.duplicates, metadata=builder.generated_metadata,
                   lung_fallbacks=builder.lung_fallbacks)
  files.write_json(build_log_path, build_log)
  return build_log


def build_dataset(data_config, *, num_workers: int | None = None,
                  every_class: bool = True) -> BuiltDataset:
  """Builds (or reuses) the dataset described by data_config; see cxr_jax/config.py `data`.

  Raises DataBuildError (after writing the report) when more than
  data_config.max_reject_fraction of the source files are rejected, when no image is usable, or
  when a class is empty and `every_class` (training needs every class; an external evaluation set
  often holds one or two).
  """
  sources = source_specs(data_config.sources)
  data_dir = Path(data_config.data_dir or paths.tfds_data_dir()).expanduser()
  scan = readers.read_sources(sources)
  preprocess_config = PreprocessConfig.from_data_config(data_config).with_lungs()
  config = make_builder_config(preprocess_config, sources, scan.records, scan.rejects)
  builder = CxrDataset(config=config, data_dir=str(data_dir), records=scan.records,
                       preprocess_config=preprocess_config, num_workers=num_workers)
  version = f"{builder.name}/{config.name}:{builder.version}"
  report_path = Path(builder.data_dir).parent / REPORT_NAME
  num_files = len(scan.records) + len(scan.rejects)
  report = dict(dataset=version, sources=sources, preprocess=preprocess_config.to_json(),
                num_files=num_files, rejects=[r.to_json() for r in scan.rejects], duplicates=[],
                excluded=[r.to_json() for r in scan.excluded])
  files.write_json(report_path, report)  # Rejects found so far, in case the checks below fail.
  label_counts = collections.Counter(r.label for r in scan.records)
  try:
    _check_usable(num_files, report["rejects"], label_counts, data_config.max_reject_fraction,
                  report_path, every_class)
  except DataBuildError:
    # Fails before building: decode the rest anyway so this one run names every bad file,
    # not only the missing / mislabelled ones (the undecodable would surface in the next run).
    report["rejects"] += [r.to_json() for r in builder.find_decode_rejects()]
    files.write_json(report_path, report)
    _check_usable(num_files, report["rejects"], label_counts, data_config.max_reject_fraction,
                  report_path, every_class)
    raise

  build_log = _prepare(builder)
  metadata = metadata_arrays(build_log["metadata"])
  metadata["findings"] = findings_by_file(scan.records, metadata["file"])
  # A duplicate file is the same patient, as is an equal patient id: their groups join, so that
  # the patient's other images land in the same split.
  links = [(d["patient_group"], d["duplicate_of_patient_group"]) for d in build_log["duplicates"]]
  links += same_patient_links(metadata["patient_id"], metadata["patient_group"])
  metadata["patient_group"] = merge_patient_groups(metadata["patient_group"], links)
  report["rejects"] += build_log["rejects"]
  report["duplicates"] = build_log["duplicates"]
  report["lung_fallbacks"] = build_log.get("lung_fallbacks", [])
  report["num_examples"] = len(metadata["id"])
  files.write_json(report_path, report)
  label_counts = collections.Counter(LABELS[i] for i in metadata["label"] if i != NO_LABEL)
  _check_usable(num_files, report["rejects"], label_counts, data_config.max_reject_fraction,
                report_path, every_class)
  return BuiltDataset(name=version.rsplit(":", 1)[0], version=version, data_dir=data_dir,
                      builder=builder, metadata=metadata, rejects=report["rejects"],
                      duplicates=report["duplicates"], excluded=report["excluded"],
                      report_path=report_path, image_size=preprocess_config.image_size)
