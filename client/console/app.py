"""Pages of the site console: upload, results, history and the predictions download."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, send_file, url_for
from flask.typing import ResponseReturnValue

from client.console.analyses import (
    STATUS_FAILED,
    STATUS_OK,
    Analysis,
    AnalysisStore,
    flow_page,
    new_analysis_id,
    page_of_row,
)
from client.console.detection import Detector
from client.console.timeline import render_timeline
from client.console.uploads import SavedUpload, UploadError, check_decompressed_size, display_name, save_upload
from client.detect import DetectionResult
from common.exceptions import FedIDSError
from common.web.app import client_address, create_web_app, signed_in_user, web_state
from common.web.settings import MEBIBYTE, WebSettings

logger = logging.getLogger(__name__)

COOKIE_NAME = "fedids_console_session"
FLOWS_PER_PAGE = 50
#: Episodes listed in the table; the timeline shows all of them.
MAX_EPISODES_LISTED = 500

_EXTENSION = "fedids_console"


def create_console_app(settings: WebSettings, detector: Detector) -> Flask:
    """Build the site console.

    Parameters
    ----------
    settings : WebSettings
        Validated web settings; analyses are stored under
        ``<instance_dir>/analyses``.
    detector : Detector
        The site's loaded model bundle.

    Returns
    -------
    Flask
        The app; serve it with :func:`common.web.cli.serve`.
    """
    app = create_web_app(
        __name__,
        settings,
        title="Site console",
        cookie_name=COOKIE_NAME,
        nav=(("Analyse traffic", "console.upload"), ("History", "console.history")),
        home_endpoint="console.upload",
    )
    # The app's settings, whose instance folder is absolute, so send_file finds the stored files.
    instance_dir = web_state(app).settings.instance_dir
    store = AnalysisStore(app.extensions["fedids_database"], instance_dir / "analyses")
    app.extensions[_EXTENSION] = (store, detector)
    app.register_blueprint(_blueprint())
    app.context_processor(lambda: {"model": detector.info})
    return app


def _store() -> AnalysisStore:
    return cast(AnalysisStore, current_app.extensions[_EXTENSION][0])


def _detector() -> Detector:
    return cast(Detector, current_app.extensions[_EXTENSION][1])


def _upload_page(error: str = "", status: int = 200) -> ResponseReturnValue:
    settings = web_state().settings
    return (
        render_template(
            "upload.html",
            error=error,
            max_upload_mb=settings.max_upload_bytes / MEBIBYTE,
            recent=_store().history(1, per_page=5).analyses,
        ),
        status,
    )


def _result_summary(result: DetectionResult) -> dict[str, Any]:
    """Copy what the results page needs from a DetectionResult into JSON types."""
    return {
        "class_counts": {str(name): int(count) for name, count in result.class_counts.items()},
        "episodes": [
            {
                "first_row": int(episode.first_row),
                "last_row": int(episode.last_row),
                "predicted": str(episode.predicted),
                "flows": int(episode.flows),
                "peak_probability": float(episode.peak_probability),
            }
            for episode in result.episodes
        ],
        "model_version": str(result.model_version),
        "signature_verified": bool(result.signature_verified),
        "rows_read": int(result.rows_read),
        "rows_scored": int(result.rows_scored),
        "mostly_imputed_rows": int(result.mostly_imputed_rows),
        "empty_columns": [str(column) for column in result.empty_columns],
        "seconds": float(result.seconds),
        "runtime": str(result.runtime),
        "window": int(result.window),
    }


def _blueprint() -> Blueprint:
    blueprint = Blueprint("console", __name__, template_folder="templates")

    @blueprint.route("/")
    def index() -> ResponseReturnValue:
        return redirect(url_for("console.upload"))

    @blueprint.route("/upload", methods=["GET"])
    def upload() -> ResponseReturnValue:
        return _upload_page()

    @blueprint.route("/upload", methods=["POST"])
    def analyse() -> ResponseReturnValue:
        state = web_state()
        user = signed_in_user()
        upload_file = request.files.get("traffic")
        if upload_file is None or not upload_file.filename:
            return _upload_page("Choose a traffic file (CSV or gzip-compressed CSV) to upload.", 400)

        store = _store()
        detector = _detector()
        analysis_id = new_analysis_id()
        folder = store.folder(analysis_id)
        started = time.perf_counter()
        saved = save_upload(upload_file.stream, folder, upload_file.filename)
        state.audit.record(
            "upload", username=user.username, remote_addr=client_address(), file_name=saved.display_name,
            file_sha256=saved.sha256, detail=f"{saved.size} bytes{', gzip' if saved.gzip else ''}",
        )
        try:
            check_decompressed_size(saved, state.settings.max_uncompressed_bytes)
            result = detector.detect(saved.path)
        except FedIDSError as error:
            # The loader names the file by its path on this disk; the user knows it by its own name.
            message = str(error).replace(str(saved.path), saved.display_name)
            action = "upload-rejected" if isinstance(error, UploadError) else "analysis-failed"
            _record_failure(analysis_id, saved, message, action)
            store.discard_files(analysis_id)
            return _upload_page(f"{saved.display_name} was not analysed: {message}", 422)
        finally:
            saved.path.unlink(missing_ok=True)

        summary = _result_summary(result)
        result.write_predictions(store.predictions_path(analysis_id))
        store.write_result(analysis_id, summary)
        store.timeline_path(analysis_id).write_text(
            render_timeline(result.predictions, summary["episodes"]), encoding="utf-8"
        )
        attack_flows = sum(
            count for name, count in summary["class_counts"].items() if name != detector.info.normal_class
        )
        store.add(
            Analysis(
                id=analysis_id, username=user.username, file_name=saved.display_name, file_sha256=saved.sha256,
                file_bytes=saved.size, status=STATUS_OK, model_version=summary["model_version"],
                signature_verified=summary["signature_verified"], rows_read=summary["rows_read"],
                rows_scored=summary["rows_scored"], attack_flows=attack_flows, episodes=len(summary["episodes"]),
                seconds=time.perf_counter() - started,
            )
        )
        state.audit.record(
            "analysis", username=user.username, remote_addr=client_address(), file_name=saved.display_name,
            file_sha256=saved.sha256, model_version=summary["model_version"],
            detail=(
                f"{summary['rows_scored']} flows scored, {attack_flows} predicted as attack, "
                f"{len(summary['episodes'])} alert episodes"
            ),
        )
        logger.info(
            "analysis: %s scored %d flows of %s in %.2f s", analysis_id, summary["rows_scored"],
            saved.display_name, time.perf_counter() - started,
        )
        return redirect(url_for("console.result", analysis_id=analysis_id), code=303)

    @blueprint.route("/analyses")
    def history() -> ResponseReturnValue:
        return render_template("history.html", page=_store().history(request.args.get("page", 1, type=int)))

    @blueprint.route("/analyses/<analysis_id>")
    def result(analysis_id: str) -> ResponseReturnValue:
        store = _store()
        analysis = _analysis_or_404(analysis_id)
        if analysis.status != STATUS_OK:
            return render_template("result_failed.html", analysis=analysis)
        summary = store.read_result(analysis_id)
        predictions = store.read_predictions(analysis_id)
        attacks_only = request.args.get("attacks") == "1"
        flows = flow_page(
            predictions, _detector().info.normal_class, attacks_only=attacks_only,
            page=request.args.get("page", 1, type=int), per_page=FLOWS_PER_PAGE,
        )
        episodes = summary["episodes"][:MAX_EPISODES_LISTED]
        for episode in episodes:
            episode["page"] = page_of_row(predictions, episode["first_row"], FLOWS_PER_PAGE)
        total_scored = max(1, sum(summary["class_counts"].values()))
        return render_template(
            "result.html", analysis=analysis, summary=summary, flows=flows, attacks_only=attacks_only,
            episodes=episodes, total_scored=total_scored, normal_class=_detector().info.normal_class,
        )

    @blueprint.route("/analyses/<analysis_id>/timeline.svg")
    def timeline(analysis_id: str) -> ResponseReturnValue:
        analysis = _analysis_or_404(analysis_id)
        path = _store().timeline_path(analysis.id)
        if not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/svg+xml", max_age=0)

    @blueprint.route("/analyses/<analysis_id>/predictions.csv")
    def predictions_csv(analysis_id: str) -> ResponseReturnValue:
        analysis = _analysis_or_404(analysis_id)
        path = _store().predictions_path(analysis.id)
        if analysis.status != STATUS_OK or not path.is_file():
            abort(404, "This analysis has no predictions to download.")
        user = signed_in_user()
        # Names stored before control characters were stripped on upload are cleaned here too.
        stem = display_name(analysis.file_name).split(".")[0] or "traffic"
        response = send_file(
            path, mimetype="text/csv", as_attachment=True, download_name=f"predictions-{stem}.csv", max_age=0
        )
        # Recorded after send_file has opened the file, so a failed download leaves no event.
        web_state().audit.record(
            "download", username=user.username, remote_addr=client_address(), file_name=analysis.file_name,
            file_sha256=analysis.file_sha256, model_version=analysis.model_version, detail="predictions CSV",
        )
        return response

    return blueprint


def _analysis_or_404(analysis_id: str) -> Analysis:
    analysis = _store().get(analysis_id)
    if analysis is None:
        abort(404, "There is no analysis with this id.")
    return analysis


def _record_failure(analysis_id: str, saved: SavedUpload, message: str, action: str) -> None:
    state = web_state()
    user = signed_in_user()
    detector = _detector()
    _store().add(
        Analysis(
            id=analysis_id, username=user.username, file_name=saved.display_name, file_sha256=saved.sha256,
            file_bytes=saved.size, status=STATUS_FAILED, error=message[:4000], model_version=detector.info.version,
            signature_verified=detector.info.signature_verified,
        )
    )
    state.audit.record(
        action, username=user.username, remote_addr=client_address(), file_name=saved.display_name,
        file_sha256=saved.sha256, model_version=detector.info.version, detail=message,
    )
    logger.warning("analysis: %s rejected %s: %s", analysis_id, saved.display_name, message)
