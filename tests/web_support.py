"""Helpers of the web console tests: traffic files, users and form tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from common.bundle import Bundle, load_bundle
from common.web.app import web_state
from server.registry import Registry
from tests.bundle_helpers import write_toy_dataset, write_toy_round

#: Version of the bundle built by :func:`toy_signed_bundle`.
TOY_VERSION = "toy-console/round-001"

ADMIN = ("alice", "correct horse battery")
ANALYST = ("bob", "staple tree orbit 42")

# The header of the WUSTL-EHMS-2020 capture, in its own column order.
WUSTL_COLUMNS = [
    "Dir",
    "Flgs",
    "SrcAddr",
    "DstAddr",
    "Sport",
    "Dport",
    "SrcBytes",
    "DstBytes",
    "SrcLoad",
    "DstLoad",
    "SrcGap",
    "DstGap",
    "SIntPkt",
    "DIntPkt",
    "SIntPktAct",
    "DIntPktAct",
    "SrcJitter",
    "DstJitter",
    "sMaxPktSz",
    "dMaxPktSz",
    "sMinPktSz",
    "dMinPktSz",
    "Dur",
    "Trans",
    "TotPkts",
    "TotBytes",
    "Load",
    "Loss",
    "pLoss",
    "pSrcLoss",
    "pDstLoss",
    "Rate",
    "SrcMac",
    "DstMac",
    "Packet_num",
    "Temp",
    "SpO2",
    "Pulse_Rate",
    "SYS",
    "DIA",
    "Heart_rate",
    "Resp_Rate",
    "ST",
    "Attack Category",
    "Label",
]
_TEXT_COLUMNS = {"Dir", "Flgs", "SrcAddr", "DstAddr", "SrcMac", "DstMac", "Attack Category", "Label"}

_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def write_flow_csv(path: Path, labels: Sequence[int], seed: int = 0) -> Path:
    """Write a seeded file in the WUSTL-EHMS-2020 format with the given 0/1 labels, one row each."""
    generator = np.random.default_rng(seed)
    n_rows = len(labels)
    frame = pd.DataFrame(
        {
            column: np.round(generator.uniform(0, 1000, n_rows), 3)
            for column in WUSTL_COLUMNS
            if column not in _TEXT_COLUMNS
        }
    )
    # Distinct counters, so that no row is dropped as a duplicate.
    frame["Packet_num"] = np.arange(1, n_rows + 1)
    frame["Dir"] = "->"
    frame["Flgs"] = "e"
    frame["SrcAddr"] = "10.0.1.172"
    frame["DstAddr"] = "10.0.1.150"
    frame["SrcMac"] = "84:3a:4b:0f:5b:94"
    frame["DstMac"] = "b8:ca:3a:cf:0b:87"
    frame["Attack Category"] = ["Spoofing" if label else "normal" for label in labels]
    frame["Label"] = list(labels)
    frame[WUSTL_COLUMNS].to_csv(path, index=False)
    return path


class LastFlowPredictor:
    """Runtime whose attack probability is the scaled ``a`` of each window's last flow, so tests choose it."""

    name = "last-flow"

    def predict(self, X: np.ndarray) -> np.ndarray:
        attack = X[:, -1, 0].astype(np.float32)
        return np.column_stack([1.0 - attack, attack])


def publish_toy_bundle(folder: Path) -> tuple[Path, Ed25519PrivateKey]:
    """Publish the toy model (window 1) to a registry under ``folder``; return its archive and the signing key."""
    key = Ed25519PrivateKey.generate()
    entry = Registry(folder / "registry").publish(
        write_toy_round(folder / "round-001", window=1),
        run_id=TOY_VERSION.split("/")[0],
        server_round=1,
        signing_key=key,
        dataset_file=write_toy_dataset(folder),
        export_onnx=False,
    )
    return Path(entry["archive"]), key


def toy_signed_bundle(folder: Path) -> Bundle:
    """Publish the toy model and load it back as a verified bundle."""
    archive, key = publish_toy_bundle(folder)
    return load_bundle(archive, public_key=key.public_key())


def write_toy_traffic(path: Path, labels: Sequence[int], seed: int = 0) -> Path:
    """Write flows of the toy dataset with the given 0/1 labels.

    Column ``a`` is 9 for an attack and 1 otherwise, so :class:`LastFlowPredictor`
    gives attack probability 0.9 or 0.1 and predicts each flow's own label.
    """
    generator = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "SrcAddr": [f"10.0.0.{index % 250}:{index}" for index in range(len(labels))],
            "a": [9.0 if label else 1.0 for label in labels],
            "b": np.round(generator.uniform(0, 10, len(labels)), 3),
            "flag": "x",
            "Label": list(labels),
        }
    )
    frame.to_csv(path, index=False)
    return path


def csrf_token(html: str) -> str:
    """Return the CSRF token of the first form in ``html``."""
    match = _CSRF_FIELD.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def add_users(app: Flask) -> None:
    """Create the administrator ``ADMIN`` and the analyst ``ANALYST``."""
    accounts = web_state(app).accounts
    accounts.create_user(ADMIN[0], ADMIN[1], "administrator")
    accounts.create_user(ANALYST[0], ANALYST[1], "analyst")


def sign_in(client: FlaskClient, username: str, password: str) -> None:
    """Sign in through the login form and check that it succeeded."""
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 303, response.get_data(as_text=True)


def page_token(client: FlaskClient, path: str) -> str:
    """Return the CSRF token of the page at ``path`` for the signed-in client."""
    return csrf_token(client.get(path).get_data(as_text=True))


class _TableParser(HTMLParser):
    """Collect the text of every body cell of one table, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.depth = 0
        self.in_body = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tbody":
            self.in_body = True
        elif self.depth and self.in_body and tag == "tr":
            self.rows.append([])
        elif self.depth and self.in_body and tag == "td":
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag == "table":
            self.depth -= 1
        elif self.depth and tag == "tbody":
            self.in_body = False
        elif self.cell is not None and tag == "td":
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """Return the body rows of the table with id ``table_id`` as lists of cell texts."""
    parser = _TableParser(table_id)
    parser.feed(html)
    return parser.rows
