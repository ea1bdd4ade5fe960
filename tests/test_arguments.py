"""Tests of the command-line argument types in simulations.arguments."""

from __future__ import annotations

import argparse

import pytest

from simulations.arguments import non_negative_float, positive_float


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("0.5", 0.5), ("10", 10.0)])
def test_non_negative_float_accepts(text: str, value: float) -> None:
    assert non_negative_float(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "must be 0 or more, got -1.0"),
        ("nan", "expected a finite number, got 'nan'"),
        ("inf", "expected a finite number, got 'inf'"),
        ("ten", "expected a number, got 'ten'"),
    ],
)
def test_non_negative_float_rejects(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        non_negative_float(text)


@pytest.mark.parametrize(("text", "message"), [("0", "must be positive, got 0.0"), ("inf", "finite")])
def test_positive_float_rejects(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        positive_float(text)
