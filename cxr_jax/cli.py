"""The package's command lines take the configuration the way launch.py does: `--config=FILE`
(a config file such as configs/quickstart.py; default cxr_jax/config.py, where every field is
documented) and `--config.a.b=value` overrides (ml_collections config_flags), plus the few flags a
command defines itself. A config field is never declared again as a flag of its own.

A tuple field also takes a comma-separated list: `--config.data.sources=manifest:/a,folder:/b` is
`--config.data.sources="('manifest:/a','folder:/b')"` (see `comma_lists`; launch.py parses its
flags through it too).

Flags are parsed into a private absl FlagValues: `main(argv)` can run repeatedly in one process
(tests) and leaves absl's global FLAGS, which launch.py uses, alone.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path

from absl import flags
from ml_collections import config_flags

DEFAULT_CONFIG = str(Path(__file__).resolve().with_name("config.py"))
HELP = ("-h", "-help", "--help", "--helpfull", "-?")


def parse(argv, *, prog: str, doc: str,
          define: Callable[[flags.FlagValues], None] | None = None) -> flags.FlagValues:
  """Parsed flags of `argv` (without the program name): `.config` the ConfigDict with its
  overrides applied, and whatever `define(flag_values)` added. --help prints `doc` and the flags,
  then exits 0; an unknown flag, a bad value or a positional argument exits 2 with a message."""
  argv = [prog, *comma_lists(argv)]
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Config file (default: the package's, cxr_jax/config.py; or "
        "configs/*.py[:args]). Override any field with --config.a.b=value.",
        flag_values=fv, lock_config=True, sys_argv=argv)
    if define is not None:
      define(fv)
    if any(a in HELP for a in argv[1:]):
      print(doc.rstrip() + "\n\nflags:\n" + fv.get_help(include_special_flags=False))
      raise SystemExit(0)
    rest = fv(argv)
    fv.config.keys()  # a config file that failed to load raises here
  except (KeyError, AttributeError) as e:  # --config.a.b of a field the config does not have
    _usage_error(prog, f"a --config.* override names no config field: {e.args[0] if e.args else e}")
  except (flags.Error, OSError, ValueError) as e:
    _usage_error(prog, f"{e}{_hint(e)}")
  if rest[1:]:
    _usage_error(prog, f"unexpected arguments {rest[1:]}")
  return fv


def comma_lists(argv: list[str]) -> list[str]:
  """argv with the value of each tuple field's override (`--config.F=a,b` or `--config.F a,b`, F
  a tuple field of cxr_jax/config.py) written as the tuple literal ml_collections parses,
  ('a', 'b'); ml_collections alone fails on `manifest:/a,folder:/b` and reads `single,twice` as
  one element. A value that already is a Python literal ("('a','b')", "256,128", "'a,b'") is left
  as it is, so an element holding a comma takes the quoted tuple form."""
  from cxr_jax.config import get_config

  fields = {f"config.{path}" for path, value in _fields(get_config()) if isinstance(value, tuple)}
  out = list(argv)
  for i, arg in enumerate(out):
    name, eq, value = arg.partition("=")
    if not (arg.startswith("-") and name.lstrip("-") in fields):
      continue
    if eq:
      out[i] = f"{name}={_tuple_literal(value)}"
    elif i + 1 < len(out):
      out[i + 1] = _tuple_literal(out[i + 1])
  return out


def _tuple_literal(value: str) -> str:
  try:
    ast.literal_eval(value)
    return value
  except (ValueError, SyntaxError):
    return repr(tuple(part.strip() for part in value.split(",") if part.strip()))


def _usage_error(prog: str, message: str):
  print(f"{prog}: error: {message}\n(--help lists the flags)", file=sys.stderr)
  raise SystemExit(2)


def _hint(error) -> str:
  """For a flag named like a config field (e.g. the data CLI's former --image_size): its override."""
  name = getattr(error, "flagname", None)
  if not name:
    return ""
  from cxr_jax.config import get_config

  name = name.replace("-", "_")
  paths = [p for p, _ in _fields(get_config()) if p.rsplit(".", 1)[-1] == name]
  return f" (a config field: {' or '.join(f'--config.{p}=...' for p in paths)})" if paths else ""


def _fields(config, prefix=""):
  """(dotted path, value) of every leaf field."""
  for key, value in config.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _fields(value, path + ".")
    else:
      yield path, value
