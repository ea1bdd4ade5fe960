"""Timeline of one analysis as SVG: attack probability along the file and the alert episodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from common.web.charts import figure_to_svg, new_figure

#: Points drawn along the file; each shows the highest attack probability of its stretch of flows.
TIMELINE_BINS = 400

_PALETTE = ("#b3261e", "#e07b00", "#7b3fa0", "#00796b", "#c2185b", "#5d4037")


def render_timeline(predictions: pd.DataFrame, episodes: Sequence[dict[str, Any]]) -> str:
    """Draw the attack probability per flow and shade the alert episodes.

    Parameters
    ----------
    predictions : pandas.DataFrame, shape (n_flows, >= 2)
        Columns ``row`` (file row of each scored flow, increasing) and
        ``attack_probability``.
    episodes : sequence of dict
        Each with ``first_row``, ``last_row`` and ``predicted``.

    Returns
    -------
    str
        SVG text. Long files are reduced to :data:`TIMELINE_BINS` points,
        each the maximum over its bin, so a short burst is never averaged away.
    """
    figure = new_figure(10.0, 2.6)
    axes = figure.add_subplot()
    rows = predictions["row"].to_numpy(dtype=np.int64)
    probability = predictions["attack_probability"].to_numpy(dtype=np.float64)
    if len(rows):
        x, y = _binned_maximum(rows, probability, TIMELINE_BINS)
        axes.plot(x, y, drawstyle="steps-mid", color="#1f5fa8", linewidth=0.8, label="attack probability")

    # A band is at least three bins wide, so a short episode stays visible in a long file.
    min_width = 3 * (rows[-1] - rows[0] + 1) / TIMELINE_BINS if len(rows) else 1.0
    colours: dict[str, str] = {}
    for episode in episodes:
        name = str(episode["predicted"])
        first_of_class = name not in colours
        colour = colours.setdefault(name, _PALETTE[len(colours) % len(_PALETTE)])
        centre = (episode["first_row"] + episode["last_row"]) / 2
        half_width = max(episode["last_row"] - episode["first_row"] + 1, min_width) / 2
        axes.axvspan(
            centre - half_width, centre + half_width, color=colour, alpha=0.35, linewidth=0,
            label=f"alert: {name}" if first_of_class else None,
        )
    axes.set_ylim(0, 1.02)
    if len(rows):
        axes.set_xlim(rows[0] - 0.5, rows[-1] + 0.5)
    axes.set_xlabel("flow (row of the uploaded file)")
    axes.set_ylabel("attack probability")
    axes.grid(axis="y", color="#dde3ea", linewidth=0.6)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper right", fontsize=8, frameon=False, ncols=4)
    return figure_to_svg(figure)


def _binned_maximum(rows: np.ndarray, values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Return bin centres and the maximum value per non-empty bin, shapes (n_bins,) each."""
    if len(rows) <= bins:
        return rows.astype(np.float64), values
    edges = np.linspace(rows[0], rows[-1] + 1, bins + 1)
    index = np.clip(np.searchsorted(edges, rows, side="right") - 1, 0, bins - 1)
    maximum = np.full(bins, -np.inf)
    np.maximum.at(maximum, index, values)
    filled = np.isfinite(maximum)
    centres = (edges[:-1] + edges[1:]) / 2
    return centres[filled], maximum[filled]


def warm_up() -> None:
    """Render an empty timeline once, so the first upload does not pay for importing matplotlib."""
    render_timeline(pd.DataFrame({"row": [], "attack_probability": []}), [])
