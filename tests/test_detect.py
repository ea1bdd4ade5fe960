"""Detection at a site: windows, predictions, episodes, column checks, --follow and real-data scores."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.detect import (
    DetectionResult,
    FlowDetector,
    detect_file,
    detect_frame,
    detect_to_csv,
    follow_chunks,
    follow_file,
)
from client.detect import main as detect_main
from client.flow_lines import DEFAULT_CHUNK_BYTES, read_flow_chunks
from common.bundle import Bundle, load_bundle, save_model
from common.exceptions import DataFileNotFoundError, DataValidationError, EmptyDataError, ModelMismatchError
from common.inference import KerasPredictor, OnnxPredictor, make_predictor
from common.loading import clean_flows, read_flow_csv
from common.model import build_cnn_lstm
from common.windows import make_windows
from server.registry import Registry
from server.signing import generate_keypair, load_private_key
from tests.bundle_helpers import (
    TOY_DATASET_TOML,
    round_metrics,
    toy_preprocessor,
    train_wustl_round,
    write_toy_dataset,
    write_toy_round,
)
from tests.process_helpers import signal_after_line

ROOT = Path(__file__).resolve().parent.parent

#: Floor on the attack F1 of a small model on unseen WUSTL rows. A detector
#: that flags flows at random at the attack rate (about 12%) scores about 0.12.
F1_FLOOR = 0.6


class LastFlowPredictor:
    """Stand-in runtime: the attack probability is the scaled ``a`` of each window's last flow."""

    name = "last-flow"

    def predict(self, X: np.ndarray) -> np.ndarray:
        attack = X[:, -1, 0].astype(np.float32)
        return np.column_stack([1.0 - attack, attack])


def toy_bundle(folder: Path, window: int, key: Ed25519PrivateKey, export_onnx: bool = False) -> Bundle:
    registry = Registry(folder / "registry")
    entry = registry.publish(
        write_toy_round(folder / f"round-w{window}", window=window),
        run_id=f"toy-w{window}",
        server_round=1,
        signing_key=key,
        dataset_file=write_toy_dataset(folder),
        export_onnx=export_onnx,
    )
    return load_bundle(Path(entry["path"]), public_key=key.public_key())


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bundle_w1(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> Bundle:
    return toy_bundle(tmp_path_factory.mktemp("w1"), 1, key)


@pytest.fixture(scope="module")
def bundle_w3(tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey) -> Bundle:
    return toy_bundle(tmp_path_factory.mktemp("w3"), 3, key)


def toy_frame(a_values: list[float], labels: list[str] | None = None) -> pd.DataFrame:
    """Raw toy flows as text, the way read_flow_csv delivers them; ``a`` in [0, 10] sets the stand-in's score."""
    n_rows = len(a_values)
    frame = pd.DataFrame(
        {
            "SrcAddr": [f"10.0.0.{i}" for i in range(n_rows)],
            "a": [str(value) for value in a_values],
            "b": ["1"] * n_rows,
            "flag": ["x"] * n_rows,
        }
    )
    if labels is not None:
        frame["Label"] = labels
    return frame


def test_detect_frame_episodes_per_flow(bundle_w1: Bundle) -> None:
    frame = toy_frame([1, 9, 9, 1, 8, 1, 1, 9], labels=["0", "1", "1", "0", "1", "0", "0", "1"])

    result = detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())

    assert result.predictions["row"].tolist() == list(range(8))
    expected_classes = ["normal", "attack", "attack", "normal", "attack", "normal", "normal", "attack"]
    assert result.predictions["predicted"].tolist() == expected_classes
    assert result.predictions["label"].tolist() == expected_classes
    attack_probability = [0.1, 0.9, 0.9, 0.1, 0.8, 0.1, 0.1, 0.9]
    np.testing.assert_allclose(result.predictions["attack_probability"], attack_probability, atol=1e-6)
    np.testing.assert_allclose(result.predictions["probability"], [0.9, 0.9, 0.9, 0.9, 0.8, 0.9, 0.9, 0.9], atol=1e-6)
    assert result.class_counts == {"normal": 4, "attack": 4}
    assert [(e.first_row, e.last_row, e.flows, e.predicted) for e in result.episodes] == [
        (1, 2, 2, "attack"), (4, 4, 1, "attack"), (7, 7, 1, "attack")
    ]
    assert [e.peak_probability for e in result.episodes] == pytest.approx([0.9, 0.8, 0.9])
    assert (result.rows_read, result.rows_scored) == (8, 8)


class HighBitPredictor:
    """Stand-in runtime: a flow is an attack when the last input column, bit 1 of ``b``, is set."""

    name = "high-bit"

    def predict(self, X: np.ndarray) -> np.ndarray:
        attack = X[:, -1, -1].astype(np.float32)
        return np.column_stack([1.0 - attack, attack])


def test_detect_frame_bitmask_bundle(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    preprocessor = dataclasses.replace(toy_preprocessor(), bitmask_features={"b": 2})
    model = build_cnn_lstm(
        preprocessor.n_features, 1, 2, conv_filters=4, kernel_size=2, lstm_units=4, dense_units=4, dropout=0.0
    )
    save_model(tmp_path / "round", model, preprocessor, round_metrics(1, 0.8))
    dataset = tmp_path / "toy.toml"
    dataset.write_text(
        TOY_DATASET_TOML.replace('numeric = ["a", "b"]\n', 'numeric = ["a", "b"]\nbitmask = { b = 2 }\n'),
        encoding="utf-8",
    )
    entry = Registry(tmp_path / "registry").publish(
        tmp_path / "round", run_id="toy-bits", server_round=1, signing_key=key, dataset_file=dataset
    )
    bundle = load_bundle(Path(entry["path"]), public_key=key.public_key())
    frame = toy_frame([1, 1, 1, 1]).assign(b=["0", "1", "2", "3"])

    result = detect_frame(bundle, frame, predictor=HighBitPredictor())
    keras_result = detect_frame(bundle, frame, runtime="keras")

    assert bundle.preprocessor.bitmask_features == {"b": 2}
    assert bundle.preprocessor.feature_names[-2:] == ("b:bit0", "b:bit1")
    # Bit 1 (value 2) is set in 2 and 3 only.
    assert result.predictions["predicted"].tolist() == ["normal", "normal", "attack", "attack"]
    assert keras_result.rows_scored == 4


def test_detect_frame_window_leaves_first_rows_unscored(bundle_w3: Bundle) -> None:
    frame = toy_frame([9, 9, 9, 1, 9, 9])

    result = detect_frame(bundle_w3, frame, predictor=LastFlowPredictor())

    assert result.predictions["row"].tolist() == [2, 3, 4, 5]
    assert "label" not in result.predictions.columns
    assert (result.rows_read, result.rows_scored) == (6, 4)
    summary = result.to_summary()
    assert summary["unscored_rows"] == {"first_row": 0, "last_row": 1}
    assert [(e.first_row, e.last_row) for e in result.episodes] == [(2, 2), (4, 5)]
    json.dumps(summary)


def test_flow_detector_chunks_match_whole_frame(bundle_w3: Bundle) -> None:
    values = [1, 9, 9, 9, 1, 9, 9, 9, 9, 1, 1, 9]
    whole = detect_frame(bundle_w3, toy_frame(values), predictor=LastFlowPredictor())

    detector = FlowDetector(bundle_w3, LastFlowPredictor())
    parts = [detector.process(toy_frame(values[start:end]), "<chunk>") for start, end in ((0, 1), (1, 7), (7, 12))]
    detector.finish()

    chunked = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(chunked, whole.predictions)
    assert detector.episodes == whole.episodes
    assert [(e.first_row, e.last_row, e.flows) for e in detector.episodes] == [(2, 3, 2), (5, 8, 4), (11, 11, 1)]


def test_detect_frame_names_missing_columns(bundle_w1: Bundle) -> None:
    frame = toy_frame([1, 2]).drop(columns=["b", "flag"])

    expected = r"missing 2 column\(s\) that model toy-w1/round-001 needs: \['b', 'flag'\]"
    with pytest.raises(DataValidationError, match=expected):
        detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())


def test_detect_frame_scores_rows_with_infinities(bundle_w1: Bundle) -> None:
    frame = toy_frame([1, 9, 2])
    frame.loc[1, "b"] = "inf"
    frame.loc[2, "b"] = "not-a-number"

    result = detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())

    assert result.rows_scored == 3
    assert result.predictions["predicted"].tolist() == ["normal", "attack", "normal"]


def test_detect_frame_unknown_label_blanks_its_rows(bundle_w1: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    frame = toy_frame([1, 9, 9, 1], labels=["0", "maybe", "1", "maybe"])

    with caplog.at_level(logging.WARNING, logger="client.detect"):
        result = detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())

    assert result.predictions["label"].tolist() == ["normal", "", "attack", ""]
    assert result.predictions["predicted"].tolist() == ["normal", "attack", "attack", "normal"]
    assert "2 row(s) of <frame> have 'Label' values that the model's task 'binary' does not know" in caplog.text
    assert "'maybe' (2)" in caplog.text
    assert "dataset.toml" not in caplog.text


def test_flow_detector_warns_once_per_unknown_label(bundle_w1: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    detector = FlowDetector(bundle_w1, LastFlowPredictor())

    with caplog.at_level(logging.WARNING, logger="client.detect"):
        first = detector.process(toy_frame([1, 9], labels=["maybe", "0"]), "<chunk>")
        second = detector.process(toy_frame([1, 9], labels=["maybe", "1"]), "<chunk>")
        third = detector.process(toy_frame([1, 9], labels=["maybe", "7"]), "<chunk>")

    # Each chunk still blanks its own unknown labels, but only new values are warned about.
    assert first["label"].tolist() == ["", "normal"]
    assert second["label"].tolist() == ["", "attack"]
    assert third["label"].tolist() == ["", ""]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "1 row(s) of <chunk>" in warnings[0]
    assert "'maybe' (1)" in warnings[0]
    assert "'7' (1)" in warnings[1]
    assert "'maybe'" not in warnings[1]


def test_detect_file_reads_gzip(bundle_w1: Bundle, tmp_path: Path) -> None:
    path = tmp_path / "flows.csv.gz"
    with gzip.open(path, "wt") as stream:
        toy_frame([9, 1, 9]).to_csv(stream, index=False)

    result = detect_file(bundle_w1, path, predictor=LastFlowPredictor())
    written = pd.read_csv(result.write_predictions(tmp_path / "predictions.csv"))

    assert written["row"].tolist() == [0, 1, 2]
    assert written["predicted"].tolist() == ["attack", "normal", "attack"]
    assert result.source == str(path)


def test_detect_file_missing_file(bundle_w1: Bundle, tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"input file not found: .*missing\.csv; check --input"):
        detect_file(bundle_w1, tmp_path / "missing.csv", predictor=LastFlowPredictor())
    with pytest.raises(DataFileNotFoundError, match="input file not found"):
        detect_to_csv(bundle_w1, tmp_path / "missing.csv", tmp_path / "out.csv", predictor=LastFlowPredictor())


# ---------------------------------------------------------------------------
# One-off detection of files with malformed lines
# ---------------------------------------------------------------------------

MALFORMED_WARNING = re.compile(r"detect: (\d+) malformed line\(s\) in .* first at row (\d+); check the flow exporter")


def _malformed_warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int]]:
    """Return (count, first row) of every malformed-line WARNING."""
    found = [MALFORMED_WARNING.search(record.getMessage()) for record in caplog.records]
    return [(int(match.group(1)), int(match.group(2))) for match in found if match is not None]


def _corrupt(text: bytes, *, extra_field: int, unclosed_quote: int, header_before: int) -> bytes:
    """Give one data row an extra field and another an unclosed quote, and repeat the header before a third."""
    lines = text.split(b"\n")
    lines[1 + extra_field] = lines[1 + extra_field].rstrip(b"\r") + b",extra"
    lines[1 + unclosed_quote] = lines[1 + unclosed_quote].replace(b",", b',"', 1)
    lines.insert(1 + header_before, lines[0])
    return b"\n".join(lines)


def _clean_row(row: int, header_before: int) -> int:
    """Map a row of the corrupted file to the clean file's row, which has no repeated header at ``header_before``."""
    return row - 1 if row > header_before else row


@pytest.mark.parametrize("chunk_bytes", [DEFAULT_CHUNK_BYTES, 100], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_detect_to_csv_scores_malformed_lines(
    bundle_w3: Bundle, tmp_path: Path, caplog: pytest.LogCaptureFixture, compression: str, chunk_bytes: int
) -> None:
    values = [9 if position % 5 in (1, 2) else 1 for position in range(30)]
    clean_text = toy_frame(values, labels=["1" if value == 9 else "0" for value in values]).to_csv(index=False)
    clean_path = tmp_path / "clean.csv"
    clean_path.write_text(clean_text)
    corrupted = _corrupt(clean_text.encode(), extra_field=8, unclosed_quote=16, header_before=24)
    traffic = tmp_path / ("traffic.csv.gz" if compression == "gzip" else "traffic.csv")
    traffic.write_bytes(gzip.compress(corrupted) if compression == "gzip" else corrupted)
    out = tmp_path / "predictions.csv"
    clean = detect_file(bundle_w3, clean_path, predictor=LastFlowPredictor()).predictions.set_index("row")

    with caplog.at_level(logging.WARNING):
        result = detect_to_csv(bundle_w3, traffic, out, chunk_bytes=chunk_bytes, predictor=LastFlowPredictor())

    written = pd.read_csv(out, dtype={"predicted": str, "label": str}, keep_default_na=False).set_index("row")
    bad_rows = [8, 16, 24]
    assert (result.rows_read, result.rows_scored) == (31, 29)
    assert written.index.tolist() == list(range(2, 31))
    expected_warnings = [(3, 8)] if chunk_bytes == DEFAULT_CHUNK_BYTES else [(1, 8), (1, 16), (1, 24)]
    assert _malformed_warnings(caplog) == expected_warnings
    # A malformed line is scored on the federation's imputed values (a = 5), with no label.
    assert written.loc[bad_rows, "label"].tolist() == ["", "", ""]
    np.testing.assert_allclose(written.loc[bad_rows, "attack_probability"], [0.5, 0.5, 0.5], atol=1e-6)
    untouched = [row for row in written.index if not {row - 2, row - 1, row} & set(bad_rows)]
    assert len(untouched) == 29 - 3 * 3
    for row in untouched:
        expected = clean.loc[_clean_row(row, 24)]
        assert written.loc[row, "predicted"] == expected["predicted"], row
        assert written.loc[row, "label"] == expected["label"], row
        assert written.loc[row, "attack_probability"] == pytest.approx(expected["attack_probability"], abs=1e-6)
    # detect_file, behind the console's upload page, reads the file the same way.
    whole = detect_file(bundle_w3, traffic, predictor=LastFlowPredictor())
    assert whole.predictions["row"].tolist() == written.index.tolist()
    assert whole.predictions["predicted"].tolist() == written["predicted"].tolist()
    assert whole.episodes == result.episodes


def test_detect_to_csv_unclosed_quote_names_its_row(
    bundle_w1: Bundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = [9 if position % 7 == 0 else 1 for position in range(250)]
    lines = toy_frame(values).to_csv(index=False).splitlines()
    lines[1 + 199] = '10.0.0.199,"9,1,x'  # data row 199 opens a quote that no later line closes
    traffic = tmp_path / "traffic.csv"
    traffic.write_text("\n".join(lines) + "\n")

    with caplog.at_level(logging.WARNING):
        result = detect_to_csv(bundle_w1, traffic, tmp_path / "predictions.csv", predictor=LastFlowPredictor())

    written = pd.read_csv(tmp_path / "predictions.csv")
    assert (result.rows_read, result.rows_scored) == (250, 250)
    assert written["row"].tolist() == list(range(250))
    assert _malformed_warnings(caplog) == [(1, 199)]
    assert written["predicted"].tolist() == [
        "attack" if value == 9 and row != 199 else "normal" for row, value in enumerate(values)
    ]


# ---------------------------------------------------------------------------
# The command, with a real ONNX bundle
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signed toy bundle with model.onnx (W = 2) and the public key file."""
    folder = tmp_path_factory.mktemp("onnx")
    private_path, public_path = generate_keypair(folder / "keys")
    bundle = toy_bundle(folder, 2, load_private_key(private_path), export_onnx=True)
    assert bundle.source is not None
    return bundle.source, public_path


def _detect_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "client.detect", *arguments]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_detect_command_writes_predictions(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    toy_frame([1, 9, 9, 1], labels=["0", "1", "1", "0"]).to_csv(tmp_path / "flows.csv", index=False)

    completed = subprocess.run(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(tmp_path / "flows.csv"),
            "--out", str(tmp_path / "predictions.csv"), "--summary", str(tmp_path / "summary.json"),
        ),
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert "runtime: ONNX Runtime" in completed.stderr
    assert completed.stdout.startswith("detect: scored 3 of 4 flows")
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions.columns.tolist() == ["row", "predicted", "probability", "attack_probability", "label"]
    assert predictions["row"].tolist() == [1, 2, 3]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["signature_verified"] is True
    assert summary["runtime"] == "onnx"
    assert sum(summary["class_counts"].values()) == 3


def test_detect_command_scores_malformed_lines(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    lines = toy_frame([1, 9, 9, 1, 9, 1], labels=["0", "1", "1", "0", "1", "0"]).to_csv(index=False).splitlines()
    lines[1 + 2] += ",extra"
    lines[1 + 4] = lines[1 + 4].replace(",", ',"', 1)
    (tmp_path / "flows.csv").write_text("\n".join(lines) + "\n")

    completed = subprocess.run(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(tmp_path / "flows.csv"),
            "--out", str(tmp_path / "predictions.csv"),
        ),
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("detect: scored 5 of 6 flows")
    assert "WARNING client.flow_lines: detect: 2 malformed line(s) in" in completed.stderr
    assert "first at row 2; check the flow exporter" in completed.stderr
    predictions = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
    assert predictions["row"].tolist() == [1, 2, 3, 4, 5]
    assert predictions["label"].tolist() == ["attack", "", "normal", "", "normal"]


def test_detect_command_missing_columns_one_line(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    toy_frame([1, 9]).drop(columns=["a"]).to_csv(tmp_path / "flows.csv", index=False)

    completed = subprocess.run(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(tmp_path / "flows.csv"),
            "--out", str(tmp_path / "predictions.csv"),
        ),
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 1
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "missing 1 column(s) that model toy-w2/round-001 needs: ['a']" in error_lines[0]
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "predictions.csv").exists()


def test_detect_command_rejects_tampered_bundle(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    copy = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    onnx_file = copy / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    toy_frame([1, 9]).to_csv(tmp_path / "flows.csv", index=False)

    completed = subprocess.run(
        _detect_command(
            "--model", str(copy), "--public-key", str(public_key), "--input", str(tmp_path / "flows.csv"),
            "--out", str(tmp_path / "predictions.csv"),
        ),
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=300, check=False,
    )

    assert completed.returncode == 1
    assert "model.onnx: SHA-256" in completed.stderr
    assert "Traceback" not in completed.stderr


def _wait_for_rows(path: Path, count: int, process: subprocess.Popen[str], limit: float = 120.0) -> int:
    """Poll the predictions file until it has ``count`` data rows or the process ends; return the rows seen."""
    deadline = time.monotonic() + limit
    rows = 0
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists():
            rows = max(len(path.read_text().splitlines()) - 1, 0)
            if rows >= count:
                break
        time.sleep(0.2)
    return rows


def test_detect_follow_scores_appended_rows(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    lines = toy_frame([1, 9, 9, 1, 9, 9, 9, 1], labels=["0"] * 8).to_csv(index=False).splitlines(keepends=True)
    traffic, predictions = tmp_path / "live.csv", tmp_path / "predictions.csv"
    traffic.write_text("".join(lines[:4]))  # header and 3 rows
    process = subprocess.Popen(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(traffic),
            "--out", str(predictions), "--summary", str(tmp_path / "summary.json"),
            "--follow", "--poll-seconds", "0.1", "--idle-timeout", "4",
        ),
        cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = _wait_for_rows(predictions, 2, process)
        with traffic.open("a") as stream:
            stream.write("".join(lines[4:7]))
            stream.write(lines[7][:5])  # half a row: must wait for its newline
            stream.flush()
            second = _wait_for_rows(predictions, 5, process)
            stream.write(lines[7][5:] + lines[8])
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert (first, second) == (2, 5)
    assert process.returncode == 0, stderr
    written = pd.read_csv(predictions)
    assert written["row"].tolist() == list(range(1, 8))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_read"] == 8
    assert summary["rows_scored"] == 7
    assert "detect: scored 7 of 8 flows" in stdout


def _collect_lines(stream: IO[str], lines: list[str]) -> None:
    """Append each line of ``stream`` to ``lines`` as it arrives, so another thread can watch them."""
    for line in stream:
        lines.append(line)


def test_detect_follow_waits_for_input(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    traffic, predictions = tmp_path / "live.csv", tmp_path / "predictions.csv"
    process = subprocess.Popen(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(traffic),
            "--out", str(predictions), "--follow", "--poll-seconds", "0.1", "--idle-timeout", "30",
        ),
        cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None and process.stdout is not None
    stderr_lines: list[str] = []
    reader = threading.Thread(target=_collect_lines, args=(process.stderr, stderr_lines))
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("waiting for it to be created" in line for line in stderr_lines) and time.monotonic() < deadline:
            assert process.poll() is None, "".join(stderr_lines)
            time.sleep(0.1)
        traffic.write_text(toy_frame([1, 9, 9, 1], labels=["0"] * 4).to_csv(index=False))
        _wait_for_rows(predictions, 3, process)
        process.send_signal(signal.SIGINT)
        stdout = process.stdout.read()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join()

    stderr = "".join(stderr_lines)
    assert process.returncode == 0, stderr
    assert "waiting for it to be created" in stderr
    assert "was created" in stderr
    assert pd.read_csv(predictions)["row"].tolist() == [1, 2, 3]
    assert "detect: scored 3 of 4 flows" in stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_detect_signal_stops_cleanly(onnx_bundle: tuple[Path, Path], tmp_path: Path, signum: signal.Signals) -> None:
    bundle_path, public_key = onnx_bundle
    traffic, predictions = tmp_path / "flows.csv", tmp_path / "predictions.csv"
    toy_frame([1, 9, 2, 3] * 150_000).to_csv(traffic, index=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    process = subprocess.Popen(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(traffic),
            "--out", str(predictions), "--runtime", "keras",
        ),
        cwd=ROOT, env={**_environment(), "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )

    output = signal_after_line(process, "bundle: loaded", signum, wait_seconds=120)

    assert process.returncode == 128 + signum, output[-3000:]
    assert f"{'interrupted' if signum == signal.SIGINT else 'terminated'}; {predictions} was not written" in output
    assert "Traceback" not in output
    assert not predictions.exists()
    assert not list(tmp_path.glob("predictions.csv*"))
    assert not list(scratch.iterdir()), "the bundle's private copy was left behind"


def test_detect_follow_missing_input_fails(onnx_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle_path, public_key = onnx_bundle
    predictions = tmp_path / "predictions.csv"
    completed = subprocess.run(
        _detect_command(
            "--model", str(bundle_path), "--public-key", str(public_key), "--input", str(tmp_path / "live.csv"),
            "--out", str(predictions), "--follow", "--poll-seconds", "0.05", "--idle-timeout", "0.5",
        ),
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 1, completed.stderr
    assert "live.csv not found after waiting 0.5 s (--idle-timeout)" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not predictions.exists()


def test_follow_file_alerts_across_batches(
    bundle_w1: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = toy_frame([1, 9, 9, 9, 1, 9]).to_csv(index=False).splitlines(keepends=True)
    traffic, out = tmp_path / "live.csv", tmp_path / "predictions.csv"
    traffic.write_text("".join(lines[:3]))  # header, rows 0 and 1: an attack starts at row 1
    outcome: dict[str, DetectionResult] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            result=follow_file(
                bundle_w1, traffic, out, poll_seconds=0.05, idle_timeout=3.0, predictor=LastFlowPredictor()
            )
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while not (out.exists() and len(out.read_text().splitlines()) == 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    with traffic.open("a") as stream:
        stream.write("".join(lines[3:]))  # rows 2-5: the attack goes on to row 3, another one at row 5
    worker.join(timeout=120)

    printed = capsys.readouterr().out
    result = outcome["result"]
    assert [(e.first_row, e.last_row, e.flows) for e in result.episodes] == [(1, 3, 3), (5, 5, 1)]
    assert "alert: attack in progress since row 1 (1 flows so far" in printed
    assert "alert: rows 1-3: attack (3 flows, peak attack probability 0.900)" in printed
    assert "alert: attack in progress since row 5" in printed
    assert pd.read_csv(out)["row"].tolist() == list(range(6))


# ---------------------------------------------------------------------------
# Real WUSTL-EHMS-2020 data
# ---------------------------------------------------------------------------

#: Cleaned rows used for training; the rows after them are the unseen held-out slice.
TRAIN_ROWS = 11_000


@pytest.fixture(scope="module")
def wustl_bundle(tmp_path_factory: pytest.TempPathFactory, wustl_path: Path) -> tuple[Bundle, Path]:
    """A W = 8 model trained on the first 11,000 WUSTL rows, published and reloaded; plus the held-out CSV."""
    from common.config import load_dataset_config

    folder = tmp_path_factory.mktemp("wustl")
    key = Ed25519PrivateKey.generate()
    round_folder = train_wustl_round(folder / "round-001", wustl_path, window=8, train_rows=TRAIN_ROWS, epochs=3)
    entry = Registry(folder / "registry").publish(
        round_folder, run_id="wustl-w8", server_round=1, signing_key=key,
        dataset_file=load_dataset_config("wustl-ehms-2020").source,
    )
    raw = read_flow_csv(wustl_path)
    held_out = folder / "held-out.csv"
    raw.iloc[TRAIN_ROWS:].to_csv(held_out, index=False)
    return load_bundle(Path(entry["archive"]), public_key=key.public_key()), held_out


def test_onnx_matches_keras_on_real_windows(wustl_bundle: tuple[Bundle, Path]) -> None:
    bundle, held_out = wustl_bundle
    assert bundle.onnx_path is not None
    frame = read_flow_csv(held_out)
    detector = FlowDetector(bundle, KerasPredictor(bundle.model))
    table = clean_flows(frame, detector.config, detector.task, require_labels=False)
    windows, _ = make_windows(bundle.preprocessor.transform(table.features), None, bundle.preprocessor.window)

    onnx = OnnxPredictor(str(bundle.onnx_path)).predict(windows)
    keras_probabilities = KerasPredictor(bundle.model).predict(windows)

    assert onnx.shape == keras_probabilities.shape == (len(frame) - 7, 2)
    assert float(np.max(np.abs(onnx - keras_probabilities))) < 1e-4


def test_detect_real_held_out_beats_floor(wustl_bundle: tuple[Bundle, Path]) -> None:
    bundle, held_out = wustl_bundle

    result = detect_file(bundle, held_out, predictor=make_predictor(bundle, "onnx"))

    predictions = result.predictions
    assert result.runtime == "onnx"
    assert result.rows_scored == result.rows_read - 7
    attack_true = predictions["label"] == "attack"
    attack_predicted = predictions["predicted"] == "attack"
    true_positives = int((attack_true & attack_predicted).sum())
    f1 = 2 * true_positives / (int(attack_true.sum()) + int(attack_predicted.sum()))
    assert f1 > F1_FLOOR, f"attack F1 {f1:.3f} on {len(predictions)} held-out flows"
    assert len(result.episodes) > 0
    assert all(episode.first_row <= episode.last_row for episode in result.episodes)
    assert sum(episode.flows for episode in result.episodes) == int(attack_predicted.sum())


def test_detect_to_csv_matches_whole_file(wustl_bundle: tuple[Bundle, Path], tmp_path: Path) -> None:
    bundle, held_out = wustl_bundle
    predictor = make_predictor(bundle, "onnx")
    whole = detect_file(bundle, held_out, predictor=predictor)
    out = tmp_path / "predictions.csv"

    # About 200 rows per chunk, so W = 8 windows and episodes cross many chunk boundaries.
    streamed = detect_to_csv(bundle, held_out, out, chunk_bytes=50_000, predictor=predictor)

    written = pd.read_csv(out, dtype={"predicted": str, "label": str}, keep_default_na=False)
    assert list(written["row"]) == list(whole.predictions["row"])
    assert list(written["predicted"]) == list(whole.predictions["predicted"])
    np.testing.assert_allclose(written["attack_probability"], whole.predictions["attack_probability"], atol=1e-6)
    assert streamed.episodes == whole.episodes
    assert streamed.class_counts == whole.class_counts
    assert streamed.rows_scored == whole.rows_scored
    assert len(streamed.predictions) == 0
    assert not (tmp_path / "predictions.csv.partial").exists()


def test_detect_to_csv_real_malformed_lines(
    wustl_bundle: tuple[Bundle, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle, held_out = wustl_bundle
    predictor = make_predictor(bundle, "onnx")
    clean = detect_file(bundle, held_out, predictor=predictor).predictions.set_index("row")
    # About 200 rows per chunk, so every malformed line falls in its own chunk and windows cross chunks.
    corrupted = _corrupt(held_out.read_bytes(), extra_field=1000, unclosed_quote=199, header_before=2000)
    plain, compressed = tmp_path / "traffic.csv", tmp_path / "traffic.csv.gz"
    plain.write_bytes(corrupted)
    compressed.write_bytes(gzip.compress(corrupted))

    for traffic in (plain, compressed):
        caplog.clear()
        out = tmp_path / f"{traffic.name}.predictions.csv"
        with caplog.at_level(logging.WARNING):
            result = detect_to_csv(bundle, traffic, out, chunk_bytes=50_000, predictor=predictor)

        written = pd.read_csv(out, dtype={"predicted": str, "label": str}, keep_default_na=False).set_index("row")
        bad_rows = {199, 1000, 2000}
        assert result.rows_read == len(clean) + 7 + 1
        assert result.rows_scored == result.rows_read - 7
        assert written.index.tolist() == list(range(7, result.rows_read))
        assert _malformed_warnings(caplog) == [(1, 199), (1, 1000), (1, 2000)]
        untouched = [row for row in written.index if not set(range(row - 7, row + 1)) & bad_rows]
        assert len(untouched) == len(written) - 3 * 8
        expected = clean.loc[[_clean_row(row, 2000) for row in untouched]]
        assert written.loc[untouched, "predicted"].tolist() == expected["predicted"].tolist()
        assert written.loc[untouched, "label"].tolist() == expected["label"].tolist()
        np.testing.assert_allclose(
            written.loc[untouched, "attack_probability"], expected["attack_probability"], atol=1e-6
        )


def test_detect_to_csv_failure_leaves_no_file(
    bundle_w1: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("client.flow_lines.MAX_LINE_BYTES", 1000)
    traffic = tmp_path / "traffic.csv"
    good = toy_frame([1, 9, 2] * 50).to_csv(index=False)
    traffic.write_text(good + "9" * 5000)  # earlier chunks are scored and written before this line fails
    out = tmp_path / "predictions.csv"

    with pytest.raises(DataValidationError, match=r"traffic\.csv: no line break in \d+ bytes after data row 150"):
        detect_to_csv(bundle_w1, traffic, out, chunk_bytes=256, predictor=LastFlowPredictor())

    assert not out.exists()
    assert not (tmp_path / "predictions.csv.partial").exists()


# ---------------------------------------------------------------------------
# read_flow_chunks: the line reader of one-off detection
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1000])
@pytest.mark.parametrize(
    "content",
    [
        b"a,b,c\n1,2,3\n4,5,6\n7,8,9",  # no newline after the last row
        b'\xef\xbb\xbfa, b ,c\r\n1,,3\r\n4,5\r\n\r\n"x,y",8,NA\r\n"q""",5,6\r\n   \r\n',
    ],
    ids=["plain", "bom-crlf-short-row-quoted-blank"],
)
def test_read_flow_chunks_match_whole_read(tmp_path: Path, content: bytes, chunk_bytes: int) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(content)

    chunks = list(read_flow_chunks(path, chunk_bytes=chunk_bytes))

    assert all(list(chunk.index) == list(range(len(chunk))) for chunk in chunks)
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), read_flow_csv(path))


def test_read_flow_chunks_real_gzip_file(wustl_path: Path, tmp_path: Path) -> None:
    compressed = tmp_path / "wustl.csv.gz"
    compressed.write_bytes(gzip.compress(wustl_path.read_bytes()))

    chunks = list(read_flow_chunks(compressed, chunk_bytes=1024 * 1024))

    assert len(chunks) > 1
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), read_flow_csv(wustl_path))


def test_read_flow_chunks_one_row_per_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(
        b"a,b\n"
        # A quoted value across two lines: the first line leaves its quote open, and in
        # the second the quote follows the field's first character, so it is plain text.
        b'1,"x\ny"\n'
        b"2,3\r4\n"  # a carriage return alone would end a row for the parser
        b'5,"6"\n'
    )

    with caplog.at_level(logging.WARNING):
        rows = pd.concat(read_flow_chunks(path), ignore_index=True).to_dict("records")

    empty = {"a": "", "b": ""}
    assert rows == [empty, {"a": 'y"', "b": ""}, empty, {"a": "5", "b": "6"}]
    assert _malformed_warnings(caplog) == [(2, 0)]


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (b"", EmptyDataError, "is empty: it has no header row"),
        (b"\r\n\n", EmptyDataError, "is empty: it has no header row"),
        (b"Bytes,Label\n", EmptyDataError, "has a header but no data rows"),
        (b"Bytes,Label\n\n \r\n", EmptyDataError, "has a header but no data rows"),
        (b"Bytes,Label, Label\n1,0,0\n", DataValidationError, "'Label' and ' Label'"),
        (b"Bytes,\xffLabel\n1,0\n", DataValidationError, "is not UTF-8 text"),
        (b"Bytes,Label\r1,0\r2,1\r", DataValidationError, "ends its lines with a carriage return only"),
        # The header ends in CRLF but the rows in CR alone, so one line contains every row.
        (b"Bytes,Label\r\n1,0\r2,1\r3,0\r", DataValidationError, "ends its lines with a carriage return only"),
        (b"Bytes,Label\n1,0\n2,1\r3,0\r4,1\n", DataValidationError, "ends its lines with a carriage return only"),
    ],
    ids=[
        "empty", "blank-lines", "header-only", "header-then-blank", "duplicate-header", "not-utf8-header",
        "cr-only", "crlf-header-cr-rows", "cr-rows-after-lf-rows",
    ],
)
def test_read_flow_chunks_bad_file_rejected(
    tmp_path: Path, content: bytes, error: type[Exception], message: str
) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(content)

    with pytest.raises(error, match=re.escape(message)):
        list(read_flow_chunks(path))


def test_read_flow_chunks_endless_line_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("client.flow_lines.MAX_LINE_BYTES", 1000)
    path = tmp_path / "flows.csv.gz"
    path.write_bytes(gzip.compress(b"Bytes,Label\n1,0\n" + b"9" * 5000))

    with pytest.raises(DataValidationError, match=r"no line break in \d+ bytes after data row 1"):
        list(read_flow_chunks(path, chunk_bytes=100))


def test_read_flow_chunks_bad_path_and_chunk_size(tmp_path: Path) -> None:
    truncated = tmp_path / "flows.csv.gz"
    truncated.write_bytes(gzip.compress(b"Bytes,Label\n1,0\n" * 100)[:-20])

    with pytest.raises(DataValidationError, match=r"cannot read .*flows\.csv\.gz: Compressed file ended"):
        list(read_flow_chunks(truncated))
    with pytest.raises(DataValidationError, match="is a directory, not a CSV file"):
        list(read_flow_chunks(tmp_path))
    with pytest.raises(ValueError, match="chunk_bytes must be at least 1, got 0"):
        list(read_flow_chunks(truncated, chunk_bytes=0))


def test_follow_chunks_keeps_going_after_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    traffic = tmp_path / "live.csv"
    traffic.write_bytes(
        b"a,b,flag\n"
        b"1,2,x\n"
        b"1,2,x,extra\n"  # more fields than the header
        b'3,"4,y\n'  # unbalanced quote
        b"a,b,flag\n"  # the exporter wrote its header again
        b"5\n"  # short: padded, as in a whole file
        b"\xff,6,z\n"  # not UTF-8
        b"7,8,w\n"
    )

    with caplog.at_level(logging.WARNING, logger="client.detect"):
        frames = list(follow_chunks(traffic, poll_seconds=0.01, idle_timeout=0.05))

    rows = pd.concat(frames, ignore_index=True).to_dict("records")
    empty = {"a": "", "b": "", "flag": ""}
    assert rows == [
        {"a": "1", "b": "2", "flag": "x"},
        empty,
        empty,
        empty,
        {"a": "5", "b": "", "flag": ""},
        empty,
        {"a": "7", "b": "8", "flag": "w"},
    ]
    assert "4 malformed line(s)" in caplog.text
    assert "first at row 1" in caplog.text


def test_follow_chunks_unclosed_quote_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    traffic = tmp_path / "live.csv"
    traffic.write_bytes(b'a,b,flag\n1,2,x\n3,"4,y\n')  # the parser would keep "4,y\n" as a value

    with caplog.at_level(logging.WARNING):
        frames = list(follow_chunks(traffic, poll_seconds=0.01, idle_timeout=0.05))

    rows = pd.concat(frames, ignore_index=True).to_dict("records")
    assert rows == [{"a": "1", "b": "2", "flag": "x"}, {"a": "", "b": "", "flag": ""}]
    assert "follow: 1 malformed line(s)" in caplog.text
    assert "first at row 1" in caplog.text


def test_follow_chunks_rejects_carriage_return_only_file(tmp_path: Path) -> None:
    traffic = tmp_path / "live.csv"
    traffic.write_bytes(b"a,b,flag\r1,2,x\r3,4,y\r")

    with pytest.raises(DataValidationError, match="ends its lines with a carriage return only"):
        list(follow_chunks(traffic, poll_seconds=0.01, idle_timeout=2.0))


def test_read_flow_chunks_stray_return_malformed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(b"a,b\n1,2\n3\r,4\n5,6\n")

    with caplog.at_level(logging.WARNING):
        rows = pd.concat(read_flow_chunks(path), ignore_index=True).to_dict("records")

    assert rows == [{"a": "1", "b": "2"}, {"a": "", "b": ""}, {"a": "5", "b": "6"}]


def test_follow_chunks_reads_rotated_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    traffic = tmp_path / "live.csv"
    traffic.write_text("a,b,flag\n1,2,x\n")
    received: list[pd.DataFrame] = []

    def rotate() -> None:
        time.sleep(0.5)
        traffic.rename(tmp_path / "live.csv.1")
        time.sleep(0.3)
        traffic.write_text("a,b,flag\n3,4,y\n5,6,z\n")

    rotator = threading.Thread(target=rotate)
    rotator.start()
    with caplog.at_level(logging.INFO, logger="client.detect"):
        for frame in follow_chunks(traffic, poll_seconds=0.05, idle_timeout=2.0):
            received.append(frame)
    rotator.join()

    assert pd.concat(received, ignore_index=True)["a"].tolist() == ["1", "3", "5"]
    assert "reading the new file from its start, as row 1 on" in caplog.text


def test_follow_chunks_rejects_new_header_after_rotation(tmp_path: Path) -> None:
    traffic = tmp_path / "live.csv"
    traffic.write_text("a,b,flag\n1,2,x\n")
    chunks = follow_chunks(traffic, poll_seconds=0.05, idle_timeout=2.0)
    assert len(next(chunks)) == 1
    traffic.rename(tmp_path / "live.csv.1")
    traffic.write_text("a,flag\n3,y\n")

    with pytest.raises(DataValidationError, match="replaced by a file with another header"):
        next(chunks)


def test_follow_chunks_waits_for_complete_lines(tmp_path: Path) -> None:
    traffic = tmp_path / "live.csv"
    traffic.write_text("a,b,flag\n1,2,x\n3,4,")  # the last row is still being written

    frames = list(follow_chunks(traffic, poll_seconds=0.01, idle_timeout=0.2))

    assert len(frames) == 1
    assert frames[0].to_dict("records") == [{"a": "1", "b": "2", "flag": "x"}]


def test_follow_chunks_waits_for_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    traffic = tmp_path / "live.csv"

    def create() -> None:
        time.sleep(0.4)
        traffic.write_text("a,b,flag\n1,2,x\n")

    creator = threading.Thread(target=create)
    creator.start()
    with caplog.at_level(logging.INFO, logger="client.detect"):
        frames = list(follow_chunks(traffic, poll_seconds=0.05, idle_timeout=3.0))
    creator.join()

    assert pd.concat(frames, ignore_index=True).to_dict("records") == [{"a": "1", "b": "2", "flag": "x"}]
    assert "waiting for it to be created" in caplog.text
    assert "was created" in caplog.text


def test_follow_chunks_missing_file_idle_timeout(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"never\.csv not found after waiting 0\.1 s \(--idle-timeout\)"):
        list(follow_chunks(tmp_path / "never.csv", poll_seconds=0.01, idle_timeout=0.1))


def test_follow_chunks_folder_removed(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    remover = threading.Timer(0.2, folder.rmdir)
    remover.start()
    try:
        removed = r"input folder .*exports was removed while waiting for live\.csv"
        with pytest.raises(DataFileNotFoundError, match=removed):
            list(follow_chunks(folder / "live.csv", poll_seconds=0.02, idle_timeout=10.0))
    finally:
        remover.join()


def test_follow_chunks_folder_removed_while_following(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    traffic = folder / "live.csv"
    traffic.write_text("a,b,flag\n1,2,x\n", encoding="utf-8")
    frames = []

    with pytest.raises(DataFileNotFoundError, match=r"input folder .*exports was removed while following live\.csv"):
        for frame in follow_chunks(traffic, poll_seconds=0.02, idle_timeout=10.0):
            frames.append(frame)
            shutil.rmtree(folder)

    assert [len(frame) for frame in frames] == [1]


def test_follow_chunks_warns_when_file_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("client.detect.MISSING_INPUT_WARNING_SECONDS", 0.1)
    traffic = tmp_path / "live.csv"
    traffic.write_text("a,b,flag\n1,2,x\n", encoding="utf-8")
    frames = []

    with caplog.at_level(logging.WARNING, logger="client.detect"):
        for frame in follow_chunks(traffic, poll_seconds=0.02, idle_timeout=0.8):
            frames.append(frame)
            traffic.unlink()

    assert [len(frame) for frame in frames] == [1]
    assert "live.csv has been missing for" in caplog.text
    assert "it was deleted, or the exporter stopped while rotating it" in caplog.text


def test_follow_chunks_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"input folder not found: .*absent; check --input"):
        list(follow_chunks(tmp_path / "absent" / "live.csv", poll_seconds=0.01, idle_timeout=0.1))


def test_follow_chunks_rejects_folder(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="is not a regular file"):
        list(follow_chunks(tmp_path, poll_seconds=0.01, idle_timeout=0.1))


def test_follow_chunks_rejects_gzip(tmp_path: Path) -> None:
    traffic = tmp_path / "live.csv.gz"
    with gzip.open(traffic, "wt") as stream:
        stream.write("a,b,flag\n1,2,x\n")

    with pytest.raises(DataValidationError, match="reads plain CSV only"):
        list(follow_chunks(traffic, poll_seconds=0.01, idle_timeout=0.05))


def test_detect_frame_counts_mostly_missing_rows(bundle_w1: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    frame = toy_frame([1, 9, 2, 3, 4])
    frame.loc[1, ["a", "b"]] = ["x", ""]  # both numeric features unusable
    frame.loc[2, "b"] = "y"  # one of two: not more than half
    frame.loc[3, ["a", "b"]] = ["inf", "-inf"]  # infinities are imputed too

    with caplog.at_level(logging.WARNING, logger="client.detect"):
        result = detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())

    assert result.rows_scored == 5
    assert result.mostly_imputed_rows == 2
    assert result.to_summary()["mostly_imputed_rows"] == 2
    assert "2 of 5 flow(s) in <frame> have more than half of their 2 numeric features" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--follow", "--poll-seconds", "0"], "--poll-seconds must be a finite number above 0"),
        (["--follow", "--poll-seconds", "nan"], "--poll-seconds must be a finite number above 0"),
        (["--follow", "--idle-timeout", "-1"], "--idle-timeout must be 0 (no limit) or a finite number of seconds"),
        (
            ["--follow", "--idle-timeout", "nan"],
            "--idle-timeout must be 0 (no limit) or a finite number of seconds, got nan",
        ),
        (
            ["--follow", "--idle-timeout", "inf"],
            "--idle-timeout must be 0 (no limit) or a finite number of seconds, got inf",
        ),
    ],
)
def test_detect_main_rejects_follow_numbers_as_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    # The bundle path does not exist, so an error about it would show that the bundle was loaded first.
    arguments = ["--model", str(tmp_path / "none"), "--input", str(tmp_path / "in.csv")]
    arguments += ["--out", str(tmp_path / "o.csv"), *extra]

    with pytest.raises(SystemExit) as stopped:
        detect_main(arguments)

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"python -m client.detect: error: {message}" in error
    assert "bundle" not in error


def test_detect_main_rejects_bad_thread_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--model", str(tmp_path / "none"), "--input", str(tmp_path / "in.csv")]
    arguments += ["--out", str(tmp_path / "o.csv"), "--threads", "0"]

    assert detect_main(arguments) == 1

    assert "--threads must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--idle-timeout", "30"], "--idle-timeout only works"),
        (["--poll-seconds", "1"], "--poll-seconds only works"),
        (["--idle-timeout", "0", "--poll-seconds", "1"], "--idle-timeout and --poll-seconds only work"),
    ],
)
def test_detect_main_follow_options_need_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    arguments = ["--model", str(tmp_path / "none"), "--input", str(tmp_path / "in.csv")]
    arguments += ["--out", str(tmp_path / "o.csv"), *extra]

    with pytest.raises(SystemExit) as stopped:
        detect_main(arguments)

    assert stopped.value.code == 2
    assert f"{named} with --follow" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_detect_main_keeps_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.csv"
    capture.write_text("a,b\n1,2\n", encoding="utf-8")

    status = detect_main(["--model", str(tmp_path / "none"), "--input", str(capture), "--out", str(capture)])

    assert status == 1
    assert "is also an output file" in capsys.readouterr().err
    assert capture.read_text(encoding="utf-8") == "a,b\n1,2\n"


def test_detect_main_rejects_folder_as_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.csv"
    capture.write_text("a,b\n1,2\n", encoding="utf-8")

    status = detect_main(["--model", str(tmp_path / "none"), "--input", str(capture), "--out", str(tmp_path)])

    assert status == 1
    assert f"--out {tmp_path} is a folder; give a file name inside it" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_detect_main_rejects_special_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    capture = tmp_path / "capture.csv"
    capture.write_text("a,b\n1,2\n", encoding="utf-8")
    target = tmp_path / "predictions.csv"
    if kind == "symlink":
        target.symlink_to(tmp_path / "elsewhere.csv")
    else:
        os.mkfifo(target)

    status = detect_main(["--model", str(tmp_path / "none"), "--input", str(capture), "--out", str(target)])

    assert status == 1
    assert f"--out {target} is not a regular file (a link, device or pipe)" in capsys.readouterr().err
    assert target.is_symlink() if kind == "symlink" else stat.S_ISFIFO(target.stat().st_mode)


def test_detect_main_rejects_summary_equal_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.csv"
    capture.write_text("a,b\n1,2\n", encoding="utf-8")
    out = str(tmp_path / "result.csv")

    status = detect_main(["--model", str(tmp_path / "none"), "--input", str(capture), "--out", out, "--summary", out])

    assert status == 1
    assert "is also --out; give two different files" in capsys.readouterr().err


class _NaNPredictor:
    """Stands in for a model whose weights became NaN."""

    name = "nan"

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full((len(X), 2), np.nan, dtype=np.float32)


def test_detect_frame_rejects_nan_probabilities(bundle_w1: Bundle) -> None:
    with pytest.raises(ModelMismatchError, match="the model returned NaN or infinite probabilities"):
        detect_frame(bundle_w1, toy_frame([1, 9, 2]), predictor=_NaNPredictor())


def test_detect_main_checks_output_folder_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "capture.csv"
    capture.write_text("a,b\n1,2\n", encoding="utf-8")
    missing = tmp_path / "absent" / "predictions.csv"

    status = detect_main(["--model", str(tmp_path / "none"), "--input", str(capture), "--out", str(missing)])

    assert status == 1
    assert f"--out {missing}: folder {missing.parent} not found; create it first" in capsys.readouterr().err


def test_detect_frame_warns_about_empty_column(bundle_w1: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    frame = toy_frame([1, 9] * 15)
    frame["b"] = "n/a"  # the exporter wrote no number in this column

    with caplog.at_level(logging.WARNING, logger="client.detect"):
        result = detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())

    assert result.rows_scored == 30
    assert "column(s) ['b'] in <frame> hold no numbers in 30 flow(s)" in caplog.text
    assert result.empty_columns == ("b",)
    assert result.to_summary()["empty_columns"] == ["b"]


def test_detect_frame_short_batch_no_empty_column(bundle_w1: Bundle) -> None:
    frame = toy_frame([1, 9] * 5)
    frame["b"] = "n/a"  # 10 rows are below EMPTY_COLUMN_MIN_ROWS

    result = detect_frame(bundle_w1, frame, predictor=LastFlowPredictor())

    assert result.empty_columns == ()
