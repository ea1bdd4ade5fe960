"""Flask app factory with sign-in, CSRF protection, security headers and administrator pages.

Every route needs a signed-in user unless it is listed in
:data:`PUBLIC_ENDPOINTS`; the apps built on :func:`create_web_app` add their
own blueprints and inherit that rule.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from common.web.accounts import AccountError, AccountStore
from common.web.audit import AuditLog
from common.web.database import ROLES, User, open_database
from common.web.settings import MEBIBYTE, WebSettings

logger = logging.getLogger(__name__)

#: Endpoints reachable without signing in.
PUBLIC_ENDPOINTS = frozenset({"web.login", "web.static", "static"})

_EXTENSION = "fedids_web"
_SESSION_TOKEN = "login_token"

# Everything the pages load comes from the app itself, so the policy allows
# nothing else: no CDN, no inline script, no framing by other sites.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


@dataclass(frozen=True)
class WebState:
    """Objects shared by the routes of a web app, stored in ``app.extensions``."""

    settings: WebSettings
    accounts: AccountStore
    audit: AuditLog
    title: str
    nav: tuple[tuple[str, str], ...]
    proxy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


def web_state(app: Flask | None = None) -> WebState:
    """Return the :class:`WebState` of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    return cast(WebState, target.extensions[_EXTENSION])


def current_user() -> User | None:
    """Return the signed-in user of the current request, or ``None``."""
    return cast(User | None, g.get("user"))


def signed_in_user() -> User:
    """Return the signed-in user; only for routes that require sign-in, where one always exists."""
    user = current_user()
    if user is None:
        abort(401)
    return user


def client_address() -> str:
    """Return the client's address: the peer's, or the one a trusted proxy put in ``X-Forwarded-For``.

    Only a peer listed in ``trusted_proxies`` is believed. Its header is read
    from the right, skipping further trusted proxies, and the first other
    address is the client, because entries left of it could come from the
    client itself. A malformed entry ends the search at the last trusted hop.
    """
    peer = request.remote_addr or ""
    networks = web_state().proxy_networks
    if not networks or not _in_networks(peer, networks):
        return peer
    client = peer
    forwarded = ",".join(request.headers.getlist("X-Forwarded-For"))
    for entry in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            return client
        client = entry
        if not _in_networks(entry, networks):
            return entry
    return client


def _in_networks(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def administrator_required(view: View) -> View:
    """Restrict a view to administrators; other users get a 403 page."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        user = current_user()
        if user is None or not user.is_administrator:
            abort(403)
        return view(*args, **kwargs)

    return cast(View, wrapped)


def create_web_app(
    import_name: str,
    settings: WebSettings,
    *,
    title: str,
    cookie_name: str,
    nav: Sequence[tuple[str, str]],
    home_endpoint: str,
) -> Flask:
    """Build a Flask app with accounts, CSRF protection and the administrator pages.

    Parameters
    ----------
    import_name : str
        Package of the app, whose ``templates/`` folder is searched first.
    settings : WebSettings
        Validated settings; the instance folder is created if needed. A
        relative instance folder is resolved against the current working
        directory here, because Flask's ``send_file`` would resolve it
        against the app's package folder instead.
    title : str
        Name shown in the page header.
    cookie_name : str
        Name of the session cookie. Cookies do not separate ports, so two
        consoles on one host need different names.
    nav : sequence of (str, str)
        Label and endpoint of each link in the header, for every user.
    home_endpoint : str
        Endpoint to show after sign-in.

    Returns
    -------
    Flask
        The app, with :class:`WebState` under ``app.extensions``; its
        settings have an absolute ``instance_dir``.
    """
    settings = dataclasses.replace(settings, instance_dir=settings.instance_dir.resolve())
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    app = Flask(import_name)
    app.config.update(
        SECRET_KEY=settings.secret_key(),
        SESSION_COOKIE_NAME=cookie_name,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=settings.session_hours),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        # The CSRF token lives in the session, so it expires with it.
        WTF_CSRF_TIME_LIMIT=None,
        HOME_ENDPOINT=home_endpoint,
    )
    database = open_database(settings.resolved_database_url)
    accounts = AccountStore(
        database,
        session_lifetime=dt.timedelta(hours=settings.session_hours),
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        window=dt.timedelta(minutes=settings.login_window_minutes),
        hasher=settings.password_hasher(),
    )
    app.extensions[_EXTENSION] = WebState(
        settings=settings, accounts=accounts, audit=AuditLog(database), title=title, nav=tuple(nav),
        proxy_networks=settings.proxy_networks(),
    )
    app.extensions["fedids_database"] = database
    CSRFProtect(app)

    app.register_blueprint(_blueprint())
    app.before_request(_load_user)
    app.after_request(_add_security_headers)
    app.context_processor(_template_globals)
    _register_error_pages(app)
    return app


def page_url(page: int) -> str:
    """Return the current page's URL with ``page`` replaced, keeping its other query arguments."""
    values: dict[str, Any] = dict(request.view_args or {})
    values.update(request.args.to_dict())
    values["page"] = page
    return url_for(cast(str, request.endpoint), **values)


def _template_globals() -> dict[str, Any]:
    state = web_state()
    return {"current_user": current_user(), "app_title": state.title, "app_nav": state.nav, "page_url": page_url}


def _load_user() -> ResponseReturnValue | None:
    """Resolve the session cookie to a user and send anyone else to the sign-in page."""
    g.user = web_state().accounts.user_for_token(session.get(_SESSION_TOKEN, ""))
    if g.user is None and request.endpoint not in PUBLIC_ENDPOINTS:
        if request.endpoint is None:
            # Unknown URL: the 404 page responds without revealing whether a page needs sign-in.
            return None
        target = request.full_path if request.method == "GET" else ""
        return redirect(url_for("web.login", next=target.rstrip("?") or None), code=303)
    return None


def _add_security_headers(response: Any) -> Any:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if current_user() is not None:
        # Pages of a signed-in user must not stay in a shared browser's cache.
        response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str | None:
    """Return ``target`` only if it is a path on this site, so sign-in never redirects elsewhere."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def _blueprint() -> Blueprint:
    blueprint = Blueprint(
        "web", __name__, template_folder="templates", static_folder="static", static_url_path="/static/web"
    )

    @blueprint.route("/login", methods=["GET", "POST"])
    def login() -> ResponseReturnValue:
        state = web_state()
        next_url = _safe_next(request.values.get("next"))
        if request.method == "GET":
            if current_user() is not None:
                return redirect(next_url or url_for(current_app.config["HOME_ENDPOINT"]))
            return render_template("login.html", next_url=next_url or "", error="")

        username = request.form.get("username", "")
        result = state.accounts.sign_in(username, request.form.get("password", ""), client_address())
        if result.locked:
            minutes = max(1, -(-int(result.locked_seconds) // 60))
            state.audit.record("sign-in-locked", username=username, remote_addr=client_address())
            error = (
                f"Too many failed sign-in attempts. Sign-in is locked for {minutes} more "
                f"minute{'s' if minutes != 1 else ''}; try again later or ask an administrator."
            )
            return render_template("login.html", next_url=next_url or "", error=error), 429
        if result.user is None:
            state.audit.record("sign-in-failed", username=username, remote_addr=client_address())
            return render_template("login.html", next_url=next_url or "", error="Invalid user name or password."), 401

        # A fresh session on sign-in, so a cookie planted before it is worthless.
        session.clear()
        session.permanent = True
        session[_SESSION_TOKEN] = result.token
        state.audit.record("sign-in", username=result.user.username, remote_addr=client_address())
        return redirect(next_url or url_for(current_app.config["HOME_ENDPOINT"]), code=303)

    @blueprint.route("/logout", methods=["POST"])
    def logout() -> ResponseReturnValue:
        state = web_state()
        user = current_user()
        state.accounts.end_session(session.get(_SESSION_TOKEN, ""))
        session.clear()
        if user is not None:
            state.audit.record("sign-out", username=user.username, remote_addr=client_address())
        return redirect(url_for("web.login"), code=303)

    @blueprint.route("/account/password", methods=["GET", "POST"])
    def change_password() -> ResponseReturnValue:
        state = web_state()
        user = signed_in_user()
        if request.method == "GET":
            return render_template("password.html", error="")

        new_password = request.form.get("new_password", "")
        if new_password != request.form.get("confirm_password", ""):
            return render_template("password.html", error="The two new passwords differ; type them again."), 422
        try:
            result = state.accounts.change_password(
                user.username, request.form.get("current_password", ""), new_password,
                keep_token=session.get(_SESSION_TOKEN, ""), remote_addr=client_address(),
            )
        except AccountError as error:
            return render_template("password.html", error=f"The password was not changed: {error}."), 422
        if result.locked:
            minutes = max(1, -(-int(result.locked_seconds) // 60))
            state.audit.record("sign-in-locked", username=user.username, remote_addr=client_address(),
                               detail="password change")
            error_text = (
                f"Too many failed attempts. Password changes are locked for {minutes} more "
                f"minute{'s' if minutes != 1 else ''}; try again later or ask an administrator."
            )
            return render_template("password.html", error=error_text), 429
        if result.user is None:
            state.audit.record("password-change-failed", username=user.username, remote_addr=client_address())
            return render_template("password.html", error="The current password is wrong."), 403

        state.audit.record("password-changed", username=user.username, remote_addr=client_address())
        flash("Password changed. Your sessions in other browsers have been signed out.", "info")
        return redirect(url_for(current_app.config["HOME_ENDPOINT"]), code=303)

    @blueprint.route("/admin/audit")
    @administrator_required
    def audit() -> ResponseReturnValue:
        page = web_state().audit.page(request.args.get("page", 1, type=int))
        return render_template("audit.html", page=page)

    @blueprint.route("/admin/users", methods=["GET", "POST"])
    @administrator_required
    def users() -> ResponseReturnValue:
        state = web_state()
        status = 200
        if request.method == "POST":
            username = request.form.get("username", "")
            try:
                created = state.accounts.create_user(
                    username, request.form.get("password", ""), request.form.get("role", "")
                )
            except AccountError as error:
                flash(str(error), "error")
                status = 422
            else:
                state.audit.record(
                    "user-created",
                    username=signed_in_user().username,
                    remote_addr=client_address(),
                    detail=f"{created.role} {created.username}",
                )
                flash(f"Created {created.role} {created.username}.", "info")
                return redirect(url_for("web.users"), code=303)
        return render_template("users.html", users=state.accounts.list_users(), roles=ROLES), status

    @blueprint.route("/admin/users/<username>/active", methods=["POST"])
    @administrator_required
    def set_user_active(username: str) -> ResponseReturnValue:
        state = web_state()
        admin = signed_in_user()
        active = request.form.get("active") == "1"
        if not active and username == admin.username:
            flash("You cannot disable your own account.", "error")
            return redirect(url_for("web.users"), code=303)
        try:
            user = state.accounts.set_active(username, active)
        except AccountError as error:
            abort(404, str(error))
        state.audit.record(
            "user-enabled" if active else "user-disabled",
            username=admin.username,
            remote_addr=client_address(),
            detail=user.username,
        )
        flash(f"{'Enabled' if active else 'Disabled'} {user.username}.", "info")
        return redirect(url_for("web.users"), code=303)

    return blueprint


def _register_error_pages(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> ResponseReturnValue:
        logger.warning("csrf: rejected %s %s from %s: %s", request.method, request.path, client_address(),
                       error.description)
        message = (
            "The form was rejected because its security token is missing, invalid or expired. "
            "Reload the page and submit the form again."
        )
        return render_template("error.html", code=400, title="Form rejected", message=message), 400

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> ResponseReturnValue:
        state = web_state()
        if "user" not in g:
            # The CSRF check reads the form first, so the request can fail here before _load_user ran.
            g.user = state.accounts.user_for_token(session.get(_SESSION_TOKEN, ""))
        user = current_user()
        username = user.username if user is not None else ""
        limit_bytes = state.settings.max_upload_bytes
        size_bytes = request.content_length or 0
        logger.warning(
            "upload: rejected a %d-byte request body to %s from %s (user %r), over the limit of %d bytes",
            size_bytes, request.path, client_address(), username, limit_bytes,
        )
        state.audit.record(
            "upload-too-large", username=username, remote_addr=client_address(),
            detail=f"{size_bytes} bytes to {request.path}, limit {limit_bytes} bytes",
        )
        # The limit is shown in the unit of --max-upload-mb, which counts MB of 1,048,576 bytes.
        message = (
            f"The upload ({size_bytes / MEBIBYTE:.1f} MB) is larger than this console's limit of "
            f"{limit_bytes / MEBIBYTE:g} MB ({limit_bytes:,} bytes). Compress the CSV file with gzip "
            "(the console reads .csv.gz files) or split it into smaller files, and upload again."
        )
        return render_template("error.html", code=413, title="File too large", message=message), 413

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        code = error.code or 500
        titles = {401: "Sign-in required", 403: "Not allowed", 404: "Not found", 405: "Method not allowed"}
        messages = {
            403: "Your account's role does not allow this page. Ask an administrator if you need it.",
            404: "There is no such page or record.",
        }
        message = messages.get(code, error.description or "")
        if code == 404 and error.description and not error.description.startswith("The requested URL"):
            message = error.description
        return render_template(
            "error.html", code=code, title=titles.get(code, error.name), message=message
        ), code

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> ResponseReturnValue:
        # The traceback goes to the log, never to the browser.
        logger.exception("request: %s %s failed", request.method, request.path)
        message = "The console hit an unexpected error. The server log has the details."
        return render_template("error.html", code=500, title="Internal error", message=message), 500

