"""The egress audit mod: what it records about each reply a site sends."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from client.app import app as client_app
from client.egress import EGRESS_LOG_KEY, describe_records, egress_audit_mod
from server.settings import FederationSettings

pytestmark = pytest.mark.usefixtures("task_identity")


def _message(message_type: str, config: dict[str, Any] | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord(config or {"server-round": 2})})
    message = Message(content, dst_node_id=7, message_type=message_type)
    # Flower's grids assign the id when they push a message; Metadata has no public setter.
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return message


def _context(**node_config: Any) -> Context:
    return Context(run_id=5, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _npy_size(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return len(buffer.getvalue())


def test_describe_records_lists_every_entry() -> None:
    weights = np.zeros((2, 3), dtype=np.float32)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"kernel": Array(weights)}),
            "metrics": MetricRecord({"num-examples": 10, "confusion": [1, 2, 3, 4]}),
            "site": ConfigRecord({"name": "héllo", "flag": True, "blob": b"abc"}),
        }
    )

    entries = {(entry["record"], entry["key"]): entry for entry in describe_records(content)}

    assert set(entries) == {
        ("arrays", "kernel"),
        ("metrics", "num-examples"),
        ("metrics", "confusion"),
        ("site", "name"),
        ("site", "flag"),
        ("site", "blob"),
    }
    assert entries[("arrays", "kernel")] == {
        "record": "arrays",
        "kind": "array",
        "key": "kernel",
        "type": "float32",
        "shape": [2, 3],
        "count": 6,
        "bytes": _npy_size(weights),
    }
    assert entries[("metrics", "confusion")]["count"] == 4
    assert entries[("metrics", "confusion")]["bytes"] == 32
    assert entries[("metrics", "confusion")]["type"] == "list[int]"
    # "héllo" is 6 bytes in UTF-8.
    assert entries[("site", "name")]["bytes"] == 6
    assert entries[("site", "flag")] == {
        "record": "site", "kind": "config", "key": "flag", "type": "bool", "count": 1, "bytes": 1
    }  # fmt: skip
    assert entries[("site", "blob")]["bytes"] == 3


def test_describe_records_holds_no_values() -> None:
    content = RecordDict({"site": ConfigRecord({"statistics": "SECRET-VALUE"})})

    text = json.dumps(describe_records(content))

    assert "SECRET-VALUE" not in text


def test_mod_appends_one_line_per_reply(tmp_path: Path) -> None:
    log = tmp_path / "audit" / "egress.jsonl"
    message = _message(MessageType.TRAIN)

    def handler(msg: Message, _context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)

    for _ in range(2):
        egress_audit_mod(message, _context(**{EGRESS_LOG_KEY: str(log)}), handler)

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["message_type"] == "train"
    assert lines[0]["server_round"] == 2
    assert lines[0]["run_id"] == 5
    assert lines[0]["error"] is False
    assert lines[0]["bytes"] == 8
    assert [entry["key"] for entry in lines[0]["records"]] == ["num-examples"]


def test_mod_returns_reply_unchanged(tmp_path: Path) -> None:
    message = _message(MessageType.EVALUATE)
    reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=message)

    returned = egress_audit_mod(message, _context(**{EGRESS_LOG_KEY: str(tmp_path / "e.jsonl")}), lambda m, c: reply)

    assert returned is reply


def test_mod_without_log_key_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = _message(MessageType.QUERY)
    reply = Message(RecordDict({"site": ConfigRecord({"n-rows": 1})}), reply_to=message)

    egress_audit_mod(message, _context(), lambda m, c: reply)

    assert list(tmp_path.iterdir()) == []


def test_mod_records_and_reraises_handler_error(tmp_path: Path) -> None:
    log = tmp_path / "egress.jsonl"

    def failing(_msg: Message, _context: Context) -> Message:
        raise ValueError("flows.csv: column SrcLoad is missing")

    with pytest.raises(ValueError, match="SrcLoad"):
        egress_audit_mod(_message(MessageType.TRAIN), _context(**{EGRESS_LOG_KEY: str(log)}), failing)

    line = json.loads(log.read_text())
    assert line["error"] is True
    assert line["records"] == []
    assert line["error_bytes"] == len("flows.csv: column SrcLoad is missing")


def test_query_real_file_sends_statistics_only(wustl_path: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(wustl_path, dtype=str, keep_default_na=False, nrows=1500)
    data = tmp_path / "site.csv"
    frame.to_csv(data, index=False)
    log = tmp_path / "egress.jsonl"
    config = FederationSettings.from_run_config({}, {"window": 4}).message_config(0)
    context = _context(**{"data-path": str(data), "site-name": "hospital-a", EGRESS_LOG_KEY: str(log)})

    reply = client_app(_message(MessageType.QUERY, config), context)

    line = json.loads(log.read_text())
    keys = {(entry["record"], entry["kind"], entry["key"]) for entry in line["records"]}
    assert keys == {
        ("site", "config", "statistics"),
        ("site", "config", "class-counts"),
        ("site", "config", "n-rows"),
        ("site", "config", "n-train-rows"),
        ("site", "config", "site-name"),
    }
    assert reply.content.config_records["site"]["site-name"] == "hospital-a"
    # The statistics are per feature, so they are far smaller than the rows they summarise.
    statistics_bytes = next(entry["bytes"] for entry in line["records"] if entry["key"] == "statistics")
    assert statistics_bytes < data.stat().st_size / 20
