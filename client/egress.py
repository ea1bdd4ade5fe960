"""Audit of what a hospital site sends: the keys and sizes of every record in every reply.

:func:`egress_audit_mod` is a Flower ClientApp mod. It wraps every handler,
describes the records of the reply that is about to leave the site (record
name, kind, key, type, shape and byte count, never a value) and

- logs one INFO line per reply;
- appends one JSON line per reply to the file named by the node-config key
  ``egress-log``, when the SuperNode sets it.

A hospital's data protection officer can read the log to see that only
model weights, feature statistics and metrics left the site. The mod only
records: it never changes or blocks a reply.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

logger = logging.getLogger(__name__)

#: Node-config key naming the JSON Lines file the audit appends to.
EGRESS_LOG_KEY = "egress-log"

# Flower stores every MetricRecord number as a 64-bit int or float.
_METRIC_BYTES = 8


def _value_description(value: Any) -> dict[str, Any]:
    """Describe one ConfigRecord or MetricRecord value by type, element count and byte count."""
    if isinstance(value, list):
        items = [_value_description(item) for item in value]
        element_type = items[0]["type"] if items else "empty"
        return {"type": f"list[{element_type}]", "count": len(items), "bytes": sum(item["bytes"] for item in items)}
    if isinstance(value, bool):
        return {"type": "bool", "count": 1, "bytes": 1}
    if isinstance(value, int | float):
        return {"type": type(value).__name__, "count": 1, "bytes": _METRIC_BYTES}
    if isinstance(value, str):
        return {"type": "str", "count": 1, "bytes": len(value.encode("utf-8"))}
    if isinstance(value, bytes):
        return {"type": "bytes", "count": 1, "bytes": len(value)}
    return {"type": type(value).__name__, "count": 1, "bytes": 0}


def describe_records(content: RecordDict) -> list[dict[str, Any]]:
    """List every entry of every record in a message's content, without its value.

    Returns
    -------
    list of dict
        One dict per entry with ``record`` (record name), ``kind``
        (``"array"``, ``"metric"`` or ``"config"``), ``key``, ``type``,
        ``count`` (elements), ``bytes`` and, for arrays, ``shape``.
    """
    entries: list[dict[str, Any]] = []
    for record_name, record in content.items():
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                count = 1
                for size in array.shape:
                    count *= int(size)
                entries.append(
                    {
                        "record": record_name,
                        "kind": "array",
                        "key": key,
                        "type": array.dtype,
                        "shape": [int(size) for size in array.shape],
                        "count": count,
                        "bytes": len(array.data),
                    }
                )
            continue
        kind: str | None = None
        if isinstance(record, MetricRecord):
            kind = "metric"
        elif isinstance(record, ConfigRecord):
            kind = "config"
        if kind is None:
            entries.append(
                {"record": record_name, "kind": type(record).__name__, "key": "", "type": "", "count": 0, "bytes": 0}
            )
            continue
        for key, value in record.items():
            entries.append({"record": record_name, "kind": kind, "key": key, **_value_description(value)})
    return entries


def _server_round(msg: Message) -> int | None:
    config = msg.content.config_records.get("config") if msg.has_content() else None
    value = None if config is None else config.get("server-round")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _append_line(path: Path, line: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(line) + "\n"
    # One write call on an O_APPEND descriptor, so lines from ClientApp
    # processes that run at the same time do not interleave.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(descriptor, text.encode("utf-8"))
    finally:
        os.close(descriptor)


def egress_audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler, then record the keys and sizes of its reply's records.

    A handler that raises sends an error reply whose reason is the
    exception's text; the audit records the length of that text and re-raises.
    """
    base: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": int(context.run_id),
        "message_type": msg.metadata.message_type,
        "server_round": _server_round(msg),
    }
    path_value = context.node_config.get(EGRESS_LOG_KEY)
    path = Path(str(path_value)) if path_value else None
    try:
        reply = call_next(msg, context)
    except Exception as error:
        entry = {**base, "error": True, "error_bytes": len(str(error).encode("utf-8")), "records": [], "bytes": 0}
        logger.info("egress: %s reply is an error of %d bytes", base["message_type"], entry["error_bytes"])
        if path is not None:
            _append_line(path, entry)
        raise

    if reply.has_content():
        records = describe_records(reply.content)
        entry = {**base, "error": False, "records": records, "bytes": sum(item["bytes"] for item in records)}
    else:
        reason = reply.error.reason or ""
        entry = {**base, "error": True, "error_bytes": len(reason.encode("utf-8")), "records": [], "bytes": 0}
    logger.info(
        "egress: %s reply: %d entries in records %s, %d bytes",
        base["message_type"],
        len(entry["records"]),
        sorted({item["record"] for item in entry["records"]}),
        entry["bytes"],
    )
    if path is not None:
        _append_line(path, entry)
    return reply
