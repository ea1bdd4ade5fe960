"""Server-rendered SVG charts, so pages need no JavaScript library and no network."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width_inches: float, height_inches: float) -> Figure:
    """Return a matplotlib Figure that is not registered with pyplot, so threads never share it."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_inches, height_inches), layout="constrained")


def figure_to_svg(figure: Figure) -> str:
    """Render ``figure`` as SVG text.

    Text stays text (``svg.fonttype = "none"``), so the browser draws it in
    its own fonts and the file stays small. A fixed hash salt makes the
    element ids the same on every run.
    """
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fedids"}):
        figure.savefig(buffer, format="svg")
    return buffer.getvalue()
