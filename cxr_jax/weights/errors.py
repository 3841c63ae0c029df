"""Errors of the weights package; each message says what is wrong and what to do."""


class WeightsError(Exception):
  """Base class: pretrained weights could not be obtained or do not fit."""


class WeightsUnavailableError(WeightsError):
  """No weights file here and none could be downloaded."""


class HashMismatchError(WeightsError):
  """A weights file is not the published one."""


class ShapeMismatchError(WeightsError):
  """A weights file does not fit the architecture (wrong arch, wrong layer shapes)."""
