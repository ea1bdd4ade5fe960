"""The waitress server of the web apps, with the app's own page for bodies over waitress's limit.

Waitress buffers a whole request body before it calls the app, so it needs
its own body limit, a little above the app's. A body over that limit never
reaches the app: waitress rejects it with a plain-text message that gives
the limit in bytes. :class:`AppErrorChannel` replaces that message with the
response of the app itself, so the user sees the same page, log line and
audit event as for a body between the two limits.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge

from common.web.settings import MEBIBYTE, WebSettings

logger = logging.getLogger(__name__)

WAITRESS_THREADS = 4


def create_wsgi_server(app: Flask, settings: WebSettings) -> Any:
    """Build a waitress server for ``app`` on ``settings.host`` and ``settings.port``, not yet running.

    Returns
    -------
    waitress.server.BaseWSGIServer or waitress.server.MultiSocketServer
        Call ``run()`` to serve and ``close()`` to stop. A single server's
        ``effective_port`` is the port the system chose when ``settings.port``
        is 0; a host name with several addresses gives a MultiSocketServer.
    """
    from waitress.server import create_server

    server = create_server(
        app,
        host=settings.host,
        port=settings.port,
        threads=WAITRESS_THREADS,
        # A little more than the app's limit, so that a body just over it
        # reaches the app, whose handler then names the limit.
        max_request_body_size=settings.max_upload_bytes + MEBIBYTE,
        ident="fedids",
    )
    # create_server picks the server classes itself, so the channel class is
    # set on each listening server: one, or one per socket when the host name
    # resolves to several addresses.
    for listener in _listeners(server):
        listener.channel_class = AppErrorChannel
    return server


def listening_addresses(server: Any) -> list[tuple[str, str]]:
    """Return the ``(address, port)`` pairs on which a server of :func:`create_wsgi_server` listens.

    The addresses are numeric, also when the host was a name.
    """
    return [(str(listener.effective_host), str(listener.effective_port)) for listener in _listeners(server)]


def _listeners(server: Any) -> list[Any]:
    # A MultiSocketServer keeps its listening servers in its socket map, beside other dispatchers.
    # Typed Any, because waitress sets effective_host and effective_port without declaring them.
    candidates = [server] if isinstance(server, BaseWSGIServer) else list((server.map or {}).values())
    return [candidate for candidate in candidates if isinstance(candidate, BaseWSGIServer)]


class AppErrorTask(ErrorTask):
    """Respond to a body over waitress's limit with the app's 413 page instead of waitress's text."""

    def execute(self) -> None:
        request: Any = self.request
        if not isinstance(request.error, RequestEntityTooLarge):
            super().execute()
            return
        status, headers, body = _app_response_to_oversized_body(
            self.channel.server.application, request, self.channel.addr
        )
        self.status = status
        cast(list[tuple[str, str]], self.response_headers).extend(
            (name, value) for name, value in headers if name.lower() not in ("connection", "content-length")
        )
        # Waitress has stopped reading the body, so the connection cannot carry another request.
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class AppErrorChannel(HTTPChannel):
    """Waitress channel whose error responses come from :class:`AppErrorTask`."""

    error_task_class = AppErrorTask


def _app_response_to_oversized_body(
    app: Callable[..., Iterable[bytes]], request: Any, address: Any
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call the app with the rejected request's line and headers, an empty body and its declared length.

    Flask rejects the declared length before it reads the body (with HTTP 413),
    so the app's error handler writes the page, the log line and the audit event.
    """
    headers: dict[str, str] = request.headers
    declared = max(int(request.content_length or 0), int(request.body_bytes_received or 0))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.command or "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path or "/",
        "QUERY_STRING": request.query or "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": f"HTTP/{request.version or '1.1'}",
        "REMOTE_ADDR": address[0] if isinstance(address, tuple) and address else "",
        "CONTENT_LENGTH": str(declared),
        "CONTENT_TYPE": headers.get("CONTENT_TYPE", ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.url_scheme or "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[f"HTTP_{name}"] = value

    response: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        response["status"] = status
        response["headers"] = response_headers
        return lambda _data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return response["status"], response["headers"], body
