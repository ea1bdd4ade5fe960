"""Pages of the coordinator dashboard: runs, their rounds and sites, and the published models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from flask import Blueprint, Flask, Response, abort, current_app, render_template
from flask.typing import ResponseReturnValue

from common.exceptions import FedIDSError
from common.web.app import create_web_app
from common.web.charts import figure_to_svg, new_figure
from common.web.settings import WebSettings
from server.dashboard.runs import RoundDetail, list_runs, load_run
from server.registry import Registry

logger = logging.getLogger(__name__)

COOKIE_NAME = "fedids_dashboard_session"
#: Seconds between reloads of the page of a running run.
RUNNING_REFRESH_SECONDS = 30

_EXTENSION = "fedids_dashboard"


def create_dashboard_app(settings: WebSettings, checkpoint_dir: Path, registry_dir: Path | None) -> Flask:
    """Build the coordinator dashboard.

    Parameters
    ----------
    settings : WebSettings
        Validated web settings.
    checkpoint_dir : Path
        The ServerApp's ``checkpoint-dir``, holding one folder per run.
    registry_dir : Path or None
        Root of the model registry whose published versions are listed;
        ``None`` hides that page's table.
    """
    app = create_web_app(
        __name__,
        settings,
        title="Federation dashboard",
        cookie_name=COOKIE_NAME,
        nav=(("Runs", "dashboard.runs"), ("Published models", "dashboard.models")),
        home_endpoint="dashboard.runs",
    )
    # Absolute, like the instance folder, so a later change of working directory cannot move them.
    app.extensions[_EXTENSION] = (
        Path(checkpoint_dir).resolve(), None if registry_dir is None else Path(registry_dir).resolve()
    )
    # A folder may appear only with the first run, so a missing one is not an error, but a typo should show.
    for option, folder in (("--checkpoint-dir", checkpoint_dir), ("--registry", registry_dir)):
        if folder is not None and not Path(folder).is_dir():
            logger.warning("dashboard: %s %s does not exist (yet); its pages stay empty until it does", option, folder)
    app.register_blueprint(_blueprint())
    return app


def _checkpoint_dir() -> Path:
    return cast(Path, current_app.extensions[_EXTENSION][0])


def _registry_dir() -> Path | None:
    return cast(Path | None, current_app.extensions[_EXTENSION][1])


def published_versions(registry_dir: Path) -> list[dict[str, Any]]:
    """Return the registry's published versions, newest first, from :meth:`server.registry.Registry.list_versions`."""
    return Registry(registry_dir).list_versions()


def render_round_chart(rounds: list[RoundDetail]) -> str:
    """Draw federation-wide F1 and false-positive rate (top) and loss (bottom) per round as SVG.

    Parameters
    ----------
    rounds : list of RoundDetail
        Completed rounds; a metric that a round could not compute is left out.
    """
    figure = new_figure(8.0, 4.2)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    numbers = [detail.round for detail in rounds]
    for axes, key, label, colour, marker in (
        (top, "f1", "F1 (attack)", "#1f5fa8", "o"),
        (top, "fpr", "false-positive rate", "#b3261e", "s"),
        (bottom, "loss", "loss", "#5d4037", "^"),
    ):
        points = [(number, detail.metrics.get(key)) for number, detail in zip(numbers, rounds, strict=True)]
        defined = [(x, float(y)) for x, y in points if isinstance(y, int | float)]
        if defined:
            axes.plot([x for x, _ in defined], [y for _, y in defined], marker=marker, color=colour, label=label,
                      linewidth=1.5, markersize=4)
    top.set_ylim(0, 1.02)
    top.set_ylabel("score")
    bottom.set_ylabel("loss")
    bottom.set_xlabel("round")
    for axes in (top, bottom):
        axes.grid(color="#dde3ea", linewidth=0.6)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize=8, frameon=False)
    if numbers:
        bottom.set_xticks(numbers if len(numbers) <= 20 else numbers[:: max(1, len(numbers) // 20)])
    return figure_to_svg(figure)


def _blueprint() -> Blueprint:
    blueprint = Blueprint("dashboard", __name__, template_folder="templates")

    @blueprint.route("/")
    def runs() -> ResponseReturnValue:
        return render_template("runs.html", runs=list_runs(_checkpoint_dir()), checkpoint_dir=_checkpoint_dir())

    @blueprint.route("/runs/<name>")
    def run(name: str) -> ResponseReturnValue:
        detail = load_run(_checkpoint_dir(), name)
        if detail is None:
            abort(404, f"There is no run named {name!r} in the checkpoint folder.")
        refresh = RUNNING_REFRESH_SECONDS if detail.summary.status == "running" else None
        return render_template("run.html", run=detail, refresh=refresh)

    @blueprint.route("/runs/<name>/chart.svg")
    def chart(name: str) -> ResponseReturnValue:
        detail = load_run(_checkpoint_dir(), name)
        if detail is None:
            abort(404)
        return Response(render_round_chart(detail.rounds), mimetype="image/svg+xml")

    @blueprint.route("/models")
    def models() -> ResponseReturnValue:
        registry_dir = _registry_dir()
        versions: list[dict[str, Any]] = []
        error = ""
        if registry_dir is not None:
            try:
                versions = published_versions(registry_dir)
            except FedIDSError as failure:
                logger.warning("models: cannot read the registry %s: %s", registry_dir, failure)
                error = str(failure)
        return render_template("models.html", versions=versions, registry_dir=registry_dir, error=error)

    return blueprint
