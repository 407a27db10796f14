"""Errors a user can act on: each names the thing that is wrong and what to do."""

from __future__ import annotations


class DetllmError(Exception):
    """Base class: shown to the user as one clear line, no traceback needed."""


class ModelLoadError(DetllmError):
    pass


class ConfigError(DetllmError):
    pass


class PromptError(DetllmError):
    pass


class GoldenFileError(DetllmError):
    pass
