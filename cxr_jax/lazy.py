"""Packages whose names load their module on first use (PEP 562).

`cxr_jax.data`, `cxr_jax.evaluate` and `cxr_jax.explain` re-export names from their modules, and
some of those modules import heavy libraries (TensorFlow for the dataset builder and pipeline,
about 6 s; scikit-learn and SciPy for the metrics, about 1 s). Prediction needs a few light names
of them; importing the package must not import the rest.
"""

from __future__ import annotations

import importlib


def attach(package: str, homes: dict[str, str]):
  """(__getattr__, __dir__, __all__) for `package`, each name in `homes` loaded from its module
  (`package.<module>`) when first looked up, then kept in the package's namespace. A name that is
  also one of the modules' names cannot be lazy (importing the module binds the module to it)."""
  clash = set(homes) & set(homes.values())
  if clash:
    raise ValueError(f"{package}: {sorted(clash)} name both a module and a lazy attribute; import "
                     "them in the package's __init__ instead")

  def __getattr__(name: str):
    if name not in homes:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(package)
    value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
    setattr(module, name, value)   # later look-ups skip __getattr__
    return value

  def __dir__():
    return sorted(set(vars(importlib.import_module(package))) | set(homes))

  return __getattr__, __dir__, sorted(homes)
