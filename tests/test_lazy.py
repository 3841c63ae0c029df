"""Lazily loaded package names (`cxr_jax.lazy`): each resolves to its module's object."""

import importlib
import inspect

import pytest

from cxr_jax import lazy


@pytest.mark.parametrize("package", ["cxr_jax.data", "cxr_jax.evaluate", "cxr_jax.explain",
                                     "cxr_jax.train"])
def test_every_exported_name_resolves_to_its_module_object(package):
  module = importlib.import_module(package)
  assert set(module._HOMES) <= set(module.__all__)
  for name in module.__all__:
    value = getattr(module, name)
    assert not inspect.ismodule(value), f"{package}.{name} is a module"
    assert name in dir(module)
  with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
    module.nonexistent  # noqa: B018


def test_function_named_like_its_module_stays_the_function():
  import cxr_jax.explain.gradcam  # noqa: F401 - the submodule imported on its own first
  from cxr_jax import explain

  assert callable(explain.gradcam) and not inspect.ismodule(explain.gradcam)
  with pytest.raises(ValueError, match=r"\['gradcam'\] name both a module"):
    lazy.attach("cxr_jax.explain", {"gradcam": "gradcam"})
