"""Errors a user can act on.

Every error raised for bad input names the file, key or value at fault and says what to do.
They derive from the builtin types a caller would expect (``ValueError``, ``FileNotFoundError``...)
so that generic handlers still work.
"""

from __future__ import annotations


class LatentgenError(Exception):
    """Base class of all errors latentgen raises on purpose."""


class ConfigError(LatentgenError, ValueError):
    """A config key or value is wrong or inconsistent with another one."""


class DataError(LatentgenError, ValueError):
    """A dataset path, file or sample cannot be used."""


class CheckpointError(LatentgenError, ValueError):
    """A checkpoint is missing, corrupt, of the wrong kind, or disagrees with the config."""


class WeightsNotFoundError(LatentgenError, FileNotFoundError):
    """A pretrained weights file that cannot be downloaded here is missing."""


class NonFiniteLossError(LatentgenError, FloatingPointError):
    """A loss became NaN or Inf during training."""
