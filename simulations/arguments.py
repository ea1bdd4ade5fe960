"""Argument types shared by the command-line tools in this folder."""

from __future__ import annotations

import argparse

#: Logging levels the commands accept for ``--log-level``.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _integer_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from error
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """Parse an integer of at least 1."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """Parse an integer of at least 0."""
    return _integer_at_least(text, 0)


def positive_float(text: str) -> float:
    """Parse a number greater than 0."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from error
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
