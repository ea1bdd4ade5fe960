"""Command line of the coordinator dashboard: ``python -m server.dashboard serve|create-admin|create-user``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flask import Flask

from common.web import cli
from common.web.settings import WebSettings

DEFAULT_PORT = 8090


def _add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=Path("runs/federated"),
        help="the ServerApp's checkpoint-dir, with one folder per run (default: runs/federated)",
    )
    parser.add_argument(
        "--registry", type=Path, default=None,
        help="root folder of the model registry whose published versions are listed (default: none)",
    )


def _build_app(settings: WebSettings, arguments: argparse.Namespace) -> Flask:
    from server.dashboard.app import create_dashboard_app

    return create_dashboard_app(settings, arguments.checkpoint_dir, arguments.registry)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dashboard's command line and return the exit code."""
    parser = cli.build_parser(
        "python -m server.dashboard",
        "Coordinator dashboard: runs, rounds, sites and published models of the federation.",
        env_prefix="FEDIDS_DASHBOARD_",
        default_instance_dir="runs/dashboard",
        default_port=DEFAULT_PORT,
        add_app_arguments=_add_dashboard_arguments,
    )
    return cli.main(argv, parser=parser, name="dashboard", build_app=_build_app)


if __name__ == "__main__":
    sys.exit(main())
