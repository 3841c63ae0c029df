"""Every config in configs/ loads, and the multi-source ones are the quick start on more data."""

import importlib
from pathlib import Path

import pytest

from cxr_jax import paths
from cxr_jax.config import get_config as default_config

CONFIGS = sorted(p.stem for p in (Path(__file__).parent.parent / "configs").glob("*.py")
                 if p.stem != "__init__")


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_declares_only_documented_fields(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  # A field the default config lacks would be undocumented (cxr_jax/config.py documents each).
  unknown = set(_flat(config)) - set(_flat(default_config()))
  assert not {f for f in unknown if not f.startswith("experiment.stage1.")}, unknown


def test_multisource_is_the_quick_start_on_cxr3_and_cxr_plus(monkeypatch, tmp_path):
  from configs import multisource, quickstart, robustness_multisource

  monkeypatch.setenv("CXR_PLUS", str(tmp_path / "plus"))
  c, q = _flat(multisource.get_config()), _flat(quickstart.get_config())
  assert c["data.sources"] == (f"manifest:{paths.default_data_root()}",
                               f"manifest:{tmp_path / 'plus'}")
  assert c["data.stratify"] == "source_label"
  changed = {k for k in q if c[k] != q[k]}
  # The data, and the OOD score chosen by this data's leave-one-source-out (knn; cxr3's: knn_blocks).
  assert changed == {"data.sources", "data.stratify", "experiment.loso_sources", "eval.ood_score"}
  assert (c["eval.ood_score"], q["eval.ood_score"]) == ("knn", "knn_blocks")
  r = _flat(robustness_multisource.get_config("measures=baseline+dann"))
  assert r["experiment.measures"] == "baseline,dann"
  assert {k for k in c if r[k] != c[k]} == {"experiment.num_folds", "experiment.measures"}


def test_multisource_robust_is_multisource_plus_the_measures_the_ablation_names():
  # The recipe must train exactly what the ablation and leave-one-source-out measured: the same
  # overrides as its measures, nothing else moved.
  from configs import multisource, multisource_robust
  from cxr_jax.experiments import robustness

  c, m = _flat(multisource_robust.get_config()), _flat(multisource.get_config())
  measured = {**robustness.MEASURES["lung_crop"], **robustness.MEASURES["group_dro"]}
  assert {k for k in m if c[k] != m[k]} == set(measured)
  assert {k: c[k] for k in measured} == measured
