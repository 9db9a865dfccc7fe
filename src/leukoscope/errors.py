"""One exception family, so the CLI can map every expected failure to a one-line message and an exit code,
and the server to a 4xx JSON answer, without ever showing a traceback to a user."""

from __future__ import annotations


class LeukoscopeError(Exception):
    """Base of every error leukoscope raises on purpose (bad input, bad configuration, bad files)."""

    exit_code: int = 1


class UsageError(LeukoscopeError):
    """The caller asked for something impossible (bad option value, missing path)."""

    exit_code = 2


class DataError(LeukoscopeError):
    """A dataset, manifest or split cannot be used as asked."""


class ImageError(LeukoscopeError):
    """One image cannot be read; the message says why (truncated, not an image, too large, ...)."""


class ModelError(LeukoscopeError):
    """A model, checkpoint, weights file or model package cannot be used."""


class ConfigError(UsageError):
    """A training or evaluation configuration is invalid."""
