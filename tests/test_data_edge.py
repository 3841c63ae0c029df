"""Data layer on small generated fixtures: decoding, CLAHE, readers, bad input, cache keys, CLI."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from configs.default import get_config
from cxr_jax import data
from cxr_jax.data import preprocess, readers
from cxr_jax.data.__main__ import main as cli_main
from cxr_jax.data.build import merge_patient_groups, source_specs
from cxr_jax.data.preprocess import PreprocessConfig


def fake_xray(seed: int, shape=(48, 40)) -> np.ndarray:
  """A distinct uint8 image per seed (distinct content: no accidental duplicates)."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 200, shape[1])[None, :] + np.linspace(0, 40, shape[0])[:, None]
  return np.clip(ramp + rng.normal(0, 10, shape), 0, 255).astype(np.uint8)


def write_manifest(root, rows):
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "manifest.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, ["file", "label", "patient_id", "patient_group", "source"])
    writer.writeheader()
    for file, label, patient in rows:
      writer.writerow(dict(file=file, label=label, patient_id=patient, patient_group=patient,
                           source="gen"))


def good_manifest(root, per_class=4, seed=0):
  """A manifest folder with per_class valid JPEGs of each label; returns the rows."""
  rows = []
  for c, label in enumerate(data.LABELS):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      name = f"{label}/img{i}.jpg"
      cv2.imwrite(str(root / name), fake_xray(seed * 1000 + c * 100 + i))
      rows.append((name, label, f"gen:p{c}{i}"))
  write_manifest(root, rows)
  return rows


def data_config(tmp_path, sources, **overrides):
  d = get_config().data
  d.sources = tuple(sources)
  d.data_dir = str(tmp_path / "tfds")
  d.image_size = 16
  d.num_folds = 2
  d.test_fraction = 0.25
  for key, value in overrides.items():
    setattr(d, key, value)
  return d


def write_dicom(path, pixels, photometric="MONOCHROME2", window=None, slope=1.0, intercept=0.0,
                patient_id=None):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "DX"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
  ds.PixelRepresentation = 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  if patient_id is not None:
    ds.PatientID = patient_id
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------ preprocessing


def test_clahe_equals_opencv_applied_directly():
  image = fake_xray(1, (64, 64))
  config = PreprocessConfig(image_size=64, clahe=True, clahe_clip_limit=3.0, clahe_tile_grid=4)
  expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(image)
  out = preprocess.preprocess(image, config)
  assert out.shape == (64, 64, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], expected)
  assert not np.array_equal(out[..., 0], image)  # CLAHE did change the image


def test_resize_shrinks_with_area_and_records_original_size(tmp_path):
  image = fake_xray(2, (90, 70))
  cv2.imwrite(str(tmp_path / "a.png"), image)
  out = preprocess.process_file(str(tmp_path / "a.png"), PreprocessConfig(32, clahe=False))
  np.testing.assert_array_equal(out.image[..., 0],
                                cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA))
  assert (out.orig_height, out.orig_width) == (90, 70)
  np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(out.png, np.uint8), 0), out.image[..., 0])


def test_16bit_png_stretches_to_full_uint8_range(tmp_path):
  pixels = np.tile(np.linspace(1000, 4000, 50), (20, 1)).astype(np.uint16)
  cv2.imwrite(str(tmp_path / "deep.png"), pixels)
  assert cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
  out = preprocess.decode((tmp_path / "deep.png").read_bytes())
  assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
  assert np.all(np.diff(out[0].astype(int)) >= 0)  # order of grey levels kept
  np.testing.assert_allclose(out[0], (pixels[0].astype(float) - 1000) * 255 / 3000, atol=0.51)


def test_8bit_and_colour_decode_unchanged(tmp_path):
  image = fake_xray(3)
  cv2.imwrite(str(tmp_path / "g.png"), image)
  np.testing.assert_array_equal(preprocess.decode((tmp_path / "g.png").read_bytes()), image)
  cv2.imwrite(str(tmp_path / "c.png"), np.repeat(image[..., None], 3, -1))
  np.testing.assert_array_equal(preprocess.decode((tmp_path / "c.png").read_bytes()), image)


def test_dicom_applies_rescale_window_and_monochrome1(tmp_path):
  pixels = np.tile(np.array([1000, 1500, 2000, 2500, 3000], np.uint16), (6, 1))
  write_dicom(tmp_path / "plain.dcm", pixels)
  out = preprocess.decode((tmp_path / "plain.dcm").read_bytes(), "plain.dcm")
  np.testing.assert_array_equal(out[0], [0, 64, 128, 191, 255])
  # Window 2000 +- 500: everything outside [1500, 2500] saturates.
  write_dicom(tmp_path / "win.dcm", pixels, window=(2000, 1000))
  out = preprocess.decode((tmp_path / "win.dcm").read_bytes(), "win.dcm")
  assert out[0, 0] == out[0, 1] == 0 and out[0, 3] == out[0, 4] == 255
  assert 100 < out[0, 2] < 155
  write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
  out = preprocess.decode((tmp_path / "m1.dcm").read_bytes(), "m1.dcm")
  np.testing.assert_array_equal(out[0], [255, 191, 127, 64, 0])
  assert pydicom.dcmread(tmp_path / "m1.dcm").PhotometricInterpretation == "MONOCHROME1"


def test_truncated_and_non_image_bytes_raise_decode_error(tmp_path):
  ok, jpeg = cv2.imencode(".jpg", fake_xray(4))
  with pytest.raises(preprocess.DecodeError, match="truncated"):
    preprocess.decode(jpeg.tobytes()[: len(jpeg) // 2])
  with pytest.raises(preprocess.DecodeError, match="not a decodable image"):
    preprocess.decode(b"just some text\n" * 20)
  with pytest.raises(preprocess.DecodeError, match="unreadable DICOM"):
    preprocess.decode(b"\0" * 128 + b"DICM" + b"garbage" * 10)


# ------------------------------------------------------------------ readers


def test_folder_reader_kermany_and_kaggle_layouts(tmp_path):
  kermany = tmp_path / "chest_xray"
  files = {"train/NORMAL/IM-0115-0001.jpeg": "normal", "train/NORMAL/IM-0115-0002.jpeg": "normal",
           "test/PNEUMONIA/person1_bacteria_1.jpeg": "pneumonia",
           "train/PNEUMONIA/person1_virus_6.jpeg": "pneumonia"}
  for i, rel in enumerate(files):
    (kermany / rel).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(kermany / rel), fake_xray(10 + i))
  scan = readers.read_folder(kermany)
  got = {r.path.split("chest_xray/")[1]: (r.label, r.patient_group) for r in scan.records}
  assert got == {
      "train/NORMAL/IM-0115-0001.jpeg": ("normal", "chest_xray:IM-0115"),
      "train/NORMAL/IM-0115-0002.jpeg": ("normal", "chest_xray:IM-0115"),
      "test/PNEUMONIA/person1_bacteria_1.jpeg": ("pneumonia", "chest_xray:person1"),
      "train/PNEUMONIA/person1_virus_6.jpeg": ("pneumonia", "chest_xray:person1")}
  kaggle = tmp_path / "kaggle"
  for rel in ("COVID/images/COVID-1.png", "COVID/masks/COVID-1.png", "Lung_Opacity/images/L-1.png",
              "Viral Pneumonia/images/V-1.png", "Other/x.png"):
    (kaggle / rel).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(kaggle / rel), fake_xray(20))
  (kaggle / "README.md").write_text("readme")
  scan = readers.read_folder(kaggle)
  assert sorted((r.path.split("kaggle/")[1], r.label) for r in scan.records) == [
      ("COVID/images/COVID-1.png", "covid"), ("Viral Pneumonia/images/V-1.png", "pneumonia")]
  assert [(r.file.split("kaggle/")[1], r.reason.split(":")[0]) for r in scan.rejects] == [
      ("Other/x.png", "unknown label")]
  assert {e.file.split("kaggle/")[1] for e in scan.excluded} == {
      "COVID/masks/COVID-1.png", "Lung_Opacity/images/L-1.png", "README.md"}
  # The class map can be extended from the source spec.
  scan = readers.read_source(f"folder:{kaggle};Other=normal;Lung_Opacity=pneumonia")
  assert sorted(r.label for r in scan.records) == ["covid", "normal", "pneumonia", "pneumonia"]
  with pytest.raises(ValueError, match="label must be one of"):
    readers.read_source(f"folder:{kaggle};Other=cat")


def test_ieee8023_reader_frontal_xray_and_finding_mapping(tmp_path):
  root = tmp_path / "covid-chestxray-dataset"
  (root / "images").mkdir(parents=True)
  rows = [("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.jpg"),
          ("1", "Pneumonia/Viral/COVID-19", "L", "X-ray", "b.jpg"),
          ("2", "No Finding", "AP Supine", "X-ray", "c.png"),
          ("3", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", "d.jpg"),
          ("4", "COVID-19", "Axial", "CT", "e.jpg"),
          ("5", "Tuberculosis", "PA", "X-ray", "f.jpg"),
          ("6", "SARS", "PA", "X-ray", "g.jpg"),
          ("7", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "missing.jpg")]
  with open(root / "metadata.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["patientid", "offset", "finding", "view", "modality", "folder", "filename"])
    for pid, finding, view, modality, name in rows:
      w.writerow([pid, "", finding, view, modality, "images", name])
      if name != "missing.jpg":
        cv2.imwrite(str(root / "images" / name), fake_xray(int(pid)))
  scan = readers.read_source(f"ieee8023:{root}")
  assert [(r.path.rsplit("/", 1)[1], r.label, r.patient_group) for r in scan.records] == [
      ("a.jpg", "covid", "ieee8023:1"), ("c.png", "normal", "ieee8023:2"),
      ("d.jpg", "pneumonia", "ieee8023:3"), ("g.jpg", "pneumonia", "ieee8023:6")]
  excluded = {e.file.rsplit("/", 1)[1]: e.reason for e in scan.excluded}
  assert set(excluded) == {"b.jpg", "e.jpg", "f.jpg"}
  assert "not frontal" in excluded["b.jpg"] and "not X-ray" in excluded["e.jpg"]
  assert "Tuberculosis" in excluded["f.jpg"]
  assert [(r.file.rsplit("/", 1)[1], r.reason.split(" (")[0]) for r in scan.rejects] == [
      ("missing.jpg", "file not found")]


def write_csv(path, header, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])


def write_rsna(root):
  """An RSNA Pneumonia Detection Challenge download in miniature, with every kind of bad row.
  Both csvs repeat a patient once per box, as Kaggle's do."""
  rows = {  # patientId: ([class per detailed_class_info row], [Target per labels row], image)
      "n1": (["Normal"], ["0"], "dicom"),
      "p1": (["Lung Opacity", "Lung Opacity"], ["1", "1"], "dicom"),   # two boxes, one image
      "x1": (["No Lung Opacity / Not Normal"], ["0"], "dicom"),
      "d1": (["Normal"], ["0"], "anon-7"),                             # PatientID differs
      "e1": (["Lung Opacity"], ["1"], "no tag"),                       # no PatientID: csv's id
      "c1": (["Normal", "Lung Opacity"], ["0", "1"], "dicom"),         # classes disagree
      "t1": (["Normal"], ["1"], "dicom"),                              # Target contradicts
      "u1": (["Opacity"], ["1"], "dicom"),                             # unknown class
      "m1": (["Normal"], ["0"], None),                                 # file missing
      "o1": ([], ["0"], "dicom"),                                      # no class row
      "b1": (["Normal"], ["0"], "broken"),                             # unreadable header
  }
  images = root / "stage_2_train_images"
  for i, (pid, (_, _, image)) in enumerate(rows.items()):
    if image == "broken":
      images.joinpath(f"{pid}.dcm").write_bytes(b"not a dicom at all")
    elif image:
      patient = {"dicom": pid, "no tag": None}.get(image, image)
      write_dicom(images / f"{pid}.dcm", fake_xray(40 + i).astype(np.uint16) * 16,
                  patient_id=patient)
  write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"],
            [(pid, c) for pid, (classes, _, _) in rows.items() for c in classes])
  write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
            [(pid, *(("10", "10", "5", "5") if t == "1" else ("",) * 4), t)
             for pid, (_, targets, _) in rows.items() for t in targets])


def names(entries):
  """{file stem: the reason's opening} of rejects or exclusions."""
  return {Path(e.file).stem: e.reason for e in entries}


def test_rsna_reader_maps_classes_dedupes_boxes_and_names_every_bad_row(tmp_path):
  root = tmp_path / "rsna"
  write_rsna(root)
  scan = readers.read_source(f"rsna:{root}")
  assert [(Path(r.path).stem, r.label, r.patient_id, r.patient_group, r.source, r.findings)
          for r in scan.records] == [
      ("n1", "normal", "rsna:n1", "rsna:n1", "rsna-pneumonia", "Normal"),
      ("p1", "pneumonia", "rsna:p1", "rsna:p1", "rsna-pneumonia", "Lung Opacity"),
      ("d1", "normal", "rsna:anon-7", "rsna:anon-7", "rsna-pneumonia", "Normal"),
      ("e1", "pneumonia", "rsna:e1", "rsna:e1", "rsna-pneumonia", "Lung Opacity")]
  excluded = names(scan.excluded)
  assert list(excluded) == ["x1"]
  assert "'No Lung Opacity / Not Normal' is left out" in excluded["x1"]
  rejects = names(scan.rejects)
  assert set(rejects) == {"c1", "t1", "u1", "m1", "o1", "b1"}
  assert rejects["c1"].startswith("duplicate id 'c1' with different values: "
                                  "stage_2_detailed_class_info.csv lines")
  assert "Target '1'" in rejects["t1"] and "unknown label: class 'Opacity'" in rejects["u1"]
  assert rejects["m1"].startswith("file not found") and "only one of" in rejects["o1"]
  assert rejects["b1"].startswith("unreadable DICOM header")
  # The spec's map takes the left-out class in; a class RSNA does not have is an error.
  scan = readers.read_source(f"rsna:{root};No Lung Opacity / Not Normal=pneumonia")
  assert not scan.excluded and [(Path(r.path).stem, r.label) for r in scan.records
                                if r.findings.startswith("No Lung")] == [("x1", "pneumonia")]
  with pytest.raises(ValueError, match="not a class of this collection"):
    readers.read_source(f"rsna:{root};Pneumonia=pneumonia")
  with pytest.raises(FileNotFoundError, match="stage_2_detailed_class_info.csv not found"):
    readers.read_source(f"rsna:{tmp_path}")


SIIM_STUDIES = {  # study: (Negative, Typical, Indeterminate, Atypical), images
    "s1": ("0", "1", "0", "0", ["i1"]),
    "s2": ("1", "0", "0", "0", ["i2"]),                 # the same patient as s1 (DICOM)
    "s3": ("0", "0", "1", "0", ["i3"]),
    "s4": ("0", "0", "0", "1", ["i4"]),
    "s5": ("1", "1", "0", "0", ["i5"]),                 # two classes set
    "s6": ("0", "yes", "0", "0", ["i6"]),               # not one-hot
    "s7": ("0", "1", "0", "0", ["i7a", "i7b"]),         # a study of two images
    "s10": ("1", "0", "0", "0", ["i10"]),               # its file is missing
    "s13": ("0", "0", "0", "0", ["i13"]),               # no class set
    "s14": ("1", "0", "0", "0", ["i14"]),               # a DICOM without PatientID
}


def write_siim(root, layout):
  """A SIIM-FISABIO-RSNA download in miniature: DICOMs in train/<study>/<series>/ as shipped, or
  the 256-px re-release's train/<image>.jpg|png; the same csvs, every kind of bad row."""
  studies = [(f"{s}_study", *v[:4]) for s, v in SIIM_STUDIES.items()]
  studies += [("s11_study", "1", "0", "0", "0"), ("s11_study", "0", "1", "0", "0"),  # disagree
              ("s1_study", "0", "1", "0", "0")]  # a repeat that agrees
  write_csv(root / "train_study_level.csv", ["id", *readers.SIIM_CLASSES], studies)
  images = [(i, s) for s, v in SIIM_STUDIES.items() for i in v[4]]
  images += [("i8", "s8"), ("i9", "s1"), ("i9", "s2"), ("i11", "s11"), ("i12", "s2"),
             ("i12", "s2")]  # study unknown; an image under two studies; a repeat that agrees
  write_csv(root / "train_image_level.csv", ["id", "boxes", "label", "StudyInstanceUID"],
            [(f"{i}_image", "", "none 1 0 0 1 1", s) for i, s in images])
  for k, (image, study) in enumerate(dict(images).items()):
    if image == "i10":
      continue
    pixels = fake_xray(60 + k)
    if layout == "dicom":
      patient = {"s1": "P1", "s2": "P1", "s14": None}.get(study, f"P-{study}")
      write_dicom(root / "train" / study / "series0" / f"{image}.dcm", pixels.astype(np.uint16),
                  patient_id=patient)
    else:
      (root / "train").mkdir(parents=True, exist_ok=True)
      cv2.imwrite(str(root / "train" / f"{image}.{'png' if k % 2 else 'jpg'}"), pixels)


@pytest.mark.parametrize("layout", ["dicom", "jpeg"])
def test_siim_reader_maps_study_classes_and_names_every_bad_row(tmp_path, layout):
  root = tmp_path / "siim"
  write_siim(root, layout)
  scan = readers.read_source(f"siim:{root}")
  dicom = layout == "dicom"
  patient = {"i1": "P1", "i2": "P1", "i7a": "P-s7", "i7b": "P-s7", "i12": "P1"} if dicom else {}
  expected = [("i1", "covid", "s1"), ("i2", "normal", "s2"), ("i7a", "covid", "s7"),
              ("i7b", "covid", "s7"), ("i14", "normal", "s14"), ("i12", "normal", "s2")]
  assert [(Path(r.path).stem, r.label, r.patient_id, r.patient_group, r.source, r.findings)
          for r in scan.records] == [
      (image, label, f"siim:{patient.get(image, study)}", f"siim:{study}", "siim-fisabio-rsna",
       {"covid": "Typical Appearance", "normal": "Negative for Pneumonia"}[label])
      for image, label, study in expected]
  assert {Path(r.path).suffix for r in scan.records} == ({".dcm"} if dicom else {".jpg", ".png"})
  excluded = names(scan.excluded)
  assert set(excluded) == {"i3", "i4"}
  assert "'Indeterminate Appearance' is left out" in excluded["i3"]
  assert "';Atypical Appearance=LABEL'" in excluded["i4"]
  rejects = names(scan.rejects)
  assert set(rejects) == {"i5", "i6", "i8", "i9", "i10", "i11", "i13"}
  assert rejects["i5"].startswith("2 classes set") and rejects["i13"].startswith("0 classes set")
  assert rejects["i6"].startswith("unknown label: Typical Appearance='yes'")
  assert rejects["i8"].startswith("unknown label: study 's8' is not in train_study_level.csv")
  assert rejects["i9"].startswith("duplicate id 'i9_image' with different values")
  assert rejects["i11"].startswith("duplicate id 's11_study' with different values")
  assert rejects["i10"].startswith("file not found")
  # Atypical mapped by the spec, Indeterminate left out explicitly (its default).
  scan = readers.read_source(f"siim:{root / 'train_study_level.csv'};atypical appearance="
                             "pneumonia;Indeterminate Appearance=")
  assert [(Path(r.path).stem, r.label) for r in scan.records if r.label == "pneumonia"] == [
      ("i4", "pneumonia")]
  assert set(names(scan.excluded)) == {"i3"}
  with pytest.raises(ValueError, match="label must be one of"):
    readers.read_source(f"siim:{root};Typical Appearance=covid-19")


def test_challenge_downloads_build_through_the_dicom_decoder_and_join_a_patients_studies(tmp_path):
  rsna, siim = tmp_path / "rsna", tmp_path / "siim"
  write_rsna(rsna)
  write_siim(siim, "dicom")
  inverted = siim / "train" / "s7" / "series0" / "i7a.dcm"  # MONOCHROME1, as some sites store
  write_dicom(inverted, fake_xray(7).astype(np.uint16), photometric="MONOCHROME1",
              patient_id="P-s7")
  built = data.build_dataset(data_config(tmp_path, [f"rsna:{rsna}", f"siim:{siim}"],
                                         max_reject_fraction=0.9, clahe=False, image_size=8))
  files = [Path(f).stem for f in built.metadata["file"]]
  assert sorted(files) == ["d1", "e1", "i1", "i12", "i14", "i2", "i7a", "i7b", "n1", "p1"]
  assert {Path(r["file"]).stem for r in built.rejects} == {
      "c1", "t1", "u1", "m1", "o1", "b1", "i5", "i6", "i8", "i9", "i10", "i11", "i13"}
  # The stored image is preprocess's output of the file: MONOCHROME1 inverted, as decode does it.
  image = next(x["image"].numpy() for x in built.as_dataset() if files[x["id"]] == "i7a")
  expected = preprocess.process_file(str(inverted), PreprocessConfig(8, clahe=False)).image
  np.testing.assert_array_equal(image, expected)
  write_dicom(tmp_path / "plain.dcm", fake_xray(7).astype(np.uint16))
  plain = preprocess.process_file(str(tmp_path / "plain.dcm"), PreprocessConfig(8, clahe=False))
  assert np.abs(image.astype(int) - (255 - plain.image.astype(int))).max() <= 1  # resize rounding
  # Studies s1 and s2 are one patient (PatientID P1): one group, hence one split.
  group = dict(zip(files, built.metadata["patient_group"], strict=True))
  assert group["i1"] == group["i2"] == group["i12"] != group["i7a"]


def test_missing_manifest_and_bad_source_spec_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="manifest.csv not found"):
    readers.read_source(f"manifest:{tmp_path / 'nowhere'}")
  with pytest.raises(ValueError, match="KIND:PATH"):
    readers.parse_source(f"zip:{tmp_path}")
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "manifest.csv").write_text("file,label\na.jpg,covid\n")
  with pytest.raises(ValueError, match="patient_id"):
    readers.read_source(f"manifest:{tmp_path / 'm'}")


def test_source_specs_from_config_strings(tmp_path, monkeypatch):
  monkeypatch.setenv("CXR_DATA", str(tmp_path / "elsewhere"))
  assert source_specs(()) == [f"manifest:{tmp_path / 'elsewhere'}"]
  assert source_specs(f"manifest:{tmp_path}/a,b,folder:{tmp_path}/c;X=covid") == [
      f"manifest:{tmp_path}/a,b", f"folder:{tmp_path}/c;X=covid"]
  assert source_specs((f"ieee8023:{tmp_path}",)) == [f"ieee8023:{tmp_path}"]


# ------------------------------------------------------------------ builds with bad input


@pytest.fixture
def messy_sources(tmp_path):
  """A manifest with every kind of bad input, plus a folder source sharing one file."""
  root = tmp_path / "messy"
  rows = good_manifest(root, per_class=6)
  ok, jpeg = cv2.imencode(".jpg", fake_xray(77))
  (root / "covid" / "truncated.jpg").write_bytes(jpeg.tobytes()[:300])
  (root / "covid" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9")
  (root / "normal" / "notes.png").write_text("not an image at all")
  (root / "normal" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
  write_dicom(root / "pneumonia" / "scan.dcm", np.tile(np.arange(0, 3000, 60), (40, 1)))
  cv2.imwrite(str(root / "pneumonia" / "deep.png"),
              np.tile(np.linspace(0, 60000, 30), (30, 1)).astype(np.uint16))
  rows += [("covid/truncated.jpg", "covid", "gen:t"), ("covid/corrupt.jpg", "covid", "gen:c"),
           ("normal/notes.png", "normal", "gen:n"), ("normal/broken.dcm", "normal", "gen:b"),
           ("normal/gone.jpg", "normal", "gen:g"), ("covid/img0.jpg", "cat", "gen:u"),
           ("pneumonia/scan.dcm", "pneumonia", "gen:d"), ("pneumonia/deep.png", "pneumonia",
                                                          "gen:16")]
  write_manifest(root, rows)
  folder = tmp_path / "other" / "COVID"
  folder.mkdir(parents=True)
  # Same patient in the folder source: one file duplicates covid/img1.jpg, one is new.
  (folder / "person5_a.jpg").write_bytes((root / "covid" / "img1.jpg").read_bytes())
  cv2.imwrite(str(folder / "person5_b.jpg"), fake_xray(55))
  return root, tmp_path / "other"


def test_every_bad_input_is_reported_with_its_reason(tmp_path, messy_sources):
  manifest, folder = messy_sources
  d = data_config(tmp_path, [f"manifest:{manifest}", f"folder:{folder}"], max_reject_fraction=0.5)
  built = data.build_dataset(d)
  reasons = {r["file"].rsplit("/", 1)[1]: r["reason"] for r in built.rejects}
  assert set(reasons) == {"truncated.jpg", "corrupt.jpg", "notes.png", "broken.dcm", "gone.jpg",
                          "img0.jpg"}
  assert "truncated" in reasons["truncated.jpg"]
  assert "not a decodable image" in reasons["corrupt.jpg"]
  assert "not a decodable image" in reasons["notes.png"]
  assert "unreadable DICOM" in reasons["broken.dcm"]
  assert "file not found" in reasons["gone.jpg"]
  assert "unknown label 'cat'" in reasons["img0.jpg"]
  # The duplicate is reported and kept once; valid DICOM and 16-bit PNG made it in.
  assert [(x["file"].rsplit("/", 1)[1], x["duplicate_of"].rsplit("/", 1)[1])
          for x in built.duplicates] == [("person5_a.jpg", "img1.jpg")]
  files = ["/".join(f.split("/")[-2:]) for f in built.metadata["file"]]
  assert files.count("covid/img1.jpg") == 1 and "COVID/person5_a.jpg" not in files
  assert {"pneumonia/scan.dcm", "pneumonia/deep.png", "COVID/person5_b.jpg"} <= set(files)
  assert built.num_examples == 18 + 2 + 1
  # The duplicate links the two sources' patients: one group, so one split.
  group = dict(zip(files, built.metadata["patient_group"], strict=True))
  assert group["covid/img1.jpg"] == group["COVID/person5_b.jpg"] == "gen:p01"
  assert group["covid/img2.jpg"] == "gen:p02"
  report = json.loads(built.report_path.read_text())
  assert report["rejects"] == built.rejects and report["duplicates"] == built.duplicates
  assert built.report_path.parent.parent.parent == tmp_path / "tfds"
  # Reused from the cache, with the same report.
  again = data.build_dataset(d)
  assert again.version == built.version and again.rejects == built.rejects


def test_too_many_rejects_fail_with_the_report(tmp_path, messy_sources):
  manifest, _ = messy_sources
  d = data_config(tmp_path, [f"manifest:{manifest}"], max_reject_fraction=0.1)
  with pytest.raises(data.DataBuildError, match=r"6 of 26 source files were rejected") as e:
    data.build_dataset(d)
  report = json.loads(e.value.report_path.read_text())
  assert len(report["rejects"]) == 6


def test_a_build_failing_before_decoding_still_names_the_undecodable_files(tmp_path, messy_sources):
  manifest, _ = messy_sources
  # 2 of 26 rows are missing / mislabelled (7.7 % > 5 %): the build stops before storing anything,
  # and its report names the 4 files that would not decode too.
  d = data_config(tmp_path, [f"manifest:{manifest}"], max_reject_fraction=0.05)
  with pytest.raises(data.DataBuildError, match=r"6 of 26 source files were rejected") as e:
    data.build_dataset(d)
  report = json.loads(e.value.report_path.read_text())
  assert {r["file"].rsplit("/", 1)[1] for r in report["rejects"]} == {
      "truncated.jpg", "corrupt.jpg", "notes.png", "broken.dcm", "gone.jpg", "img0.jpg"}


def test_empty_class_fails_clearly(tmp_path):
  root = tmp_path / "m"
  rows = [r for r in good_manifest(root) if r[1] != "normal"]
  write_manifest(root, rows)
  with pytest.raises(data.DataBuildError, match=r"\['normal'\] have no usable images"):
    data.build_dataset(data_config(tmp_path, [f"manifest:{root}"]))
  # A class whose every file is unreadable fails the same way, after decoding.
  for i in range(4):
    (root / "normal" / f"img{i}.jpg").write_text("broken")
  write_manifest(root, rows + [(f"normal/img{i}.jpg", "normal", f"gen:x{i}") for i in range(4)])
  with pytest.raises(data.DataBuildError, match="normal"):
    data.build_dataset(data_config(tmp_path, [f"manifest:{root}"], max_reject_fraction=0.9))


def test_changing_preprocessing_rebuilds_instead_of_reusing(tmp_path):
  root = tmp_path / "m"
  good_manifest(root)
  built = data.build_dataset(data_config(tmp_path, [f"manifest:{root}"], image_size=16))
  again = data.build_dataset(data_config(tmp_path, [f"manifest:{root}"], image_size=16))
  bigger = data.build_dataset(data_config(tmp_path, [f"manifest:{root}"], image_size=24))
  no_clahe = data.build_dataset(data_config(tmp_path, [f"manifest:{root}"], clahe=False))
  assert again.version == built.version
  assert len({built.version, bigger.version, no_clahe.version}) == 3
  image = next(iter(bigger.as_dataset()))["image"]
  assert tuple(image.shape) == (24, 24, 1)
  # A changed source file list is a new dataset too.
  cv2.imwrite(str(root / "normal" / "new.jpg"), fake_xray(99))
  write_manifest(root, [(f"{label}/img{i}.jpg", label, f"gen:p{c}{i}")
                        for c, label in enumerate(data.LABELS) for i in range(4)]
                 + [("normal/new.jpg", "normal", "gen:new")])
  grown = data.build_dataset(data_config(tmp_path, [f"manifest:{root}"], image_size=16))
  assert grown.version != built.version and grown.num_examples == built.num_examples + 1


def test_cli_prints_one_json_summary(tmp_path, capsys, messy_sources):
  manifest, folder = messy_sources
  rc = cli_main([f"--source=manifest:{manifest}", f"--source=folder:{folder}",
                 "--config.data.image_size=16", f"--config.data.data_dir={tmp_path / 'tfds'}",
                 "--config.data.max_reject_fraction=0.5", "--config.data.num_folds=2",
                 "--config.data.test_fraction=0.25"])
  assert rc == 0
  summary = json.loads(capsys.readouterr().out)
  assert set(summary["splits"]) == {"train", "val", "test"}
  assert sum(s["images"]["total"] for s in summary["splits"].values()) == 21
  assert len(summary["rejected"]) == 6 and len(summary["duplicates"]) == 1
  # Rejects found before decoding (missing file, unknown label) already exceed 1%: no build, yet
  # the one run names the undecodable files too (it used to name only the first two).
  rc = cli_main([f"--source=manifest:{manifest}", "--config.data.image_size=16",
                 f"--config.data.data_dir={tmp_path / 'tfds'}",
                 "--config.data.max_reject_fraction=0.01"])
  out = json.loads(capsys.readouterr().out)
  assert rc == 1 and "max_reject_fraction" in out["error"]
  assert {r["file"].rsplit("/", 1)[1] for r in out["rejected"]} == {
      "gone.jpg", "img0.jpg", "truncated.jpg", "corrupt.jpg", "notes.png", "broken.dcm"}
  rc = cli_main([f"--source=manifest:{tmp_path / 'nowhere'}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}"])
  out = json.loads(capsys.readouterr().out)
  assert rc == 1 and "manifest.csv not found" in out["error"]


def test_merge_patient_groups_joins_linked_groups():
  groups = np.array(["a", "b", "c", "d", "e"])
  merged = merge_patient_groups(groups, [("d", "b"), ("c", "d"), ("x", "e")])
  assert list(merged) == ["a", "b", "b", "b", "e"]
  assert merge_patient_groups(groups, []) is groups


def test_build_without_its_log_is_regenerated(tmp_path):
  root = tmp_path / "m"
  good_manifest(root)
  d = data_config(tmp_path, [f"manifest:{root}"])
  built = data.build_dataset(d)
  log = built.report_path.parent / "1.0.0" / "cxr_build.json"
  assert log.is_file()
  log.unlink()  # as if the process died between TFDS's write and ours
  again = data.build_dataset(d)
  assert log.is_file() and again.num_examples == built.num_examples == 12
  np.testing.assert_array_equal(again.metadata["sha1"], built.metadata["sha1"])
