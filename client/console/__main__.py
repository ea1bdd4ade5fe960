"""Command line of the site console: ``python -m client.console serve|create-admin|create-user``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flask import Flask

from common.web import cli
from common.web.settings import WebSettings

DEFAULT_PORT = 8080


def _add_console_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="the site's signed model bundle")
    parser.add_argument(
        "--public-key", type=Path, default=None,
        help="PEM file of the coordinator's signing key (default: the file named by $FEDIDS_BUNDLE_PUBLIC_KEY)",
    )
    parser.add_argument(
        "--allow-unsigned", action="store_true",
        help="accept a bundle without a signature or without a key to verify it; pages then show it as unverified",
    )


def _build_app(settings: WebSettings, arguments: argparse.Namespace) -> Flask:
    from client.console.app import create_console_app
    from client.console.detection import load_detector
    from client.console.timeline import warm_up

    app = create_console_app(
        settings, load_detector(arguments.model, arguments.public_key, require_signature=not arguments.allow_unsigned)
    )
    warm_up()
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the site console's command line and return the exit code."""
    parser = cli.build_parser(
        "python -m client.console",
        "Site console: upload traffic, see the alerts of the site's model, keep the results on this machine.",
        env_prefix="FEDIDS_CONSOLE_",
        default_instance_dir="runs/site-console",
        default_port=DEFAULT_PORT,
        add_app_arguments=_add_console_arguments,
    )
    return cli.main(argv, parser=parser, name="site-console", build_app=_build_app)


if __name__ == "__main__":
    sys.exit(main())
