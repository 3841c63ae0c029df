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
