"""Errors raised by lowprec: every one names the bad value and what was expected."""

from __future__ import annotations


class LowprecError(ValueError):
    """Base class of every error lowprec raises on bad input or configuration."""


class UnknownFormatError(LowprecError):
    """A format name that lowprec does not know."""


class ConfigError(LowprecError):
    """An invalid configuration key or value."""


class ShapeError(LowprecError):
    """Arrays whose shapes do not fit together."""
