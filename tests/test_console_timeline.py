"""Timeline chart of the site console."""

from __future__ import annotations

import numpy as np
import pandas as pd

from client.console.analyses import flow_page, page_of_row
from client.console.timeline import _binned_maximum, render_timeline


def test_binned_maximum_keeps_short_bursts() -> None:
    rows = np.arange(10)
    values = np.array([0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.1])

    centres, maximum = _binned_maximum(rows, values, bins=5)

    # Bins of two rows each: [0, 1], [2, 3], [4, 5], [6, 7], [8, 9].
    np.testing.assert_allclose(centres, [1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(maximum, [0.1, 0.9, 0.1, 0.1, 0.2])


def test_binned_maximum_short_input_unchanged() -> None:
    rows = np.array([3, 4, 7])
    values = np.array([0.2, 0.5, 0.1])

    centres, maximum = _binned_maximum(rows, values, bins=10)

    np.testing.assert_array_equal(centres, [3.0, 4.0, 7.0])
    np.testing.assert_array_equal(maximum, values)


def test_binned_maximum_skips_empty_bins() -> None:
    rows = np.array([0, 1, 98, 99])
    values = np.array([0.3, 0.4, 0.7, 0.6])

    centres, maximum = _binned_maximum(rows, values, bins=2)

    assert len(centres) == 2
    np.testing.assert_allclose(maximum, [0.4, 0.7])


def test_render_timeline_labels_each_class_once() -> None:
    predictions = pd.DataFrame({"row": np.arange(30), "attack_probability": np.linspace(0, 1, 30)})
    episodes = [
        {"first_row": 3, "last_row": 5, "predicted": "Spoofing"},
        {"first_row": 9, "last_row": 9, "predicted": "Spoofing"},
        {"first_row": 20, "last_row": 25, "predicted": "Data Alteration"},
    ]

    svg = render_timeline(predictions, episodes)

    assert svg.count("alert: Spoofing") == 1
    assert svg.count("alert: Data Alteration") == 1


def test_render_timeline_empty_file() -> None:
    svg = render_timeline(pd.DataFrame({"row": [], "attack_probability": []}), [])

    assert "<svg" in svg
    assert "alert:" not in svg


def test_flow_page_attacks_only_and_clamping() -> None:
    predictions = pd.DataFrame({"row": [0, 1, 2, 4, 5], "predicted": ["normal", "attack", "attack", "normal", "x"]})

    attacks = flow_page(predictions, "normal", attacks_only=True, page=9, per_page=2)

    assert attacks.total == 3
    assert attacks.pages == 2
    assert attacks.page == 2
    assert [row["row"] for row in attacks.rows] == [5]


def test_page_of_row_with_gaps() -> None:
    # Row 3 was dropped by cleaning; rows are in increasing file order.
    predictions = pd.DataFrame({"row": [0, 1, 2, 4, 5, 6]})

    assert page_of_row(predictions, 0, per_page=2) == 1
    assert page_of_row(predictions, 4, per_page=2) == 2
    assert page_of_row(predictions, 6, per_page=2) == 3
