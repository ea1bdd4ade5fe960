"""Tests for common.loading: reading flow CSVs and cleaning them against a dataset config."""

from __future__ import annotations

import dataclasses
import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import DatasetConfig, TaskConfig
from common.exceptions import (
    ConfigError,
    DataFileNotFoundError,
    DataValidationError,
    EmptyDataError,
)
from common.loading import FlowTable, clean_flows, load_flows, parse_flow_text, read_flow_csv

HEADER = "SrcAddr,Packet_num,Bytes,Dur,Flgs,Attack,Label"


def make_config(**changes: object) -> DatasetConfig:
    """Build a small dataset config: two identifiers, two numeric features, one categorical."""
    binary = TaskConfig(
        name="binary",
        label_column="Label",
        classes=("normal", "attack"),
        normal_class="normal",
        label_values={"0": "normal", "1": "attack"},
    )
    category = TaskConfig(
        name="category",
        label_column="Attack",
        classes=("normal", "Spoofing", "Data Alteration"),
        normal_class="normal",
    )
    config = DatasetConfig(
        name="toy",
        source=Path("configs/toy.toml"),
        files=("toy/flows.csv",),
        capture_order=True,
        tasks={"binary": binary, "category": category},
        default_task="binary",
        identifier_columns=("SrcAddr", "Packet_num"),
        numeric_features=("Bytes", "Dur"),
        categorical_features={"Flgs": ("e", "M", "e s")},
        missing_values="impute",
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def write_csv(folder: Path, rows: list[str], header: str = HEADER, name: str = "flows.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def raw_frame(rows: list[list[str]], header: str = HEADER) -> pd.DataFrame:
    """Build a text frame like read_flow_csv returns."""
    return pd.DataFrame(rows, columns=header.split(","), dtype=object)


FLOWS = [
    "10.0.0.1,1,100,0.5, e ,normal,0",
    "10.0.0.1,2,200,1.5,M,Spoofing,1",
    "10.0.0.2,3,300,2.5,e s,Data Alteration,1",
    "10.0.0.1,4,400,3.5,e,normal,0",
]


# --- read_flow_csv -----------------------------------------------------------


def test_read_gzip_matches_plain(tmp_path: Path) -> None:
    plain = write_csv(tmp_path, FLOWS)
    compressed = tmp_path / "flows.csv.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    # Gzip is detected from the magic bytes, so a misleading suffix still works.
    disguised = tmp_path / "disguised.csv"
    disguised.write_bytes(compressed.read_bytes())

    expected = read_flow_csv(plain)
    pd.testing.assert_frame_equal(read_flow_csv(compressed), expected)
    pd.testing.assert_frame_equal(read_flow_csv(disguised), expected)

    config = make_config()
    table_plain = load_flows(plain, config)
    table_gzip = load_flows(compressed, config)
    pd.testing.assert_frame_equal(table_gzip.features, table_plain.features)
    np.testing.assert_array_equal(table_gzip.labels, table_plain.labels)


def test_read_values_kept_as_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["10.0.0.1,007,NaN,, e ,normal,0"])
    frame = read_flow_csv(path)
    assert list(frame.iloc[0]) == ["10.0.0.1", "007", "NaN", "", " e ", "normal", "0"]
    assert all(frame[column].dtype == object for column in frame.columns)


def test_read_header_whitespace_stripped_crlf(tmp_path: Path) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(b"\xef\xbb\xbf SrcAddr,Packet_num,Bytes,Dur,Flgs,Attack, Label \r\n"
                     b"10.0.0.1,1,100,0.5,e,normal,0\r\n")
    frame = read_flow_csv(path)
    assert list(frame.columns) == HEADER.split(",")
    assert frame.loc[0, "Label"] == "0"
    assert len(frame) == 1


def test_read_duplicate_header_after_strip_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["1,0,0"], header="Bytes,Label, Label")
    with pytest.raises(DataValidationError, match=r"'Label' and ' Label'") as error:
        read_flow_csv(path)
    assert "flows.csv" in str(error.value)


def test_read_missing_file_hints_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(DataFileNotFoundError, match=r"absent\.csv.*FEDIDS_DATA_DIR") as error:
        read_flow_csv(path)
    assert "--data-dir" in str(error.value)
    assert isinstance(error.value, FileNotFoundError)


def test_read_empty_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(EmptyDataError, match=r"empty\.csv.*no header"):
        read_flow_csv(path)


def test_read_header_only_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [], name="header_only.csv")
    with pytest.raises(EmptyDataError, match=r"header_only\.csv has a header but no data rows"):
        read_flow_csv(path)


def test_read_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="is a directory"):
        read_flow_csv(tmp_path)


def test_read_row_with_extra_field_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["1,0", "2,1,extra"], header="Bytes,Label")
    with pytest.raises(DataValidationError, match=r"flows\.csv is not a valid CSV file"):
        read_flow_csv(path)


def test_read_non_utf8_rejected(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("Bytes,Label\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"latin1\.csv is not UTF-8"):
        read_flow_csv(path)


def test_read_truncated_gzip_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress(("Bytes,Label\n" + "1,0\n" * 1000).encode())[:40])
    with pytest.raises(DataValidationError, match=r"cut\.csv\.gz"):
        read_flow_csv(path)


def _pandas_reference(path: Path) -> pd.DataFrame:
    """Read a CSV the slow, plain way that read_flow_csv's fast reader must match."""
    raw = pd.read_csv(path, header=None, dtype=str, na_filter=False, encoding="utf-8-sig")
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = pd.Index([str(name).strip() for name in raw.iloc[0]])
    return frame


@pytest.mark.parametrize(
    "content",
    [
        b"a,b,c\n1,2,3\n4,5,6\n",
        b"\xef\xbb\xbfa,b,c\r\n1,,3\r\n",  # byte-order mark, CRLF, empty field
        b"a,b,c\n1,2\n4,5,6\n",  # a short row is padded with a missing value
        b'a,b,c\n1,"x\ny",3\n\n4,"",NA\n',  # quoted newline, blank line, quoted empty, NA text
        b"a,b,c\r1,2,3\r",  # old Mac line endings
        b"a,b,c\n 1 , null ,inf\n",  # whitespace and words are kept as written
    ],
    ids=["plain", "bom-crlf", "short-row", "quoted", "cr", "spaces"],
)
def test_read_matches_pandas_reader(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "flows.csv"
    path.write_bytes(content)

    pd.testing.assert_frame_equal(read_flow_csv(path), _pandas_reference(path))


def test_read_real_file_matches_pandas_reader(wustl_path: Path) -> None:
    pd.testing.assert_frame_equal(read_flow_csv(wustl_path), _pandas_reference(wustl_path))


# --- clean_flows: columns and labels -----------------------------------------


def test_clean_missing_columns_did_you_mean() -> None:
    frame = raw_frame([["10.0.0.1", "1", "0.5", "e", "0"]], header="SrcAddr,bytes,dur,Flgs,Label")
    pattern = r"site\.csv: missing required column\(s\) \['Bytes', 'Dur'\]"
    with pytest.raises(DataValidationError, match=pattern) as error:
        clean_flows(frame, make_config(), source="site.csv")
    message = str(error.value)
    assert "Similar unused names: for 'Bytes' the file has 'bytes'; for 'Dur' the file has 'dur'." in message
    assert "configs/toy.toml" in message


def test_clean_missing_columns_never_suggests_used_column() -> None:
    # "Dur" is missing; "Bytes" is present and required, so it is no misspelling of it.
    frame = raw_frame([["10.0.0.1", "1", "e", "0"]], header="SrcAddr,Bytes,Flgs,Label")
    with pytest.raises(DataValidationError, match=r"missing required column\(s\) \['Dur'\]") as error:
        clean_flows(frame, make_config(), source="site.csv")
    assert "Similar unused names" not in str(error.value)


def test_clean_semicolon_file_gets_delimiter_hint(tmp_path: Path) -> None:
    path = tmp_path / "flows.csv"
    path.write_text(HEADER.replace(",", ";") + "\n" + FLOWS[0].replace(",", ";") + "\n")

    with pytest.raises(DataValidationError, match="separated by semicolons; flow files must be comma-separated"):
        load_flows(path, make_config())


def test_clean_missing_label_column_listed() -> None:
    frame = raw_frame([["1", "0.5", "e"]], header="Bytes,Dur,Flgs")
    pattern = r"<frame>: missing required column\(s\) \['Attack'\] for dataset 'toy', task 'category'\."
    with pytest.raises(DataValidationError, match=pattern):
        clean_flows(frame, make_config(), "category")


def test_clean_repeated_column_rejected() -> None:
    frame = pd.DataFrame([["1", "2", "0.5", "e", "0"]], columns=["Bytes", "Bytes", "Dur", "Flgs", "Label"])
    with pytest.raises(DataValidationError, match=r"column\(s\) \['Bytes'\] occur more than once"):
        clean_flows(frame, make_config())


def test_clean_unknown_label_values_listed() -> None:
    labels = ["0", "1", "2", "2", "x", "0"]
    rows = [["h", str(i), str(i), "1", "e", "normal", label] for i, label in enumerate(labels)]
    with pytest.raises(DataValidationError) as error:
        clean_flows(raw_frame(rows), make_config(), source="site.csv")
    message = str(error.value)
    assert "site.csv: column 'Label'" in message
    assert "'2' (2 rows), 'x' (1 row)" in message
    assert "label_values" in message
    assert "[tasks.binary]" in message


def test_clean_label_values_normalised() -> None:
    labels = ["0", "1.0", " 1 ", "0.0", "1e0"]
    rows = [["h", str(i), str(i), "1", "e", "normal", label] for i, label in enumerate(labels)]
    table = clean_flows(raw_frame(rows), make_config())
    assert table.labels is not None
    assert table.labels.tolist() == [0, 1, 1, 0, 1]
    assert table.labels.dtype == np.int64


def test_clean_category_task_by_name() -> None:
    table = clean_flows(raw_frame([row.split(",") for row in FLOWS]), make_config(), "category")
    assert table.task.name == "category"
    assert table.labels is not None
    assert table.labels.tolist() == [0, 1, 2, 0]


def test_clean_unknown_task_rejected() -> None:
    with pytest.raises(ConfigError, match="has no task 'multiclass'"):
        clean_flows(raw_frame([row.split(",") for row in FLOWS]), make_config(), "multiclass")


def test_clean_rows_without_label_dropped() -> None:
    labels = ["0", "", "1", "NaN", " ", "1"]
    rows = [["h", str(i), str(i), "1", "e", "normal", label] for i, label in enumerate(labels)]
    table = clean_flows(raw_frame(rows), make_config())
    assert table.report.rows_without_label == 3
    assert table.report.rows_kept == 3
    assert table.labels is not None
    assert table.labels.tolist() == [0, 1, 1]
    assert table.features["Bytes"].tolist() == [0.0, 2.0, 5.0]


def test_clean_without_labels_allowed() -> None:
    frame = raw_frame([["h", "1", "5", "1", "e"]], header="SrcAddr,Packet_num,Bytes,Dur,Flgs")
    table = clean_flows(frame, make_config(), require_labels=False)
    assert table.labels is None
    assert len(table) == 1


# --- clean_flows: numeric and categorical values -----------------------------


def test_clean_non_numeric_tokens_counted() -> None:
    byte_tokens = ["100", "fido", " 7 ", "", "NaN", "null", "tfido", "+3", ".5", "1e3"]
    rows = [["h", str(i), token, "1", "e", "normal", "0"] for i, token in enumerate(byte_tokens)]
    table = clean_flows(raw_frame(rows), make_config())
    report = table.report
    assert report.non_numeric_tokens == {"Bytes": 2}
    assert report.missing_values == {"Bytes": 5}
    expected = [100.0, np.nan, 7.0, np.nan, np.nan, np.nan, np.nan, 3.0, 0.5, 1000.0]
    np.testing.assert_array_equal(table.features["Bytes"].to_numpy(), expected)
    assert table.features["Bytes"].dtype == np.float64


def test_clean_parses_same_with_or_without_bad_tokens() -> None:
    tokens = ["1e3", "+3", ".5", "-0.25", "7."]
    clean_rows = [["h", str(i), token, "1", "e", "normal", "0"] for i, token in enumerate(tokens)]
    dirty_rows = [*clean_rows, ["h", "99", "oops", "1", "e", "normal", "0"]]
    clean = clean_flows(raw_frame(clean_rows), make_config())
    dirty = clean_flows(raw_frame(dirty_rows), make_config())
    np.testing.assert_array_equal(dirty.features["Bytes"].to_numpy()[:5], clean.features["Bytes"].to_numpy())
    assert dirty.report.non_numeric_tokens == {"Bytes": 1}


@pytest.mark.parametrize(
    "token",
    ["1.", ".5", "+3", "-0", "1E5", "1e400", "-Infinity", "INF", "nAn", "1e", "e1", ".", "+", "0x10", "1_0",
     "1,5", "1 2", "١"],
)
def test_clean_number_grammar_same_both_paths(token: str) -> None:
    # Without "bad", a token that Arrow's strict cast accepts keeps the column
    # on the strict cast. With "bad", the column goes through the number
    # pattern, which must accept and parse the same tokens.
    rows = [["h", "1", token, "1", "e", "normal", "0"], ["h", "2", "1", "1", "e", "normal", "0"]]
    without_bad = clean_flows(raw_frame(rows), make_config())
    with_bad = clean_flows(raw_frame([*rows, ["h", "3", "bad", "1", "e", "normal", "0"]]), make_config())
    tokens_without_bad = without_bad.report.non_numeric_tokens.get("Bytes", 0)
    assert with_bad.report.non_numeric_tokens["Bytes"] == tokens_without_bad + 1
    np.testing.assert_equal(with_bad.features["Bytes"].iloc[0], without_bad.features["Bytes"].iloc[0])


def test_clean_infinities_made_missing() -> None:
    durations = ["inf", "-inf", "Infinity", "NaN", "2.5"]
    rows = [["h", str(i), "1", token, "e", "normal", "0"] for i, token in enumerate(durations)]
    table = clean_flows(raw_frame(rows), make_config())
    assert table.report.infinities == {"Dur": 3}
    assert table.report.missing_values == {"Dur": 4}
    assert table.report.non_numeric_tokens == {}
    assert not np.isinf(table.features["Dur"].to_numpy()).any()
    assert table.features["Dur"].isna().tolist() == [True, True, True, True, False]


def test_clean_drop_policy_drops_missing_rows() -> None:
    rows = [
        ["h", "1", "100", "1", "e", "normal", "0"],
        ["h", "2", "x", "1", "e", "normal", "1"],
        ["h", "3", "300", "inf", "e", "normal", "1"],
        ["h", "4", "400", "4", "e", "normal", "0"],
    ]
    table = clean_flows(raw_frame(rows), make_config(missing_values="drop"))
    report = table.report
    assert report.rows_dropped_missing == 2
    assert report.values_left_for_imputation == 0
    assert report.rows_kept == 2
    assert table.features["Bytes"].tolist() == [100.0, 400.0]
    assert table.labels is not None
    assert table.labels.tolist() == [0, 0]


def test_clean_impute_policy_keeps_missing() -> None:
    rows = [
        ["h", "1", "100", "1", "e", "normal", "0"],
        ["h", "2", "x", "", "e", "normal", "1"],
        ["h", "3", "300", "inf", "e", "normal", "1"],
    ]
    table = clean_flows(raw_frame(rows), make_config(missing_values="impute"))
    report = table.report
    assert report.rows_dropped_missing == 0
    assert report.values_left_for_imputation == 3
    assert report.missing_values == {"Bytes": 1, "Dur": 2}
    assert report.rows_kept == 3
    assert table.features.isna().sum().to_dict() == {"Bytes": 1, "Dur": 2, "Flgs": 0}


def test_clean_categorical_values_stripped() -> None:
    flags = [" e  ", "M", "  e s ", ""]
    rows = [["h", str(i), "1", "1", flag, "normal", "0"] for i, flag in enumerate(flags)]
    table = clean_flows(raw_frame(rows), make_config())
    assert table.features["Flgs"].tolist() == ["e", "M", "e s", ""]


def test_clean_numeric_frame_accepted() -> None:
    frame = pd.DataFrame(
        {
            "Bytes": [1, 2, 3],
            "Dur": [0.5, np.inf, np.nan],
            "Flgs": [6.0, 17.0, np.nan],
            "Label": [0.0, 1.0, np.nan],
        }
    )
    table = clean_flows(frame, make_config())
    assert table.labels is not None
    assert table.labels.tolist() == [0, 1]
    assert table.features["Flgs"].tolist() == ["6", "17"]
    assert table.report.infinities == {"Dur": 1}
    assert table.report.rows_without_label == 1


# --- clean_flows: duplicates, order and output shape -------------------------


def test_clean_exact_duplicates_dropped_identifier_kept() -> None:
    rows = [
        ["10.0.0.1", "1", "100", "1", "e", "normal", "0"],
        ["10.0.0.1", "1", "100", "1", "e", "normal", "0"],
        ["10.0.0.2", "1", "100", "1", "e", "normal", "0"],
        ["10.0.0.1", "2", "100", "1", "e", "normal", "0"],
    ]
    table = clean_flows(raw_frame(rows), make_config())
    assert table.report.duplicates_dropped == 1
    assert len(table) == 3


def test_clean_duplicates_among_many_distinct_rows() -> None:
    # Few rows share features here, so only those are compared in full.
    rows = [["h", str(i), str(i), "1", "e", "normal", "0"] for i in range(20)]
    rows.insert(10, list(rows[3]))
    rows.insert(15, ["other", "3", "3", "1", "e", "normal", "0"])
    table = clean_flows(raw_frame(rows), make_config())
    assert table.report.duplicates_dropped == 1
    expected = [*range(10), 10, 11, 12, 13, 3, *range(14, 20)]
    assert table.features["Bytes"].tolist() == [float(value) for value in expected]


def test_clean_duplicates_kept_when_disabled() -> None:
    rows = [["h", "1", "100", "1", "e", "normal", "0"]] * 3
    table = clean_flows(raw_frame(rows), make_config(drop_duplicates=False))
    assert table.report.duplicates_dropped == 0
    assert len(table) == 3


def test_clean_capture_order_and_columns() -> None:
    frame = raw_frame([row.split(",") for row in reversed(FLOWS)])
    frame.index = pd.Index([7, 3, 9, 1])
    table = clean_flows(frame, make_config())
    assert list(table.features.columns) == ["Bytes", "Dur", "Flgs"]
    assert isinstance(table.features.index, pd.RangeIndex)
    assert table.features["Bytes"].tolist() == [400.0, 300.0, 200.0, 100.0]
    assert table.labels is not None
    assert table.labels.tolist() == [0, 1, 1, 0]


def test_clean_no_rows_left_raises() -> None:
    rows = [["h", "1", "x", "1", "e", "normal", "0"], ["h", "2", "1", "1", "e", "normal", ""]]
    pattern = (
        r"site\.csv: no rows left after cleaning \(2 read, 1 without a 'Label' value, "
        r"1 with missing numeric values\); set missing_values = \"impute\""
    )
    with pytest.raises(EmptyDataError, match=pattern):
        clean_flows(raw_frame(rows), make_config(missing_values="drop"), source="site.csv")


def test_clean_report_to_dict() -> None:
    table = clean_flows(raw_frame([row.split(",") for row in FLOWS]), make_config(), source="site.csv")
    report = table.report.to_dict()
    assert report["source"] == "site.csv"
    assert report["rows_read"] == 4
    assert report["rows_kept"] == 4
    assert report["non_numeric_tokens"] == {}


def test_clean_logs_summary_and_repairs(caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        ["h", "1", "fido", "1", "e", "normal", "0"],
        ["h", "1", "fido", "1", "e", "normal", "0"],
        ["h", "2", "5", "inf", "e", "normal", ""],
    ]
    with caplog.at_level(logging.INFO, logger="common.loading"):
        clean_flows(raw_frame(rows), make_config(), source="site.csv")
    messages = [record.getMessage() for record in caplog.records]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "clean: kept 1 of 3 rows from site.csv" in messages[-1]
    assert any("2 non-numeric token(s)" in text and "Bytes (2)" in text for text in warnings)
    assert any("dropped 1 row(s) without a 'Label' value" in text for text in warnings)
    assert any("dropped 1 exact duplicate row(s)" in text for text in warnings)
    assert len(warnings) == 3


# --- FlowTable ---------------------------------------------------------------


def test_take_keeps_given_order() -> None:
    table = clean_flows(raw_frame([row.split(",") for row in FLOWS]), make_config())
    subset = table.take(np.array([2, 0]))
    assert isinstance(subset, FlowTable)
    assert subset.features["Bytes"].tolist() == [300.0, 100.0]
    assert isinstance(subset.features.index, pd.RangeIndex)
    assert subset.labels is not None
    assert subset.labels.tolist() == [1, 0]
    assert subset.report is table.report
    assert subset.task is table.task


def test_take_slice_and_mask() -> None:
    table = clean_flows(raw_frame([row.split(",") for row in FLOWS]), make_config())
    assert table.take(slice(1, 3)).features["Bytes"].tolist() == [200.0, 300.0]
    mask = np.array([True, False, False, True])
    assert table.take(mask).features["Bytes"].tolist() == [100.0, 400.0]
    assert len(table.take(np.array([], dtype=np.int64))) == 0


def test_flow_table_length_mismatch_rejected() -> None:
    table = clean_flows(raw_frame([row.split(",") for row in FLOWS]), make_config())
    with pytest.raises(ValueError, match="labels have 2 rows but features have 4"):
        FlowTable(features=table.features, labels=np.zeros(2, dtype=np.int64), task=table.task,
                  report=table.report)


# --- real captures -----------------------------------------------------------


def test_load_wustl_binary(wustl_path: Path, wustl_config: DatasetConfig) -> None:
    table = load_flows(wustl_path, wustl_config, "binary")
    assert len(table) == 16_318
    assert table.labels is not None
    assert np.bincount(table.labels).tolist() == [14_272, 2_046]
    assert list(table.features.columns) == list(wustl_config.feature_columns)
    assert not set(wustl_config.identifier_columns) & set(table.features.columns)
    assert "SrcMac" not in table.features.columns
    assert table.report.rows_kept == 16_318
    assert table.report.duplicates_dropped == 0


def test_load_wustl_category(wustl_path: Path, wustl_config: DatasetConfig) -> None:
    table = load_flows(wustl_path, wustl_config, "category")
    assert table.labels is not None
    assert np.bincount(table.labels).tolist() == [14_272, 1_124, 922]
    numeric = table.features[list(wustl_config.numeric_features)]
    assert (numeric.dtypes == np.float64).all()
    flags = set(table.features["Flgs"])
    assert flags <= set(wustl_config.categorical_features["Flgs"])
    assert "M" in flags


def test_load_nfton_sample(nfton_path: Path, nfton_config: DatasetConfig) -> None:
    table = load_flows(nfton_path, nfton_config, "category")
    assert len(table) == 30_000
    assert table.labels is not None
    counts = dict(zip(table.task.classes, np.bincount(table.labels, minlength=10).tolist(), strict=True))
    assert counts == {
        "Benign": 8_393, "scanning": 6_846, "xss": 5_523, "ddos": 3_916, "password": 2_214,
        "injection": 1_521, "dos": 1_515, "backdoor": 40, "mitm": 25, "ransomware": 7,
    }
    assert not {"L4_SRC_PORT", "L4_DST_PORT", "DNS_QUERY_ID"} & set(table.features.columns)


def test_load_nfton_binary(nfton_path: Path, nfton_config: DatasetConfig) -> None:
    table = load_flows(nfton_path, nfton_config, "binary")
    assert table.labels is not None
    assert np.bincount(table.labels).tolist() == [8_393, 30_000 - 8_393]


def test_parse_flow_text_bad_line_row() -> None:
    # Data rows 100 and 101 of the file, a blank line, then the bad data row 102.
    text = b"a,b\n1,2\n\n3,4\n5,6,7\n"

    with pytest.raises(DataValidationError, match=r"line 5, saw 3 \(data row 102 of the file, counted from 0"):
        parse_flow_text(text, Path("live.csv"), rows_before=100)
    with pytest.raises(DataValidationError, match=r"line 5, saw 3 \(data row 2 of the file"):
        parse_flow_text(text, Path("live.csv"))
