"""Readers: turn a source spec ("kind:PATH") into Records, without decoding any image.

Kinds:
  manifest:PATH   a cxr3-style manifest.csv (PATH is the csv or the folder holding it), columns
                  file, label, patient_id, patient_group (optional), source (optional).
                  Map other label names with ';NAME=label' suffixes and leave rows out with
                  ';NAME=' (e.g. 'manifest:/data/x;COVID-19=covid;Lung Opacity=').
  folder:PATH     one folder per class (Kaggle COVID-19 Radiography Database, Kermany chest_xray/);
                  the nearest enclosing folder whose name is in the class map gives the label.
                  Override the map with ';FOLDER=label' suffixes, and leave a folder out with
                  ';FOLDER=' (e.g. 'folder:/data/kaggle;Lung_Opacity=;Viral Pneumonia=pneumonia').
  ieee8023:PATH   the COVID-19 image data collection (metadata.csv and its images folder);
                  frontal X-rays only, finding -> label.
  nih:PATH        NIH ChestX-ray14: Data_Entry_2017*.csv in PATH (or PATH is the csv) and the
                  PNGs anywhere below it; "No Finding" -> normal, any "Pneumonia" -> pneumonia,
                  other images get no 3-class label ("") and are kept for the findings task.

Files that cannot be used are returned as rejects (they count against max_reject_fraction);
files left out by design (lateral views, CT, findings outside the three classes, ignored class
folders) are returned as excluded. Nothing is dropped without a reason.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from pathlib import Path

from cxr_jax.data.findings import NO_FINDING, parse_findings
from cxr_jax.data.records import LABELS, Record, Reject

KINDS = ("manifest", "folder", "ieee8023", "nih")
NIH_SOURCE = "nih-chestxray14"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")

# Folder names (lower case) -> label; None leaves the folder out (e.g. Kaggle's segmentation masks).
DEFAULT_CLASS_MAP = {
    "covid": "covid", "covid-19": "covid", "covid19": "covid",
    "normal": "normal",
    "pneumonia": "pneumonia", "viral pneumonia": "pneumonia", "bacterial pneumonia": "pneumonia",
    "lung_opacity": None, "lung opacity": None, "masks": None,
}

# ieee8023 findings before the collection switched to "Pneumonia/<kind>/<pathogen>" strings.
_IEEE_LEGACY_PNEUMONIA = {
    "sars", "mers", "streptococcus", "pneumocystis", "chlamydophila", "e.coli", "klebsiella",
    "legionella", "varicella", "influenza", "herpes", "aspergillosis", "nocardia", "mycoplasma",
    "staphylococcus", "mycoplasma bacterial pneumonia", "lipoid", "pneumonia",
}


@dataclasses.dataclass
class SourceScan:
  """What readers found: usable records, rejected files and files excluded by design."""
  records: list[Record] = dataclasses.field(default_factory=list)
  rejects: list[Reject] = dataclasses.field(default_factory=list)
  excluded: list[Reject] = dataclasses.field(default_factory=list)

  def extend(self, other: SourceScan) -> None:
    self.records.extend(other.records)
    self.rejects.extend(other.rejects)
    self.excluded.extend(other.excluded)


def parse_source(spec: str) -> tuple[str, Path, dict[str, str]]:
  """Splits 'kind:PATH[;key=value...]' into (kind, absolute path, options)."""
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in KINDS:
    raise ValueError(f"Bad data source {spec!r}: expected 'KIND:PATH' with KIND in {KINDS}.")
  path, *opts = rest.split(";")
  options = {}
  for opt in opts:
    key, eq, value = opt.partition("=")
    if not eq:
      raise ValueError(f"Bad option {opt!r} in data source {spec!r}: expected FOLDER=label.")
    options[key.strip()] = value.strip()
  return kind, Path(path).expanduser().resolve(), options


def canonical_source(spec: str) -> str:
  """The spec with an absolute path, so equal sources hash equally."""
  kind, path, options = parse_source(spec)
  return ";".join([f"{kind}:{path}"] + [f"{k}={v}" for k, v in sorted(options.items())])


def read_sources(specs) -> SourceScan:
  """Reads every source spec, in order, into one scan."""
  scan = SourceScan()
  for spec in specs:
    scan.extend(read_source(spec))
  return scan


def read_source(spec: str) -> SourceScan:
  kind, path, options = parse_source(spec)
  if kind == "manifest":
    return read_manifest(path, label_map=options)
  if kind == "folder":
    return read_folder(path, class_map=options)
  if kind == "ieee8023":
    return read_ieee8023(path)
  return read_nih(path)


def _find_csv(path: Path, name: str) -> Path:
  csv_path = path if path.suffix.lower() == ".csv" else path / name
  if not csv_path.is_file():
    raise FileNotFoundError(
        f"{csv_path} not found: point the source at the {name} file or the folder holding it "
        "(for the default source, set CXR_DATA).")
  return csv_path


def _read_rows(csv_path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
  with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a column
    reader = csv.DictReader(f)
    missing = [c for c in required if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{csv_path} lacks the column(s) {missing}; it has {reader.fieldnames}.")
    return list(reader)


def _label_map(label_map: dict[str, str] | None, where: str) -> dict[str, str | None]:
  """Option entries NAME=label (lower-cased names; '' = leave out) checked against LABELS."""
  out = {}
  for name, label in (label_map or {}).items():
    if label and label not in LABELS:
      raise ValueError(f"{where}: map entry {name}={label}: label must be one of {LABELS} or "
                       "empty (leave the rows out).")
    out[name.strip().lower()] = label or None
  return out


def read_manifest(path: Path, label_map: dict[str, str] | None = None) -> SourceScan:
  """Reads a cxr3-style manifest; file paths are relative to the manifest's folder. `label_map`
  entries (name=label, '' = leave out) rename labels before they are checked."""
  csv_path = _find_csv(Path(path), "manifest.csv")
  rows = _read_rows(csv_path, ("file", "label", "patient_id"))
  mapping = _label_map(label_map, str(csv_path))
  root = csv_path.parent
  scan = SourceScan()
  for line, row in enumerate(rows, start=2):
    file = str((root / row["file"]).resolve())
    label = row["label"].strip().lower()
    if label in mapping and mapping[label] is None:
      scan.excluded.append(Reject(file, f"label {row['label']!r} is left out by the source's map"))
      continue
    label = mapping.get(label, label)
    if label not in LABELS:
      scan.rejects.append(Reject(file, f"unknown label {row['label']!r} ({csv_path.name} line "
                                       f"{line}); expected one of {LABELS} (map it with "
                                       f"';{row['label']}=LABEL' after the source's path)"))
    elif not os.path.isfile(file):
      scan.rejects.append(Reject(file, f"file not found ({csv_path.name} line {line})"))
    else:
      source = row.get("source") or root.name
      patient_id = row["patient_id"]
      scan.records.append(Record(file, label, patient_id, row.get("patient_group") or patient_id,
                                 source, (row.get("finding") or "").strip()))
  return scan


def _folder_label(parts: tuple[str, ...], class_map: dict[str, str | None]):
  """The label of the nearest enclosing folder found in the class map, and that folder."""
  for part in reversed(parts):
    if part.lower() in class_map:
      return class_map[part.lower()], part
  return "", None


# Kermany names: person1_bacteria_1.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg.
_PATIENT_PATTERNS = (re.compile(r"^(person\d+)_"), re.compile(r"^(.*IM-\d+)-\d+$"))


def folder_patient_id(stem: str) -> str:
  """The patient encoded in a file name where the layout has one, else the file itself."""
  for pattern in _PATIENT_PATTERNS:
    match = pattern.match(stem)
    if match:
      return match.group(1)
  return stem


def read_folder(path: Path, class_map: dict[str, str] | None = None) -> SourceScan:
  """Reads a folder-per-class tree; `class_map` entries (folder=label, '' = leave out) extend
  DEFAULT_CLASS_MAP."""
  root = Path(path)
  if not root.is_dir():
    raise FileNotFoundError(f"Folder source {root} does not exist.")
  mapping = {**DEFAULT_CLASS_MAP, **_label_map(class_map, f"folder source {root}")}
  source = root.name
  scan = SourceScan()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      file = Path(dirpath) / name
      rel = file.relative_to(root)
      if name.startswith(".") or "__MACOSX" in rel.parts:
        scan.excluded.append(Reject(str(file), "hidden or OS metadata file"))
        continue
      label, folder = _folder_label(rel.parts[:-1], mapping)
      if label is None:
        scan.excluded.append(Reject(str(file), f"folder {folder!r} is left out by the class map"))
      elif not label:
        if file.suffix.lower() in IMAGE_SUFFIXES:
          scan.rejects.append(Reject(str(file), "unknown label: no enclosing folder is in the "
                                                "class map (add ';FOLDER=label' to the source)"))
        else:
          scan.excluded.append(Reject(str(file), "not an image, outside the class folders"))
      else:
        patient = f"{source}:{folder_patient_id(file.stem)}"
        scan.records.append(Record(str(file), label, patient, patient, source))
  return scan


def ieee8023_label(finding: str) -> str | None:
  """Maps an ieee8023 finding to a label; None for findings outside the three classes."""
  text = finding.strip().lower()
  if "covid-19" in text:
    return "covid"
  if text in ("no finding", "normal"):
    return "normal"
  if text.startswith("pneumonia") or text in _IEEE_LEGACY_PNEUMONIA:
    return "pneumonia"
  return None


def read_ieee8023(path: Path) -> SourceScan:
  """Reads the COVID-19 image data collection: frontal X-rays (PA/AP views) only."""
  csv_path = _find_csv(Path(path), "metadata.csv")
  rows = _read_rows(csv_path, ("patientid", "finding", "view", "modality", "filename"))
  root = csv_path.parent
  scan = SourceScan()
  for row in rows:
    file = str((root / (row.get("folder") or "images") / row["filename"]).resolve())
    view, modality = row["view"].strip(), row["modality"].strip()
    label = ieee8023_label(row["finding"])
    if modality.lower() != "x-ray":
      scan.excluded.append(Reject(file, f"modality {modality!r} is not X-ray"))
    elif not view.upper().startswith(("PA", "AP")):
      scan.excluded.append(Reject(file, f"view {view!r} is not frontal"))
    elif label is None:
      scan.excluded.append(Reject(file, f"finding {row['finding']!r} is outside {LABELS}"))
    elif not os.path.isfile(file):
      scan.rejects.append(Reject(file, f"file not found (metadata.csv, patient {row['patientid']})"))
    else:
      patient = f"ieee8023:{row['patientid']}"
      scan.records.append(Record(file, label, patient, patient, "ieee8023"))
  return scan


def nih_label(names: list[str]) -> str:
  """3-class label of an NIH image's finding names: normal, pneumonia, or "" (neither)."""
  if NO_FINDING in names:
    return "normal"
  return "pneumonia" if "Pneumonia" in names else ""


def _nih_csv(path: Path) -> Path:
  """The one Data_Entry_2017*.csv of an NIH source (PATH is the csv or its folder)."""
  found = [path] if path.suffix.lower() == ".csv" else sorted(path.glob("Data_Entry_2017*.csv"))
  if not found or not found[0].is_file():
    raise FileNotFoundError(f"No Data_Entry_2017*.csv at {path}: point the nih source at the "
                            "ChestX-ray14 folder holding it, or at the csv itself.")
  if len(found) > 1:
    raise ValueError(f"Several Data_Entry_2017*.csv in {path} ({[f.name for f in found]}): "
                     f"point the source at the one to use, e.g. nih:{found[-1]}.")
  return found[0]


def _png_index(root: Path) -> dict[str, list[str]]:
  """Every PNG below root by file name (NIH ships images_001/images/..., images_012/...)."""
  index = collections.defaultdict(list)
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.lower().endswith(".png"):
        index[name].append(os.path.join(dirpath, name))
  return index


def _nih_record(row: dict, where: str, root: Path, images: dict) -> Record | Reject:
  name = (row.get("Image Index") or "").strip()
  paths = images.get(name, []) if name else []
  file = paths[0] if paths else str(root / name)
  if not name:
    return Reject(file, f"{where}: empty Image Index")
  try:
    names = parse_findings(row.get("Finding Labels") or "", where)
  except ValueError as e:
    return Reject(file, str(e))
  patient = (row.get("Patient ID") or "").strip()
  if not patient.isdigit():
    return Reject(file, f"{where}: Patient ID {patient!r} is not a whole number")
  if not paths:
    return Reject(file, f"file not found anywhere below {root} ({where})")
  if len(paths) > 1:
    return Reject(file, f"{name} is found {len(paths)} times below {root} ({where}): "
                        f"{paths[:3]}; keep one copy")
  patient = f"nih:{int(patient)}"  # cxr3's form: patients match across datasets
  return Record(file, nih_label(names), patient, patient, NIH_SOURCE, "|".join(names))


def read_nih(path: Path) -> SourceScan:
  """Reads NIH ChestX-ray14; images in none of the 3 classes get label "" (see NO_LABEL)."""
  csv_path = _nih_csv(Path(path))
  rows = _read_rows(csv_path, ("Image Index", "Finding Labels", "Patient ID"))
  root = csv_path.parent
  images = _png_index(root)
  scan = SourceScan()
  for line, row in enumerate(rows, start=2):
    out = _nih_record(row, f"{csv_path.name} line {line}", root, images)
    (scan.records if isinstance(out, Record) else scan.rejects).append(out)
  return scan
