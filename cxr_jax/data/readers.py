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
  rsna:PATH       the RSNA Pneumonia Detection Challenge as Kaggle ships it (PATH: the folder of
                  stage_2_train_labels.csv and stage_2_detailed_class_info.csv, images
                  <patientId>.dcm anywhere below it): class -> label by RSNA_CLASSES.
  siim:PATH       the SIIM-FISABIO-RSNA COVID-19 challenge (PATH: the folder of
                  train_study_level.csv and train_image_level.csv, images <image>.dcm|jpg|png
                  anywhere below it: train/<study>/<series>/ as shipped, or train/ in the 256-px
                  re-releases): the study's class -> label by SIIM_CLASSES.
  rsna and siim take ';CLASS=label' / ';CLASS=' suffixes to map or leave out one of their classes
  (e.g. 'siim:/data/siim;Atypical Appearance=pneumonia'); a class they do not have is an error.

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

KINDS = ("manifest", "folder", "ieee8023", "nih", "rsna", "siim")
NIH_SOURCE = "nih-chestxray14"
RSNA_SOURCE = "rsna-pneumonia"
SIIM_SOURCE = "siim-fisabio-rsna"  # as cxr-plus's manifest names it: one collection for LOSO
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

# stage_2_detailed_class_info.csv's classes -> label (None: left out and listed). Lee et al. took
# their normal and pneumonia images from here; "Not Normal" holds other findings, not pneumonia.
RSNA_CLASSES = {"Normal": "normal", "Lung Opacity": "pneumonia",
                "No Lung Opacity / Not Normal": None}
# train_study_level.csv's one-hot columns -> label. Every patient of that challenge tested
# positive: "Negative for Pneumonia" is a film without pneumonia, "Typical Appearance" COVID-19's.
SIIM_CLASSES = {"Negative for Pneumonia": "normal", "Typical Appearance": "covid",
                "Indeterminate Appearance": None, "Atypical Appearance": None}


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
  if kind == "rsna":
    return read_rsna(path, class_map=options)
  if kind == "siim":
    return read_siim(path, class_map=options)
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


def _file_index(root: Path, suffixes: tuple[str, ...], by_stem: bool = False) -> dict[str, list]:
  """Every file below root with one of the suffixes, by name (or by stem), because collections
  nest their images (NIH images_001/images/..., SIIM train/<study>/<series>/<image>.dcm)."""
  index = collections.defaultdict(list)
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.lower().endswith(suffixes):
        index[os.path.splitext(name)[0] if by_stem else name].append(os.path.join(dirpath, name))
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
  images = _file_index(root, (".png",))
  scan = SourceScan()
  for line, row in enumerate(rows, start=2):
    out = _nih_record(row, f"{csv_path.name} line {line}", root, images)
    (scan.records if isinstance(out, Record) else scan.rejects).append(out)
  return scan


# ------------------------------------------------------------------ challenge downloads


def _challenge_root(path: Path) -> Path:
  """The download's folder; PATH may also name one of its csvs."""
  path = Path(path)
  return path.parent if path.is_file() else path


def _class_map(classes: dict[str, str | None], options: dict[str, str] | None,
               where: str) -> dict[str, str | None]:
  """A collection's class -> label map (lower-cased names) with the spec's ';CLASS=label'
  entries applied; naming a class the collection does not have is an error, not a no-op."""
  defaults = {name.lower(): label for name, label in classes.items()}
  changes = _label_map(options, where)
  unknown = sorted(set(changes) - set(defaults))
  if unknown:
    raise ValueError(f"{where}: {unknown} is not a class of this collection; its classes are "
                     f"{list(classes)}.")
  return {**defaults, **changes}


def _rows_by_id(csv_path: Path, id_column: str, columns: tuple[str, ...]):
  """{id: (its columns' values), ...} and {id: reason} for ids whose rows disagree. An id may
  repeat (RSNA writes one row per box): repeats with the same values count once."""
  values, lines, conflicts = {}, {}, {}
  for line, row in enumerate(_read_rows(csv_path, (id_column, *columns)), start=2):
    key, value = row[id_column].strip(), tuple(row[c].strip() for c in columns)
    if key not in values:
      values[key], lines[key] = value, line
    elif value != values[key] and key not in conflicts:
      conflicts[key] = (f"duplicate id {key!r} with different values: {csv_path.name} lines "
                        f"{lines[key]} {values[key]} and {line} {value}")
  return values, conflicts


def _image_file(images: dict, name: str, root: Path, where: str) -> tuple[str, str]:
  """(file, "") for the one image called `name` below root, else (a stand-in path, reason)."""
  paths = images.get(name, [])
  if not paths:
    return str(root / name), f"file not found: no image {name}.* below {root} ({where})"
  if len(paths) > 1:
    return paths[0], f"{name} is found {len(paths)} times below {root} ({where}): {paths[:3]}"
  return paths[0], ""


def dicom_patient_id(file: str) -> str:
  """The PatientID tag of a DICOM file ("" where the tag is empty, or for other formats), read
  without its pixels. Raises ValueError for an unreadable DICOM header."""
  if not file.lower().endswith((".dcm", ".dicom")):
    return ""
  import pydicom  # Only DICOM sources need it.
  try:
    header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["PatientID"])
  except Exception as e:  # pydicom raises many kinds on a damaged header
    raise ValueError(f"unreadable DICOM header: {type(e).__name__}: {e}") from e
  return str(header.get("PatientID", "") or "").strip()


# Patient ids carry their collection's prefix; "siim:" is cxr-plus's, so its studies join ours.
_ID_PREFIX = {RSNA_SOURCE: "rsna", SIIM_SOURCE: "siim"}


def _add_image(scan: SourceScan, file: str, missing: str, name: str, label: str | None,
               source: str, patient: str, group: str = "") -> None:
  """Files one image of a challenge download whose class `name` maps to `label`: excluded where
  the map leaves the class out, rejected where `missing` says the file is, else a record. Its
  patient is the DICOM's PatientID where it has one, else `patient`; its group `group` (default:
  the patient)."""
  if label is None:
    scan.excluded.append(Reject(file, f"class {name!r} is left out by the source's map (map it "
                                      f"with ';{name}=LABEL' after the source's path)"))
    return
  if not missing:
    try:
      patient = dicom_patient_id(file) or patient
    except ValueError as e:
      missing = str(e)
  if missing:
    scan.rejects.append(Reject(file, missing))
    return
  prefix = _ID_PREFIX[source]
  scan.records.append(Record(file, label, f"{prefix}:{patient}", f"{prefix}:{group or patient}",
                             source, name))


def _rsna_class_name(pid: str, info: dict, targets: dict, info_bad: dict, targets_bad: dict) -> str:
  """A patient's class in stage_2_detailed_class_info.csv; raises ValueError (the reject reason)
  for rows that disagree or a patient missing from one of the two csvs."""
  bad = info_bad.get(pid) or targets_bad.get(pid)
  if bad:
    raise ValueError(bad)
  if pid not in info or pid not in targets:
    raise ValueError(f"patientId {pid} is in only one of stage_2_detailed_class_info.csv and "
                     "stage_2_train_labels.csv")
  return info[pid][0]


def rsna_class(name: str, target: str, classes: dict, where: str) -> str | None:
  """The label of a detailed_class_info class, None if the map leaves it out. Raises ValueError
  (the reject reason) for an unknown class or a Target that contradicts it."""
  if name.lower() not in classes:
    raise ValueError(f"unknown label: class {name!r} ({where}); RSNA's classes are "
                     f"{list(RSNA_CLASSES)}")
  if target != ("1" if name.lower() == "lung opacity" else "0"):
    raise ValueError(f"class {name!r} but Target {target!r} in stage_2_train_labels.csv ({where}): "
                     "Target is 1 for 'Lung Opacity' only")
  return classes[name.lower()]


def read_rsna(path: Path, class_map: dict[str, str] | None = None) -> SourceScan:
  """Reads the RSNA Pneumonia Detection Challenge: one image per patientId, its class from
  stage_2_detailed_class_info.csv checked against stage_2_train_labels.csv's Target; patient =
  the DICOM's PatientID (else the csv's patientId). Both csvs repeat a patient once per box."""
  root = _challenge_root(path)
  classes = _class_map(RSNA_CLASSES, class_map, f"rsna source {root}")
  info, info_bad = _rows_by_id(_find_csv(root, "stage_2_detailed_class_info.csv"),
                               "patientId", ("class",))
  targets, targets_bad = _rows_by_id(_find_csv(root, "stage_2_train_labels.csv"),
                                     "patientId", ("Target",))
  images = _file_index(root, IMAGE_SUFFIXES, by_stem=True)
  scan = SourceScan()
  for pid in {**info, **targets}:  # the ids of either csv, in file order
    file, missing = _image_file(images, pid, root, f"patientId {pid}")
    try:
      name = _rsna_class_name(pid, info, targets, info_bad, targets_bad)
      label = rsna_class(name, targets[pid][0], classes, f"patientId {pid}")
    except ValueError as e:
      scan.rejects.append(Reject(file, str(e)))
      continue
    _add_image(scan, file, missing, name, label, RSNA_SOURCE, pid)
  return scan


def siim_class(studies: dict, study: str, where: str) -> str:
  """The one SIIM_CLASSES column set to 1 in a study's row of train_study_level.csv (`where`).
  Raises ValueError (the reject reason) for a study not there, a value other than 0/1, or none
  or several classes set."""
  key = f"{study}_study"
  if key not in studies:
    raise ValueError(f"unknown label: study {study!r} is not in {where}")
  names = list(SIIM_CLASSES)
  odd = [f"{n}={v!r}" for n, v in zip(names, studies[key], strict=True) if v not in ("0", "1")]
  if odd:
    raise ValueError(f"unknown label: {', '.join(odd)} ({where} id {key}); the class columns "
                     "are 0 or 1")
  chosen = [n for n, v in zip(names, studies[key], strict=True) if v == "1"]
  if len(chosen) != 1:
    raise ValueError(f"{len(chosen)} classes set ({where} id {key}): {chosen}; a study has "
                     "exactly one")
  return chosen[0]


def read_siim(path: Path, class_map: dict[str, str] | None = None) -> SourceScan:
  """Reads the SIIM-FISABIO-RSNA challenge's training set: every image of train_image_level.csv
  with its study's class from train_study_level.csv. Patient group = the study (`siim:<study>`,
  cxr-plus's form); patient id = the DICOM's PatientID (the build then joins a patient's
  studies), else the study: the JPEG/PNG re-releases carry no patient."""
  root = _challenge_root(path)
  classes = _class_map(SIIM_CLASSES, class_map, f"siim source {root}")
  study_csv = _find_csv(root, "train_study_level.csv")
  studies, studies_bad = _rows_by_id(study_csv, "id", tuple(SIIM_CLASSES))
  image_csv = _find_csv(root, "train_image_level.csv")
  image_rows, images_bad = _rows_by_id(image_csv, "id", ("StudyInstanceUID",))
  images = _file_index(root, IMAGE_SUFFIXES, by_stem=True)
  scan = SourceScan()
  for image_id, (study,) in image_rows.items():
    image = image_id.removesuffix("_image")
    file, missing = _image_file(images, image, root, f"{image_csv.name} id {image_id}")
    try:
      bad = images_bad.get(image_id) or studies_bad.get(f"{study}_study")
      if bad:
        raise ValueError(bad)
      name = siim_class(studies, study, study_csv.name)
    except ValueError as e:
      scan.rejects.append(Reject(file, str(e)))
      continue
    _add_image(scan, file, missing, name, classes[name.lower()], SIIM_SOURCE, study, study)
  return scan
