"""TFDS builder: decodes and preprocesses every Record once into a single "full" split.

The builder config's name encodes the image size and a hash of everything that determines the
stored bytes (preprocessing, sources, the list of files), so a different size, CLAHE setting or
source set gets a new folder instead of a stale cache. Splits are made later from the metadata.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from cxr_jax.data import preprocess as prep
from cxr_jax.data.records import LABELS, Record, Reject, label_index

# Examples processed ahead of the writer: bounds memory at large image sizes.
_CHUNK = 64
# The only stored split; train/val/test are made from the metadata (splits.py).
SPLIT = "full"


def fingerprint(preprocess_config: prep.PreprocessConfig, sources, records, rejects) -> str:
  """Hash of everything that determines the built dataset's content."""
  files = []
  for r in records:
    size = os.path.getsize(r.path) if os.path.exists(r.path) else -1
    files.append([r.path, size, r.label, r.patient_id, r.patient_group, r.source])
  payload = dict(preprocess=preprocess_config.to_json(), sources=sorted(sources), files=files,
                 rejects=sorted([r.file, r.reason] for r in rejects))
  return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def make_builder_config(preprocess_config, sources, records, rejects) -> tfds.core.BuilderConfig:
  digest = fingerprint(preprocess_config, sources, records, rejects)
  return tfds.core.BuilderConfig(
      name=f"s{preprocess_config.image_size}_{digest[:12]}",
      description=json.dumps(dict(preprocess=preprocess_config.to_json(),
                                  sources=sorted(sources), num_files=len(records))))


class CxrDataset(tfds.core.GeneratorBasedBuilder):
  """Chest X-rays (covid / normal / pneumonia) from manifest, folder and ieee8023 sources."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def __init__(self, *, records: list[Record], preprocess_config: prep.PreprocessConfig,
               num_workers: int | None = None, **kwargs):
    self._records = list(records)
    self._preprocess_config = preprocess_config
    self._num_workers = num_workers or os.cpu_count() or 1
    # Filled while generating: files that failed to decode, and duplicates kept once.
    self.decode_rejects: list[Reject] = []
    self.duplicates: list[dict] = []
    # crop="lungs": files kept whole because their predicted lung mask failed its check.
    self.lung_fallbacks: list[dict] = []
    self.generated_metadata: list[dict] = []
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self._preprocess_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8,
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(names=LABELS),
            "id": tfds.features.Scalar(np.int64),
            "patient_id": tfds.features.Text(),
            "patient_group": tfds.features.Text(),
            "source": tfds.features.Text(),
            "file": tfds.features.Text(),
            "orig_height": tfds.features.Scalar(np.int32),
            "orig_width": tfds.features.Scalar(np.int32),
            "sha1": tfds.features.Text(),
        }),
        disable_shuffling=True,  # Examples stay in id order; the input pipeline shuffles.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Sources are local files.
    return {SPLIT: self._generate_examples()}

  def find_decode_rejects(self) -> list[Reject]:
    """Every record that would fail to decode, found without storing anything (the build's
    failure path uses it so that one run names every bad file)."""
    return [out for _, out in self._processed() if isinstance(out, Reject)]

  def _processed(self):
    """Yields (record, Processed or Reject) in record order, decoding in a thread pool."""
    config = self._preprocess_config
    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      for start in range(0, len(self._records), _CHUNK):
        chunk = self._records[start:start + _CHUNK]
        futures = [pool.submit(prep.process_file, r.path, config) for r in chunk]
        for record, future in zip(chunk, futures, strict=True):
          try:
            yield record, future.result()
          except (prep.DecodeError, OSError) as e:
            yield record, Reject(record.path, str(e) if isinstance(e, prep.DecodeError)
                                 else f"cannot read file ({e})")

  def _generate_examples(self):
    self.decode_rejects, self.duplicates, self.generated_metadata = [], [], []
    self.lung_fallbacks = []
    first_by_hash = {}
    progress = tqdm(self._processed(), total=len(self._records), unit="img",
                    desc=f"cxr_jax: preprocessing to {self._preprocess_config.image_size} px")
    for record, out in progress:
      if isinstance(out, Reject):
        self.decode_rejects.append(out)
        continue
      kept = first_by_hash.get(out.sha1)
      if kept is not None:
        self.duplicates.append(dict(
            file=record.path, label=record.label, source=record.source,
            patient_group=record.patient_group, duplicate_of=kept.path,
            duplicate_of_label=kept.label, duplicate_of_patient_group=kept.patient_group))
        continue
      first_by_hash[out.sha1] = record
      if out.lung_fallback:
        self.lung_fallbacks.append(dict(file=record.path, reason=out.lung_fallback))
      # An image in none of LABELS is stored with ClassLabel's 'no label', -1 (NO_LABEL).
      meta = dict(id=len(self.generated_metadata), label=label_index(record.label),
                  patient_id=record.patient_id, patient_group=record.patient_group,
                  source=record.source, file=record.path, orig_height=out.orig_height,
                  orig_width=out.orig_width, sha1=out.sha1)
      self.generated_metadata.append(meta)
      yield meta["id"], dict(meta, image=out.png)
