"""The accelerator benchmark (`benchmarks/accelerator_bench.py`): its FLOP count against VGG16's
published one, its peaks, and a whole run on the CPU devices at 32 px: the script a GPU session
runs once must work before it gets there. And benchmarks/README.md's list of the scripts."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import accelerator_bench, vs_pytorch


def test_step_flops_are_vgg16s():
  """VGG16's 13 convolutions at 224 px: 15.35 GMACs per image forward (Simonyan & Zisserman's
  network as counted by e.g. torchvision's and fvcore's tables: 15.5 G with the classifier's 0.12);
  FT2 trains blocks 4-5 (weight gradients of their 6 convolutions; input gradients of all but block
  4's first, which nothing below needs)."""
  fwd = vs_pytorch.step_flops(224, 1, 0)
  assert fwd["forward"] == pytest.approx(2 * 15.3466e9, rel=1e-4)
  assert fwd["weight_grad"] == fwd["input_grad"] == 0
  ft2 = vs_pytorch.step_flops(224, 4, 2)
  block = lambda h, ci, co: 2 * 4 * h * h * 9 * ci * co
  wgrad = block(28, 256, 512) + 2 * block(28, 512, 512) + 3 * block(14, 512, 512)
  assert ft2["weight_grad"] == wgrad
  assert ft2["input_grad"] == wgrad - block(28, 256, 512)
  assert ft2["total"] == ft2["forward"] + 2 * wgrad - block(28, 256, 512)


def test_spec_peaks_by_device_kind():
  peak = accelerator_bench.spec_peak
  assert peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert peak("NVIDIA H100 PCIe", "bfloat16") == 756e12   # not the SXM part's
  assert peak("NVIDIA H200", "float32") == 495e12
  assert peak("TPU v4", "float32") is None
  assert peak("cpu", "bfloat16") is None


def test_accelerator_bench_runs_on_cpu_devices_without_tensorflow(tmp_path):
  """The whole script on 2 host devices (pmap over both, as over a machine's GPUs) at 32 px; its
  rates and MFU follow from its times, and nothing it imports needs TensorFlow, clu or orbax,
  which the GPU machines' image lacks."""
  out = tmp_path / "bench.json"
  probe = (
      "import runpy, sys\n"
      "sys.argv = ['accelerator_bench.py', *sys.argv[1:]]\n"
      "runpy.run_path('benchmarks/accelerator_bench.py', run_name='__main__')\n"
      "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'clu', 'orbax'})\n"
      "sys.exit(99 if heavy else 0)\n")
  proc = subprocess.run(
      [sys.executable, "-c", probe, "--sizes", "32", "--degrees", "2", "--dtypes", "float32",
       "--steps", "1", "--repeats", "1", "--matmul-size", "64", "--batch", "1", "--out", str(out)],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["local_devices"] == 2 and result["device_kind"] == "cpu"
  assert [r["what"] for r in result["runs"]] == ["FT2 train step", "forward"]
  ceiling = result["ceiling"]["float32"]["flops_per_s_per_device"]
  for run in result["runs"]:
    assert run["batch"] == 2 and run["per_device_batch"] == 1
    assert run["images_per_s"] == pytest.approx(2 / run["step_s"])
    assert run["mfu"]["spec"] is None
    assert run["mfu"]["measured"] == pytest.approx(
        run["model_flops_per_step"] / run["step_s"] / (2 * ceiling))
  assert result["runs"][0]["model_flops_per_step"] == vs_pytorch.step_flops(32, 2, 2)["total"]


def test_every_benchmark_is_listed_in_the_benchmarks_readme():
  """benchmarks/README.md's table names every script in benchmarks/ (and no script that is gone),
  so the list a reader picks a benchmark from stays the folder's."""
  folder = Path(vs_pytorch.__file__).resolve().parent
  scripts = {p.name for p in folder.iterdir()
             if p.suffix in (".py", ".cc") and p.name not in ("__init__.py", "machine.py")}
  listed = set(re.findall(r"^\| `([\w.]+\.(?:py|cc))` \|", (folder / "README.md").read_text(),
                          flags=re.MULTILINE))
  assert listed == scripts
