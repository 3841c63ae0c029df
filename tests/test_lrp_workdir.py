"""`explain_workdir(method="lrp")` writes LRP overlays beside the Grad-CAM ones."""

import json

from cxr_jax.explain import explain_workdir
from tests.test_evaluate_workdir import workdir  # noqa: F401  (the saved run fixture)


def test_explain_workdir_lrp(workdir):  # noqa: F811
  result = explain_workdir(workdir, per_class=1, method="lrp")
  out = workdir / "explain_test_lrp"
  index = json.loads((out / "index.json").read_text())
  assert index["method"] == "lrp" and index["layer"] == "input"
  assert index["images"] and sum(result["counts"].values()) == len(index["images"])
  for entry in index["images"]:
    assert entry["explained_class"] == max(entry["probs"], key=entry["probs"].get)
    assert (out / entry["overlay"]).read_bytes()[:4] == b"\x89PNG"
