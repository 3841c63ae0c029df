"""Twice transfer, data and metrics side: ChestX-ray14 findings, the NIH reader, findings splits.

Generated fixtures here; the same checks on the real cxr3 build are in test_data.py.
"""

import csv

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs.default import get_config
from cxr_jax import data
from cxr_jax.data import readers, splits
from cxr_jax.data.summary import split_summary
from cxr_jax.evaluate import findings_metrics
from tests.test_data_edge import data_config, fake_xray, good_manifest

NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position"]
# (image, finding labels, patient id, images folder): NIH's layout, patients over two folders.
NIH_ROWS = [
    ("00000001_000.png", "No Finding", "1", "images_001"),
    ("00000001_001.png", "Infiltration|Pneumonia", "1", "images_001"),
    ("00000002_000.png", "Atelectasis|Effusion", "2", "images_001"),
    ("00000003_000.png", "Pneumonia", "3", "images_002"),
    ("00000004_000.png", "Cardiomegaly", "4", "images_002"),
    ("00000005_000.png", "No Finding", "5", "images_002"),
    ("00000006_000.png", "Hernia|Mass", "6", "images_002"),
    ("00000007_000.png", "No Finding", "7", "images_002"),
]


def write_nih(root, rows=NIH_ROWS, extra_csv_rows=(), name="Data_Entry_2017_v2020.csv"):
  """An NIH ChestX-ray14 folder: the csv at the top, PNGs in images_00k/images/."""
  root.mkdir(parents=True, exist_ok=True)
  for i, (image, _, _, folder) in enumerate(rows):
    (root / folder / "images").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / folder / "images" / image), fake_xray(500 + i))
  with open(root / name, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(NIH_COLUMNS)
    for image, finding, patient, _ in rows:
      writer.writerow([image, finding, "0", patient, "58", "M", "PA"])
    for row in extra_csv_rows:
      writer.writerow(row)
  return root


# ------------------------------------------------------------------ findings, multi-hot


def test_findings_are_nih_order_then_no_finding():
  assert data.FINDINGS == (
      "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
      "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
      "Hernia", "No Finding")
  targets = data.multi_hot(["Infiltration|Pneumonia", "No Finding", "Hernia", "Mass|Mass"])
  assert targets.dtype == np.float32 and targets.shape == (4, 15)
  expected = np.zeros((4, 15), np.float32)
  expected[0, [3, 6]] = expected[1, 14] = expected[2, 13] = expected[3, 4] = 1
  np.testing.assert_array_equal(targets, expected)
  assert data.multi_hot(np.array([], dtype=str)).shape == (0, 15)


def test_multi_hot_names_the_bad_finding_and_the_allowed_ones():
  with pytest.raises(ValueError, match=r"text 1: unknown finding 'Pneumonitis'.*Pleural_Thickening"):
    data.multi_hot(["Mass", "Effusion|Pneumonitis"])
  with pytest.raises(ValueError, match=r"b\.png: empty findings string.*'No Finding'"):
    data.multi_hot(["Mass", ""], where=["a.png", "b.png"])
  with pytest.raises(ValueError, match="unknown finding 'pneumonia'"):  # NIH's case only
    data.multi_hot(["pneumonia"])
  with pytest.raises(ValueError, match="'No Finding' combined with findings"):
    data.multi_hot(["No Finding|Mass"])
  with pytest.raises(TypeError, match="not one string"):
    data.multi_hot("Mass")


def test_cxr3_nih_findings_parse_and_agree_with_its_labels(cxr3_root):
  records = [r for r in readers.read_manifest(cxr3_root).records
             if r.source == readers.NIH_SOURCE]
  assert len(records) == 832 and len({r.patient_group for r in records}) == 581
  data.multi_hot([r.findings for r in records], where=[r.path for r in records])
  # The NIH reader's rule gives cxr3's own labels for its NIH images.
  assert all(readers.nih_label(r.findings.split("|")) == r.label for r in records)
  assert all(r.patient_id.startswith("nih:") and str(int(r.patient_id[4:])) == r.patient_id[4:]
             for r in records)


# ------------------------------------------------------------------ NIH reader


def test_nih_reader_labels_patients_and_findings(tmp_path):
  root = write_nih(tmp_path / "nih")
  scan = readers.read_source(f"nih:{root}")
  assert not scan.rejects and not scan.excluded
  by_name = {r.path.rsplit("/", 1)[1]: r for r in scan.records}
  assert list(by_name) == [row[0] for row in NIH_ROWS]
  labels = {name: r.label for name, r in by_name.items()}
  assert labels == {"00000001_000.png": "normal", "00000001_001.png": "pneumonia",
                    "00000002_000.png": "", "00000003_000.png": "pneumonia",
                    "00000004_000.png": "", "00000005_000.png": "normal",
                    "00000006_000.png": "", "00000007_000.png": "normal"}
  first = by_name["00000001_001.png"]
  assert (first.patient_id, first.patient_group, first.source, first.findings) == (
      "nih:1", "nih:1", "nih-chestxray14", "Infiltration|Pneumonia")
  assert first.path == str(root / "images_001" / "images" / "00000001_001.png")
  # The csv itself works as the source path too.
  assert readers.read_source(f"nih:{root / 'Data_Entry_2017_v2020.csv'}").records == scan.records


def test_nih_reader_rejects_bad_rows_naming_file_and_line(tmp_path):
  bad = [["00000009_000.png", "Mass", "0", "9"],                  # image missing
         ["00000001_000.png", "Pneumonitis", "0", "1"],           # unknown finding
         ["00000005_000.png", "Mass", "0", "abc"],                # bad patient id
         ["00000007_000.png", "", "0", "7"],                      # empty findings
         ["00000003_000.png"],                                    # short row
         ["", "Mass", "0", "12"]]                                 # no image name
  root = write_nih(tmp_path / "nih", extra_csv_rows=bad)
  scan = readers.read_nih(root)
  assert len(scan.records) == len(NIH_ROWS)
  reasons = [(r.file.rsplit("/", 1)[1], r.reason) for r in scan.rejects]
  assert [name for name, _ in reasons] == ["00000009_000.png", "00000001_000.png",
                                           "00000005_000.png", "00000007_000.png",
                                           "00000003_000.png", "nih"]
  csv_name = "Data_Entry_2017_v2020.csv"
  assert "file not found anywhere below" in reasons[0][1] and f"{csv_name} line 10" in reasons[0][1]
  assert "unknown finding 'Pneumonitis'" in reasons[1][1] and "line 11" in reasons[1][1]
  assert "Patient ID 'abc'" in reasons[2][1]
  assert "empty findings string" in reasons[3][1]
  assert "empty findings string" in reasons[4][1] and "line 14" in reasons[4][1]
  assert "empty Image Index" in reasons[5][1]


def test_nih_reader_missing_ambiguous_or_malformed_csv(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No Data_Entry_2017\*\.csv at .*empty"):
    readers.read_source(f"nih:{tmp_path / 'empty'}")
  with pytest.raises(FileNotFoundError, match="No Data_Entry_2017"):
    readers.read_source(f"nih:{tmp_path / 'gone.csv'}")
  root = write_nih(tmp_path / "nih")
  write_nih(root, name="Data_Entry_2017.csv")
  with pytest.raises(ValueError, match=r"Several Data_Entry_2017\*\.csv .*nih:"):
    readers.read_source(f"nih:{root}")
  odd = tmp_path / "odd"
  odd.mkdir()
  (odd / "Data_Entry_2017.csv").write_text("Image Index,Labels,Patient ID\n")
  with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv lacks the column\(s\) "
                                       r"\['Finding Labels'\]"):
    readers.read_source(f"nih:{odd}")


def test_duplicate_image_names_below_the_nih_folder_are_rejected(tmp_path):
  root = write_nih(tmp_path / "nih")
  copy = root / "images_009" / "images"
  copy.mkdir(parents=True)
  (copy / "00000004_000.png").write_bytes(
      (root / "images_002" / "images" / "00000004_000.png").read_bytes())
  scan = readers.read_nih(root)
  assert [r.reason.split(" is found")[0] for r in scan.rejects] == ["00000004_000.png"]
  assert "found 2 times" in scan.rejects[0].reason


# ------------------------------------------------------------------ build and splits


@pytest.fixture
def covid_and_nih(tmp_path):
  """A built dataset of a 3-class manifest (one image of NIH patient 2, in another group) and
  a ChestX-ray14 folder."""
  root = tmp_path / "m"
  good_manifest(root, per_class=4)
  cv2.imwrite(str(root / "normal" / "nih2.jpg"), fake_xray(999))
  with open(root / "manifest.csv", "a", newline="") as f:
    csv.writer(f).writerow(["normal/nih2.jpg", "normal", "nih:2", "gen:linked", "gen"])
  nih = write_nih(tmp_path / "nih")
  cfg = data_config(tmp_path, [f"manifest:{root}", f"nih:{nih}"])
  return data.build_dataset(cfg), cfg


def test_build_carries_findings_and_no_label(covid_and_nih):
  built, cfg = covid_and_nih
  md = built.metadata
  assert built.num_examples == 13 + len(NIH_ROWS) and not built.rejects
  by_name = {f.rsplit("/", 1)[1]: i for i, f in enumerate(md["file"])}
  for image, finding, patient, _ in NIH_ROWS:
    i = by_name[image]
    assert md["findings"][i] == finding and md["source"][i] == "nih-chestxray14"
    assert md["patient_id"][i] == f"nih:{patient}"
    expected = readers.nih_label(finding.split("|"))
    assert md["label"][i] == (data.LABELS.index(expected) if expected else data.NO_LABEL)
  assert all(md["findings"][by_name[f"img{i}.jpg"]] == "" for i in range(4))
  stored = {int(ex["id"]): int(ex["label"]) for ex in built.as_dataset(decode_image=False)}
  assert [stored[i] for i in md["id"]] == list(md["label"])
  # Patient 2 is an NIH image and a manifest row in another group: the groups are joined.
  assert md["patient_group"][by_name["nih2.jpg"]] == "gen:linked"
  assert md["patient_group"][by_name["00000002_000.png"]] == "gen:linked"
  # 3-class splits leave the unlabelled images out and cover every labelled one.
  three = data.make_splits(md, cfg)
  taken = np.concatenate(list(three.values()))
  assert sorted(taken) == list(np.flatnonzero(md["label"] != data.NO_LABEL))
  with pytest.raises(ValueError, match="3 example.*no 3-class label"):
    splits.assign_groups(md, cfg)


def test_findings_splits_leave_out_the_covid_test_groups(covid_and_nih):
  built, cfg = covid_and_nih
  md = built.metadata
  stage1 = split_config(num_folds=2, test_fraction=0.25)
  # Seed 2 puts patient 2 in the 3-class test split through its manifest image only: its
  # unlabelled NIH image must leave the findings stage too.
  for seed in range(4):
    cfg.split_seed = seed
    excluded = set(data.held_out_groups(md, cfg))
    assert data.test_groups is data.held_out_groups
    assert ("gen:linked" in excluded) == (seed == 2)
    assert excluded == set(md["patient_group"][data.make_splits(md, cfg)["test"]])
    found = data.make_findings_splits(md, stage1, exclude_groups=excluded)
    taken = np.concatenate(list(found.values()))
    assert not excluded & set(md["patient_group"][taken])
    nih = np.flatnonzero(md["source"] == "nih-chestxray14")
    assert sorted(taken) == [i for i in nih if md["patient_group"][i] not in excluded]
    splits.check_disjoint(md, found)
    assert split_summary(md, taken)["images"]["no_label"] == sum(md["label"][taken] == -1)


def split_config(**overrides):
  d = get_config().data
  for key, value in overrides.items():
    setattr(d, key, value)
  return d


def synthetic_metadata(num_patients=30, seed=0):
  """Metadata of NIH examples (1-3 images per patient) followed by 10 covid examples."""
  rng = np.random.default_rng(seed)
  rows = []
  for p in range(num_patients):
    for _ in range(rng.integers(1, 4)):
      finding = "No Finding" if rng.random() < 0.5 else rng.choice(["Mass", "Effusion|Pneumonia"])
      label = {"No Finding": 1, "Effusion|Pneumonia": 2}.get(finding, -1)
      rows.append((label, f"nih:{p}", "nih-chestxray14", finding))
  rows += [(0, f"ieee8023:{p}", "ieee8023", "COVID-19") for p in range(10)]
  label, group, source, findings = zip(*rows, strict=True)
  return dict(id=np.arange(len(rows)), label=np.array(label), patient_group=np.array(group),
              source=np.array(source), findings=np.array(findings),
              file=np.array([f"/x/{i}.png" for i in range(len(rows))]))


def test_findings_folds_partition_patients_deterministically():
  md = synthetic_metadata()
  exclude = {"nih:0", "nih:5"}
  vals, tests = [], []
  for fold in range(3):
    cfg = split_config(num_folds=3, fold=fold, test_fraction=0.2)
    found = data.make_findings_splits(md, cfg, exclude)
    again = data.make_findings_splits(md, cfg, list(exclude))
    assert all(np.array_equal(found[k], again[k]) for k in found)
    assert set(md["source"][np.concatenate(list(found.values()))]) == {"nih-chestxray14"}
    vals.append(found["val"])
    tests.append(found["test"])
  assert all(np.array_equal(tests[0], t) for t in tests)  # the fold never moves test groups
  nih = [i for i in range(len(md["id"])) if md["source"][i] == "nih-chestxray14"
         and md["patient_group"][i] not in exclude]
  assert sorted(np.concatenate(vals + tests[:1])) == nih
  # train_fraction keeps a nested share of the training groups.
  cfg.train_fraction = 0.5
  half = data.make_findings_splits(md, cfg, exclude)["train"]
  assert 0 < len(half) < len(found["train"]) and set(half) <= set(found["train"])


def test_findings_splits_refuse_balance_bad_findings_and_leaks():
  md = synthetic_metadata()
  cfg = split_config(balance=True)
  with pytest.raises(ValueError, match="balance=True has no meaning"):
    data.make_findings_splits(md, cfg, set())
  cfg.balance = False
  md["findings"][3] = "Pneumonitis"
  with pytest.raises(ValueError, match=r"example 3 \(/x/3\.png\): unknown finding"):
    data.make_findings_splits(md, cfg, set())
  md["findings"][3] = ""  # an NIH example without findings text is simply not taken
  found = data.make_findings_splits(md, cfg, set())
  assert 3 not in np.concatenate(list(found.values()))
  with pytest.raises(AssertionError, match=r"Excluded patient groups in the findings train"):
    splits.check_excluded(md, found, {md["patient_group"][found["train"][0]]})
  everyone = set(md["patient_group"])
  assert all(len(v) == 0 for v in data.make_findings_splits(md, cfg, everyone).values())


# ------------------------------------------------------------------ metrics


def test_findings_metrics_equal_sklearn_and_survive_one_class_columns():
  rng = np.random.default_rng(0)
  targets = (rng.random((60, 15)) < 0.3).astype(np.float32)
  targets[:, 13] = 0   # Hernia: no positives
  targets[:, 14] = 1   # No Finding: no negatives (not realistic, but must not crash)
  probs = np.clip(targets * 0.3 + rng.random((60, 15)) * 0.7, 0, 1)
  out = findings_metrics(probs, targets)
  assert out["num_examples"] == 60 and out["undefined"] == ["Hernia", "No Finding"]
  for k in (0, 6, 12):
    name = data.FINDINGS[k]
    assert out["per_finding"][name]["auc"] == pytest.approx(roc_auc_score(targets[:, k],
                                                                          probs[:, k]))
    assert out["per_finding"][name]["positives"] == int(targets[:, k].sum())
    assert out["per_finding"][name]["negatives"] == 60 - int(targets[:, k].sum())
  hernia = out["per_finding"]["Hernia"]
  assert np.isnan(hernia["auc"]) and (hernia["positives"], hernia["negatives"]) == (0, 60)
  assert out["per_finding"]["No Finding"]["positives"] == 60
  defined = [roc_auc_score(targets[:, k], probs[:, k]) for k in range(13)]
  assert out["num_defined"] == 13 and out["mean_auc"] == pytest.approx(np.mean(defined))
  one = findings_metrics([[0.2], [0.9]], [[0], [0]], names=["Mass"])
  assert np.isnan(one["mean_auc"]) and one["num_defined"] == 0


def test_findings_metrics_reject_malformed_inputs():
  with pytest.raises(ValueError, match=r"\[N, K\]"):
    findings_metrics(np.zeros((4, 15)), np.zeros((4, 14)))
  with pytest.raises(ValueError, match="2 finding names for 15 columns"):
    findings_metrics(np.zeros((4, 15)), np.zeros((4, 15)), names=["a", "b"])
  with pytest.raises(ValueError, match="multi-hot"):
    findings_metrics(np.zeros((2, 1)), [[0.5], [1]], names=["Mass"])
  with pytest.raises(ValueError, match="NaN"):
    findings_metrics([[np.nan], [0.1]], [[0], [1]], names=["Mass"])
