"""Package boundaries and the one flag system: the installed package never needs the repository
root (configs/ is not in the wheel), and its command lines take the config as launch.py does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cxr_jax
from cxr_jax import cli
from cxr_jax.config import get_config
from cxr_jax.data import __main__ as data_cli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(cxr_jax.__file__).resolve().parent


def entry_points() -> list[str]:
  """Every module of the package that runs as `python -m`: a __main__.py or a __main__ guard."""
  names = []
  for path in sorted(PACKAGE.rglob("*.py")):
    if path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text():
      names.append(".".join(("cxr_jax", *path.relative_to(PACKAGE).with_suffix("").parts)))
  return names


ISOLATED = r"""
import importlib, json, sys
site, modules = sys.argv[1], json.loads(sys.argv[2])
import cxr_jax
assert cxr_jax.__file__.startswith(site), cxr_jax.__file__  # the package under test, not another
helped = []
for name in modules:
  module = importlib.import_module(name)
  try:  # parsing the command line loads the default config, where configs/ used to be imported
    module.main(["--help"])
  except SystemExit as e:
    assert e.code in (0, None), (name, e.code)
    helped.append(name)
from cxr_jax.data.__main__ import parse_args
config = parse_args(["--config.data.image_size=48", "--source=manifest:/x"])
print(json.dumps(dict(helped=helped, image_size=config.data.image_size,
                      sources=list(config.data.sources),
                      configs=sorted(m for m in sys.modules if m.split(".")[0] == "configs"))))
"""


def test_package_and_every_entry_point_work_without_the_repository_on_sys_path(tmp_path):
  modules = entry_points()
  assert {"cxr_jax.data.__main__", "cxr_jax.ops.tune", "cxr_jax.predict", "cxr_jax.weights.__main__",
          "cxr_jax.lungs.__main__"} <= set(modules)
  site = tmp_path / "site"
  site.mkdir()
  (site / "cxr_jax").symlink_to(PACKAGE, target_is_directory=True)  # the package, nothing beside it
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  env.update(PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
  # -P: neither the working directory nor a script's folder goes on sys.path.
  run = subprocess.run([sys.executable, "-P", "-c", ISOLATED, str(site), json.dumps(modules)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["configs"] == []
  assert out["helped"] == modules
  assert out["image_size"] == 48 and out["sources"] == ["manifest:/x"]


def test_configs_default_is_the_package_config():
  from configs import default

  assert default.get_config().to_dict() == get_config().to_dict()


def test_data_cli_takes_the_config_and_its_overrides():
  config = data_cli.parse_args([])
  assert config.to_dict() == get_config().to_dict()  # the package's default config
  config = data_cli.parse_args(["--config.data.image_size=48", "--noconfig.data.clahe",
                                "--source=manifest:/a", "--source", "folder:/b"])
  assert config.data.image_size == 48 and config.data.clahe is False
  assert config.data.sources == ("manifest:/a", "folder:/b")
  # Another config file, as launch.py takes it; --source appends to its sources.
  config = data_cli.parse_args([f"--config={REPO / 'configs' / 'quickstart.py'}",
                                "--config.data.sources=manifest:/a", "--source=folder:/b",
                                "--config.data.num_folds=2"])
  assert config.data.image_size == 128 and config.data.num_folds == 2
  assert config.data.sources == ("manifest:/a", "folder:/b")


@pytest.mark.parametrize("argv, message", [
    (["--image_size=16"], "--config.data.image_size="),  # a former flag: its override
    (["--num_folds=2"], "--config.data.num_folds=... or --config.experiment.num_folds="),
    (["--config.data.nope=1"], "names no config field"),
    (["--config.data.image_size=big"], "image_size"),
    (["stray"], "unexpected arguments"),
    (["--config=/nowhere/config.py"], "/nowhere/config.py"),
])
def test_data_cli_usage_errors_exit_2_with_a_message(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    data_cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "python -m cxr_jax.data: error:" in err and message in err


def test_cli_parse_leaves_absl_global_flags_alone():
  from absl import flags

  before = set(flags.FLAGS)
  for _ in range(2):  # a private FlagValues each time: no duplicate-flag error
    assert cli.parse(["--config.train.batch_size=4"], prog="p", doc="").config.train.batch_size == 4
  assert set(flags.FLAGS) == before


README_LINE = r"""
import importlib.util, json, shlex, sys
sys.argv = args = shlex.split(sys.argv[1])[1:]  # launch.py and its flags, as a run sees them
spec = importlib.util.spec_from_file_location("launch", args[0])
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)
launch.parse_flags(args)
from cxr_jax.data.__main__ import parse_args
overrides = [a for a in args[1:] if a.startswith("--config")]  # the data CLI's share of the line
print(json.dumps(dict(launch=list(launch.FLAGS.config.data.sources),
                      data=list(parse_args(overrides).data.sources))))
"""


def test_the_readme_command_lines_for_several_sources_parse():
  lines = [line for line in (REPO / "README.md").read_text().splitlines()
           if "launch.py" in line and "--config.data.sources=" in line]
  # Both forms the README shows: the comma-separated list and ml_collections' quoted tuple.
  assert len(lines) == 2 and "sources=manifest:" in lines[0] and "sources=('" in lines[1]
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  for line in lines:
    # From the repository root, as a user runs them: `python launch.py` puts the script's folder
    # on sys.path and `python -m` the working directory, where configs/quickstart.py imports from.
    run = subprocess.run([sys.executable, "-c", README_LINE, line], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (line, run.stderr[-3000:])
    out = json.loads(run.stdout.strip().splitlines()[-1])
    expected = ["manifest:../shared/data/cxr3", "manifest:../shared/data/cxr-plus"]
    assert out == dict(launch=expected, data=expected), line


@pytest.mark.parametrize("argv, field, expected", [
    (["--config.data.sources=manifest:/a,folder:/b"], "data.sources", ("manifest:/a", "folder:/b")),
    (["--config.data.sources", "manifest:/a, folder:/b"], "data.sources",
     ("manifest:/a", "folder:/b")),
    (["--config.data.sources=('manifest:/a','folder:/b')"], "data.sources",
     ("manifest:/a", "folder:/b")),
    (["--config.data.sources='manifest:/a,b'"], "data.sources", ("manifest:/a,b",)),  # quoted: one
    (["--config.data.sources=folder:/k;Viral Pneumonia=pneumonia"], "data.sources",
     ("folder:/k;Viral Pneumonia=pneumonia",)),  # a space: ml_collections alone fails on it
    (["--config.data.sources="], "data.sources", ()),
    (["--config.experiment.variants=single,twice"], "experiment.variants", ("single", "twice")),
    (["--config.model.keep_neurons=pneumonia:Pneumonia,normal:No Finding"], "model.keep_neurons",
     ("pneumonia:Pneumonia", "normal:No Finding")),
    (["--config.model.hidden=256,128"], "model.hidden", (256, 128)),  # a literal: as before
    (["--config.model.hidden=64"], "model.hidden", (64,)),
    (["--config.experiment.loso_sources=a,b"], "experiment.loso_sources", "a,b"),  # a string field
])
def test_a_tuple_field_takes_a_comma_separated_list(argv, field, expected):
  config = cli.parse(argv, prog="p", doc="").config
  section, name = field.split(".")
  assert config[section][name] == expected


def test_launch_modes_come_from_one_table_and_external_is_refused_where_unused(tmp_path):
  from cxr_jax import modes

  repo = Path(__file__).resolve().parent.parent
  out = subprocess.run([sys.executable, "launch.py", "--helpfull"], cwd=repo, capture_output=True,
                       text=True, timeout=120)
  flat = "".join(out.stdout.split())  # absl wraps the help, also at hyphens
  for name, mode in modes.MODES.items():
    assert "".join(f"{name} ({mode.doc})".split()) in flat, name
  out = subprocess.run([sys.executable, "launch.py", "--config=configs/smoke.py",
                        f"--workdir={tmp_path}", "--mode=cv", "--external=manifest:/x"],
                       cwd=repo, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "--external serves --mode=train/evaluate/audit/loso/robustness, not --mode=cv" in out.stderr


def test_launch_prints_the_headline_then_each_external_sets_gap():
  from cxr_jax import modes

  result = {"num_examples": 10, "accuracy": 0.8, "per_class": {"covid": {"roc_auc": 0.9}},
            "external": {"kids": {"images": 4, "accuracy": 0.25, "by_source": {"kermany": {
                "images": 4, "called": {"covid": 0.75, "normal": 0.25},
                "sensitivity": {"normal": 0.25}, "covid_auc": None,
                "normal_vs_pneumonia_auc": None}}}}}
  head, *external = modes.MODES["train"].printed(result).split("\n}\n")
  assert json.loads(head + "}") == {"num_examples": 10, "accuracy": 0.8,
                                    "roc_auc": {"covid": 0.9}}
  assert external == ["external kids: 4 images, accuracy 0.250\n"
                      "  kermany (4): called 75 % covid, 25 % normal; sensitivity normal 0.25"]
  # A mode that does not print external sets (cv) prints its headline alone.
  assert "external kids" not in modes.MODES["cv"].printed(result)
