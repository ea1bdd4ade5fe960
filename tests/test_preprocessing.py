"""Tests of the federation-wide statistics and the agreed transform."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import DatasetConfig, TaskConfig
from common.exceptions import ConfigError, DataValidationError, PreprocessingError
from common.preprocessing import (
    UNKNOWN_CATEGORY,
    FeatureStatistics,
    Preprocessor,
    expand_bits,
    signed_log1p,
)


def make_config(
    numeric: tuple[str, ...] = ("a", "b"),
    categorical: dict[str, tuple[str, ...]] | None = None,
    log_transform: bool = False,
    bitmask: dict[str, int] | None = None,
) -> DatasetConfig:
    task = TaskConfig(
        name="binary",
        label_column="Label",
        classes=("normal", "attack"),
        normal_class="normal",
        label_values={"0": "normal", "1": "attack"},
    )
    return DatasetConfig(
        name="toy",
        source=Path("toy.toml"),
        files=("toy.csv",),
        capture_order=True,
        tasks={"binary": task},
        default_task="binary",
        identifier_columns=(),
        numeric_features=numeric,
        categorical_features={"proto": ("tcp", "udp")} if categorical is None else categorical,
        log_transform=log_transform,
        bitmask_features={} if bitmask is None else bitmask,
    )


def make_frame(**columns: list[object]) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    for name in frame.columns:
        if name != "proto":
            frame[name] = frame[name].astype(np.float64)
    return frame


def build(frame: pd.DataFrame, config: DatasetConfig) -> Preprocessor:
    return Preprocessor.from_statistics(FeatureStatistics.fit(frame, config), config)


# ---------------------------------------------------------------------------
# signed_log1p and statistics
# ---------------------------------------------------------------------------


def test_signed_log1p_values() -> None:
    values = np.array([0.0, 1.0, -1.0, np.e - 1.0, np.nan])
    result = signed_log1p(values)
    np.testing.assert_allclose(result[:4], [0.0, np.log(2.0), -np.log(2.0), 1.0])
    assert np.isnan(result[4])


def test_fit_ignores_nan() -> None:
    config = make_config()
    frame = make_frame(a=[1.0, np.nan, 3.0], b=[np.nan, np.nan, np.nan], proto=["tcp", "udp", "tcp"])

    stats = FeatureStatistics.fit(frame, config)

    assert stats.n_rows == 3
    np.testing.assert_array_equal(stats.count, [2, 0])
    np.testing.assert_array_equal(stats.minimum, [1.0, np.nan])
    np.testing.assert_array_equal(stats.maximum, [3.0, np.nan])
    np.testing.assert_array_equal(stats.total, [4.0, 0.0])
    np.testing.assert_array_equal(stats.mean(), [2.0, np.nan])


def test_fit_counts_categories_with_unknown_bucket() -> None:
    config = make_config()
    frame = make_frame(a=[1, 2, 3, 4], b=[1, 2, 3, 4], proto=["tcp", "icmp", "", "tcp"])

    stats = FeatureStatistics.fit(frame, config)

    assert stats.category_counts == {"proto": {"tcp": 2, "udp": 0, UNKNOWN_CATEGORY: 2}}


def test_fit_log_transform_statistics_in_log_space() -> None:
    config = make_config(log_transform=True)
    frame = make_frame(a=[0.0, 9.0, -99.0], b=[1.0, 1.0, 1.0], proto=["tcp"] * 3)

    stats = FeatureStatistics.fit(frame, config)

    assert stats.log_transform
    np.testing.assert_allclose(stats.minimum, [-np.log(100.0), np.log(2.0)])
    np.testing.assert_allclose(stats.maximum, [np.log(10.0), np.log(2.0)])


def test_fit_missing_column_error() -> None:
    frame = make_frame(a=[1.0], proto=["tcp"])
    with pytest.raises(DataValidationError, match=r"lacks 1 column\(s\) \['b'\]"):
        FeatureStatistics.fit(frame, make_config())


def test_fit_non_numeric_column_error() -> None:
    frame = pd.DataFrame({"a": [1.0], "b": ["high"], "proto": ["tcp"]})
    with pytest.raises(DataValidationError, match=r"column\(s\) \['b'\] hold non-numeric values"):
        FeatureStatistics.fit(frame, make_config())


def test_fit_infinity_counts_as_missing(caplog: pytest.LogCaptureFixture) -> None:
    frame = make_frame(a=[1.0, np.inf, 3.0], b=[-np.inf, 2.0, 2.0], proto=["tcp"] * 3)

    with caplog.at_level(logging.WARNING, logger="common.preprocessing"):
        stats = FeatureStatistics.fit(frame, make_config())

    np.testing.assert_array_equal(stats.count, [2, 2])
    np.testing.assert_array_equal(stats.maximum, [3.0, 2.0])
    assert "treated 2 infinite value(s)" in caplog.text


# ---------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------


def random_frame(n_rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(50.0, 20.0, n_rows)
    b = rng.exponential(1000.0, n_rows)
    a[rng.random(n_rows) < 0.1] = np.nan
    proto = rng.choice(["tcp", "udp", "icmp", ""], n_rows)
    return pd.DataFrame({"a": a, "b": b, "proto": proto})


def test_merge_halves_equals_whole() -> None:
    config = make_config()
    frame = random_frame(501, seed=3)
    whole = FeatureStatistics.fit(frame, config)

    merged = FeatureStatistics.merge(
        [FeatureStatistics.fit(frame.iloc[:200], config), FeatureStatistics.fit(frame.iloc[200:], config)]
    )

    assert merged.n_rows == whole.n_rows == 501
    assert merged.features == whole.features
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_array_equal(merged.minimum, whole.minimum)
    np.testing.assert_array_equal(merged.maximum, whole.maximum)
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-12)
    np.testing.assert_allclose(merged.mean(), whole.mean(), rtol=1e-12)
    assert merged.category_counts == whole.category_counts


def test_merge_with_empty_site() -> None:
    config = make_config()
    frame = random_frame(100, seed=4)
    site = FeatureStatistics.fit(frame, config)
    empty = FeatureStatistics.fit(frame.iloc[:0], config)

    merged = FeatureStatistics.merge([empty, site, empty])

    assert empty.n_rows == 0
    np.testing.assert_array_equal(empty.minimum, [np.nan, np.nan])
    assert merged.n_rows == 100
    np.testing.assert_array_equal(merged.count, site.count)
    np.testing.assert_array_equal(merged.minimum, site.minimum)
    np.testing.assert_array_equal(merged.maximum, site.maximum)
    np.testing.assert_array_equal(merged.total, site.total)
    assert merged.category_counts == site.category_counts
    assert Preprocessor.from_statistics(merged, config) == Preprocessor.from_statistics(site, config)


def test_merge_feature_mismatch_error() -> None:
    frame = make_frame(a=[1.0], b=[2.0], c=[3.0], proto=["tcp"])
    first = FeatureStatistics.fit(frame, make_config(numeric=("a", "b")))
    second = FeatureStatistics.fit(frame, make_config(numeric=("a", "c")))

    with pytest.raises(PreprocessingError, match=r"only in the first: \['b'\]; only in the second: \['c'\]"):
        FeatureStatistics.merge([first, second])


def test_merge_feature_order_mismatch_error() -> None:
    frame = make_frame(a=[1.0], b=[2.0], proto=["tcp"])
    first = FeatureStatistics.fit(frame, make_config(numeric=("a", "b")))
    second = FeatureStatistics.fit(frame, make_config(numeric=("b", "a")))

    with pytest.raises(PreprocessingError, match="same columns in a different order"):
        FeatureStatistics.merge([first, second])


def test_merge_log_transform_mismatch_error() -> None:
    frame = make_frame(a=[1.0], b=[2.0], proto=["tcp"])
    first = FeatureStatistics.fit(frame, make_config(log_transform=False))
    second = FeatureStatistics.fit(frame, make_config(log_transform=True))

    with pytest.raises(PreprocessingError, match="site 1 has log_transform=True but site 0 has False"):
        FeatureStatistics.merge([first, second])


def test_merge_vocabulary_mismatch_error() -> None:
    frame = make_frame(a=[1.0], b=[2.0], proto=["tcp"])
    first = FeatureStatistics.fit(frame, make_config())
    second = FeatureStatistics.fit(frame, make_config(categorical={"proto": ("tcp", "udp", "icmp")}))

    with pytest.raises(PreprocessingError, match="categorical vocabularies"):
        FeatureStatistics.merge([first, second])


def test_merge_empty_sequence_error() -> None:
    with pytest.raises(PreprocessingError, match="no site statistics to merge"):
        FeatureStatistics.merge([])


def test_statistics_dict_round_trip() -> None:
    config = make_config()
    frame = make_frame(a=[1.0, 2.0], b=[np.nan, np.nan], proto=["tcp", "x"])
    stats = FeatureStatistics.fit(frame, config)

    text = json.dumps(stats.to_dict(), allow_nan=False)
    restored = FeatureStatistics.from_dict(json.loads(text))

    assert restored.to_dict() == stats.to_dict()
    np.testing.assert_array_equal(restored.minimum, [1.0, np.nan])


def test_statistics_from_dict_errors() -> None:
    stats = FeatureStatistics.fit(make_frame(a=[1.0], b=[2.0], proto=["tcp"]), make_config())
    data = stats.to_dict()

    with pytest.raises(PreprocessingError, match="format_version is 7"):
        FeatureStatistics.from_dict({**data, "format_version": 7})
    with pytest.raises(PreprocessingError, match="key 'total' is missing"):
        FeatureStatistics.from_dict({key: value for key, value in data.items() if key != "total"})
    with pytest.raises(PreprocessingError, match="key 'minimum' has 1 values, expected 2"):
        FeatureStatistics.from_dict({**data, "minimum": [0.0]})
    with pytest.raises(PreprocessingError, match="key 'count' must be 2 integers"):
        FeatureStatistics.from_dict({**data, "count": [1, "1"]})
    with pytest.raises(PreprocessingError, match="key 'category_counts'"):
        FeatureStatistics.from_dict({**data, "category_counts": {"proto": {"tcp": 1}}})


def test_statistics_from_dict_invalid_values() -> None:
    stats = FeatureStatistics.fit(make_frame(a=[1.0, 3.0], b=[2.0, 2.0], proto=["tcp", "x"]), make_config())
    data = json.loads(json.dumps(stats.to_dict()))

    with pytest.raises(PreprocessingError, match="minimum must be finite where count > 0"):
        FeatureStatistics.from_dict({**data, "minimum": [float("-inf"), 2.0]})
    with pytest.raises(PreprocessingError, match="maximum must be finite where count > 0"):
        FeatureStatistics.from_dict({**data, "maximum": [None, 2.0]})
    with pytest.raises(PreprocessingError, match=r"minimum exceeds maximum for \['a'\]"):
        FeatureStatistics.from_dict({**data, "minimum": [5.0, 2.0]})
    with pytest.raises(PreprocessingError, match=r"counts \[3, 2\] must lie in \[0, n_rows=2\]"):
        FeatureStatistics.from_dict({**data, "count": [3, 2]})
    with pytest.raises(PreprocessingError, match="category counts of 'proto' sum to 3, but n_rows is 2"):
        FeatureStatistics.from_dict(
            {**data, "category_counts": {"proto": {"tcp": 2, "udp": 0, UNKNOWN_CATEGORY: 1}}}
        )


# ---------------------------------------------------------------------------
# Transform
# ---------------------------------------------------------------------------


def test_transform_min_max_equation() -> None:
    config = make_config()
    train = make_frame(a=[0.0, 5.0, 10.0], b=[2.0, 4.0, 6.0], proto=["tcp"] * 3)
    preprocessor = build(train, config)

    X = preprocessor.transform(make_frame(a=[5.0, 2.5], b=[3.0, 6.0], proto=["tcp", "udp"]))

    # (x - min) / (max - min): a in [0, 10], b in [2, 6].
    expected = np.array([[0.5, 0.25, 1.0, 0.0, 0.0], [0.25, 1.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X, expected)


def test_transform_clips_outside_range() -> None:
    config = make_config()
    preprocessor = build(make_frame(a=[0.0, 10.0], b=[2.0, 6.0], proto=["tcp"] * 2), config)

    X = preprocessor.transform(make_frame(a=[-5.0, 20.0], b=[1.0, 100.0], proto=["tcp"] * 2))

    np.testing.assert_array_equal(X[:, :2], [[0.0, 0.0], [1.0, 1.0]])


def test_transform_zero_range_column_gives_zero() -> None:
    config = make_config()
    preprocessor = build(make_frame(a=[0.0, 10.0], b=[7.0, 7.0], proto=["tcp"] * 2), config)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X = preprocessor.transform(make_frame(a=[5.0, 5.0, 5.0], b=[7.0, 100.0, -3.0], proto=["tcp"] * 3))

    np.testing.assert_array_equal(X[:, 1], [0.0, 0.0, 0.0])


def test_transform_never_seen_column_gives_zero(caplog: pytest.LogCaptureFixture) -> None:
    config = make_config()
    train = make_frame(a=[0.0, 10.0], b=[np.nan, np.nan], proto=["tcp"] * 2)

    with caplog.at_level(logging.WARNING, logger="common.preprocessing"):
        preprocessor = build(train, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X = preprocessor.transform(make_frame(a=[5.0, 5.0], b=[3.0, np.nan], proto=["tcp"] * 2))

    assert "no site has a value for ['b']" in caplog.text
    assert preprocessor.fill_value[1] == 0.0
    np.testing.assert_array_equal(X[:, 1], [0.0, 0.0])


def test_transform_fills_nan_with_mean() -> None:
    config = make_config()
    # a: values 0, 10, 20 -> mean 10, range [0, 20]; the NaN row becomes 10 / 20.
    train = make_frame(a=[0.0, 10.0, np.nan, 20.0], b=[1.0, 2.0, 3.0, 5.0], proto=["tcp"] * 4)
    preprocessor = build(train, config)

    X = preprocessor.transform(make_frame(a=[np.nan], b=[np.nan], proto=["tcp"]))

    np.testing.assert_allclose(preprocessor.fill_value, [10.0, 11.0 / 4.0])
    np.testing.assert_allclose(X[0, :2], [0.5, (11.0 / 4.0 - 1.0) / 4.0])
    assert not np.isnan(X).any()


def test_transform_log_keeps_ordinary_values_apart() -> None:
    train = make_frame(a=[0.0, 10.0, 100.0, 1e38], b=[1.0, 2.0, 3.0, 4.0], proto=["tcp"] * 4)
    rows = make_frame(a=[10.0, 100.0], b=[1.0, 1.0], proto=["tcp"] * 2)

    log_X = build(train, make_config(log_transform=True)).transform(rows)
    plain_X = build(train, make_config(log_transform=False)).transform(rows)

    expected = np.array([np.log1p(10.0), np.log1p(100.0)]) / np.log1p(1e38)
    np.testing.assert_allclose(log_X[:, 0], expected, rtol=1e-6)
    assert log_X[1, 0] - log_X[0, 0] > 0.02
    # Without the transform both values land within 1e-35 of zero.
    assert plain_X[1, 0] < 1e-35


def test_transform_unseen_category_goes_to_unknown(caplog: pytest.LogCaptureFixture) -> None:
    config = make_config()
    site_a = make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"])
    site_b = make_frame(a=[0.0, 1.0, 2.0], b=[0.0, 1.0, 2.0], proto=["tcp", "icmp", ""])
    stats = FeatureStatistics.merge(
        [FeatureStatistics.fit(site_a, config), FeatureStatistics.fit(site_b, config)]
    )
    preprocessor = Preprocessor.from_statistics(stats, config)

    X_a = preprocessor.transform(site_a)
    with caplog.at_level(logging.INFO, logger="common.preprocessing"):
        X_b = preprocessor.transform(site_b)

    assert preprocessor.output_columns == ("a", "b", "proto=tcp", "proto=udp", f"proto={UNKNOWN_CATEGORY}")
    assert X_a.shape[1] == X_b.shape[1] == 5
    np.testing.assert_array_equal(X_a[:, 2:], [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(X_b[:, 2:], [[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    assert "2 of 3 proto values are outside the vocabulary (1 missing" in caplog.text
    assert "'icmp'" in caplog.text


def test_transform_log_cuts_long_unseen_values(caplog: pytest.LogCaptureFixture) -> None:
    config = make_config()
    train = make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"])
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(train, config), config)
    hostile = make_frame(a=[0.0], b=[0.0], proto=["A" * 100_000])

    with caplog.at_level(logging.INFO, logger="common.preprocessing"):
        preprocessor.transform(hostile)

    assert "'" + "A" * 40 + "... (100000 characters)'" in caplog.text
    assert len(caplog.text) < 1000


def test_transform_several_categorical_columns() -> None:
    config = make_config(numeric=("a",), categorical={"proto": ("tcp", "udp"), "flag": ("S", "F", "R")})
    frame = pd.DataFrame({"a": [1.0, 2.0], "proto": ["udp", "gre"], "flag": ["R", "S"]})
    preprocessor = build(frame, config)

    X = preprocessor.transform(frame)

    assert preprocessor.output_columns == (
        "a",
        "proto=tcp",
        "proto=udp",
        "flag=S",
        "flag=F",
        "flag=R",
        f"proto={UNKNOWN_CATEGORY}",
        f"flag={UNKNOWN_CATEGORY}",
    )
    np.testing.assert_array_equal(X, [[0, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 1, 0, 0, 1, 0]])


def test_transform_numeric_category_values() -> None:
    config = make_config(numeric=("a",), categorical={"proto": ("6", "17")})
    train = pd.DataFrame({"a": [0.0, 1.0], "proto": ["6", "17"]})
    preprocessor = build(train, config)

    as_float = preprocessor.transform(pd.DataFrame({"a": [0.0, 0.0, 0.0], "proto": [6.0, 17.0, np.nan]}))
    as_int = preprocessor.transform(pd.DataFrame({"a": [0.0, 0.0], "proto": [6, 1]}))

    np.testing.assert_array_equal(as_float[:, 1:], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(as_int[:, 1:], [[1, 0, 0], [0, 0, 1]])


def test_transform_missing_column_error() -> None:
    config = make_config()
    preprocessor = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), config)

    with pytest.raises(DataValidationError, match=r"lacks 2 column\(s\) \['b', 'proto'\]"):
        preprocessor.transform(make_frame(a=[0.5]))


def test_transform_ignores_extra_columns_and_order() -> None:
    config = make_config()
    train = make_frame(a=[0.0, 4.0], b=[0.0, 2.0], proto=["tcp", "udp"])
    preprocessor = build(train, config)

    shuffled = pd.DataFrame({"Label": [1], "proto": ["udp"], "b": [1.0], "a": [1.0]})
    X = preprocessor.transform(shuffled)

    np.testing.assert_array_equal(X, [[0.25, 0.5, 0.0, 1.0, 0.0]])


def test_transform_empty_frame() -> None:
    config = make_config()
    frame = make_frame(a=[0.0, 4.0], b=[0.0, 2.0], proto=["tcp", "udp"])
    preprocessor = build(frame, config)

    X = preprocessor.transform(frame.iloc[:0])

    assert X.shape == (0, 5)


def test_transform_throughput_above_200k_rows_per_second() -> None:
    rng = np.random.default_rng(0)
    numeric = tuple(f"f{i}" for i in range(30))
    config = make_config(numeric=numeric, categorical={"proto": ("e", "M", "eR", "e s", "M *", "M d", "MR")})
    n_rows = 200_000
    frame = pd.DataFrame(rng.exponential(1000.0, (n_rows, 30)), columns=list(numeric))
    frame["proto"] = rng.choice(["e", "M", "eR", "x"], n_rows)
    preprocessor = build(frame, config)

    preprocessor.transform(frame.iloc[:1000])
    started = time.perf_counter()
    X = preprocessor.transform(frame)
    elapsed = time.perf_counter() - started

    assert X.shape == (n_rows, 38)
    # The bound is loose so that a busy CI runner still passes.
    assert n_rows / elapsed > 200_000, f"{n_rows / elapsed:.0f} rows/s"


# ---------------------------------------------------------------------------
# Building, selection, window and JSON
# ---------------------------------------------------------------------------


def test_from_statistics_records_task() -> None:
    config = make_config()
    preprocessor = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), config)

    assert preprocessor.dataset == "toy"
    assert preprocessor.task == "binary"
    assert preprocessor.label_column == "Label"
    assert preprocessor.classes == ("normal", "attack")
    assert preprocessor.n_classes == 2
    assert preprocessor.n_features == 5
    assert preprocessor.n_rows == 2


def test_from_statistics_unknown_task_error() -> None:
    config = make_config()
    stats = FeatureStatistics.fit(make_frame(a=[0.0], b=[0.0], proto=["tcp"]), config)
    with pytest.raises(ConfigError, match="has no task 'category'"):
        Preprocessor.from_statistics(stats, config, task="category")


def test_from_statistics_config_mismatch_error() -> None:
    frame = make_frame(a=[0.0], b=[0.0], c=[0.0], proto=["tcp"])
    stats = FeatureStatistics.fit(frame, make_config(numeric=("a", "c")))
    with pytest.raises(PreprocessingError, match=r"only in the first: \['c'\]; only in the second: \['b'\]"):
        Preprocessor.from_statistics(stats, make_config())


def test_from_statistics_no_rows_error() -> None:
    config = make_config()
    stats = FeatureStatistics.fit(make_frame(a=[0.0], b=[0.0], proto=["tcp"]).iloc[:0], config)
    with pytest.raises(PreprocessingError, match="no training rows from any site"):
        Preprocessor.from_statistics(stats, config)


def test_with_selection_keeps_output_order() -> None:
    config = make_config()
    frame = make_frame(a=[0.0, 4.0], b=[0.0, 2.0], proto=["tcp", "udp"])
    preprocessor = build(frame, config)
    full = preprocessor.transform(frame)

    selected = preprocessor.with_selection(["proto=udp", "a"], ranking={"a": 0.5, "proto=udp": 0.25})
    X = selected.transform(frame)

    assert selected.feature_names == ("a", "proto=udp")
    assert selected.n_features == 2
    assert selected.feature_ranking == {"a": 0.5, "proto=udp": 0.25}
    assert preprocessor.selected_columns is None
    np.testing.assert_array_equal(X, full[:, [0, 3]])


def test_with_selection_unknown_column_error() -> None:
    preprocessor = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), make_config())
    with pytest.raises(PreprocessingError, match=r"unknown column\(s\) \['c'\]"):
        preprocessor.with_selection(["a", "c"])
    with pytest.raises(PreprocessingError, match="keep at least one column"):
        preprocessor.with_selection([])
    with pytest.raises(PreprocessingError, match="listed more than once"):
        preprocessor.with_selection(["a", "a"])


def test_with_window_records_window() -> None:
    preprocessor = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), make_config())

    assert preprocessor.with_window(8).window == 8
    assert preprocessor.window == 1
    with pytest.raises(PreprocessingError, match="window must be an integer >= 1, got 0"):
        preprocessor.with_window(0)


def test_json_round_trip_gives_identical_transform(tmp_path: Path) -> None:
    config = make_config(log_transform=True)
    train = make_frame(a=[0.0, 3.0, np.nan, 1e38], b=[np.nan] * 4, proto=["tcp", "udp", "x", ""])
    preprocessor = (
        build(train, config)
        .with_selection(["a", "b", f"proto={UNKNOWN_CATEGORY}"], {"a": 1.0})
        .with_window(4)
    )
    rows = make_frame(a=[1.0, -2.0, np.nan], b=[5.0, np.nan, 1.0], proto=["udp", "gre", "tcp"])

    path = preprocessor.save(tmp_path / "model" / "preprocessing.json")
    restored = Preprocessor.load(path)

    assert restored == preprocessor
    assert restored.window == 4
    assert restored.selected_columns == ("a", "b", f"proto={UNKNOWN_CATEGORY}")
    np.testing.assert_array_equal(restored.transform(rows), preprocessor.transform(rows))
    assert json.loads(path.read_text())["minimum"][1] is None


def test_from_dict_version_and_key_errors() -> None:
    data = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), make_config()).to_dict()

    with pytest.raises(PreprocessingError, match="format_version is 3, but this code reads version 1 or 2"):
        Preprocessor.from_dict({**data, "format_version": 3})
    with pytest.raises(PreprocessingError, match="format_version is None"):
        Preprocessor.from_dict({key: value for key, value in data.items() if key != "format_version"})
    with pytest.raises(PreprocessingError, match="key 'fill_value' is missing"):
        Preprocessor.from_dict({key: value for key, value in data.items() if key != "fill_value"})
    with pytest.raises(PreprocessingError, match="key 'maximum' has 3 values, expected 2"):
        Preprocessor.from_dict({**data, "maximum": [1.0, 1.0, 1.0]})
    with pytest.raises(PreprocessingError, match="key 'log_transform' must be bool"):
        Preprocessor.from_dict({**data, "log_transform": "yes"})
    with pytest.raises(PreprocessingError, match="minimum exceeds maximum for \\['a'\\]"):
        Preprocessor.from_dict({**data, "minimum": [2.0, 0.0]})
    with pytest.raises(PreprocessingError, match=r"unknown column\(s\) \['z'\]"):
        Preprocessor.from_dict({**data, "selected_columns": ["z"]})


# ---------------------------------------------------------------------------
# Bit-mask columns
# ---------------------------------------------------------------------------


def test_expand_bits_values() -> None:
    values = np.array([0.0, 1.0, 18.0, 255.0, np.nan])

    expanded, n_invalid = expand_bits(values, 8)

    # 18 = 0b00010010 (SYN and ACK); 255 sets every bit; missing gives none.
    X_gt = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    assert expanded.dtype == np.float32
    np.testing.assert_array_equal(expanded, X_gt)
    assert n_invalid == 0


@pytest.mark.parametrize(
    "value", [-1.0, 2.5, 16.0, np.inf], ids=["negative", "fraction", "too-wide", "infinite"]
)
def test_expand_bits_invalid_value_gives_zeros(value: float) -> None:
    expanded, n_invalid = expand_bits(np.array([value, 3.0]), 4)

    np.testing.assert_array_equal(expanded, [[0, 0, 0, 0], [1, 1, 0, 0]])
    assert n_invalid == 1


def test_transform_bitmask_columns_after_one_hot() -> None:
    config = make_config(bitmask={"b": 3}, log_transform=True)
    train = make_frame(a=[0.0, 10.0], b=[0.0, 7.0], proto=["tcp", "udp"])
    preprocessor = build(train, config)

    X = preprocessor.transform(make_frame(a=[0.0, 0.0, 0.0], b=[5.0, 2.0, np.nan], proto=["tcp"] * 3))

    assert preprocessor.output_columns == (
        "a",
        "b",
        "proto=tcp",
        "proto=udp",
        f"proto={UNKNOWN_CATEGORY}",
        "b:bit0",
        "b:bit1",
        "b:bit2",
    )
    assert preprocessor.n_features == 8
    # The bits come from the raw values (5 = 0b101, 2 = 0b010), not from the
    # log-transformed ones; a missing value sets none of them.
    np.testing.assert_array_equal(X[:, 5:], [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    # The scaled value stays: log1p(5) / log1p(7) for the first row.
    np.testing.assert_allclose(X[0, 1], np.log1p(5.0) / np.log1p(7.0), rtol=1e-6)


def test_transform_bitmask_invalid_value_warns(caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(bitmask={"b": 2})
    preprocessor = build(make_frame(a=[0.0, 1.0], b=[0.0, 3.0], proto=["tcp"] * 2), config)

    with caplog.at_level(logging.WARNING, logger="common.preprocessing"):
        X = preprocessor.transform(make_frame(a=[0.0, 0.0], b=[9.0, 1.0], proto=["tcp"] * 2))

    np.testing.assert_array_equal(X[:, -2:], [[0, 0], [1, 0]])
    assert "1 of 2 b values are not integers in [0, 2**2)" in caplog.text


def test_bitmask_json_round_trip(tmp_path: Path) -> None:
    config = make_config(bitmask={"a": 8, "b": 2})
    preprocessor = build(make_frame(a=[0.0, 255.0], b=[0.0, 3.0], proto=["tcp", "udp"]), config)
    rows = make_frame(a=[18.0, 7.0], b=[1.0, 2.0], proto=["udp", "tcp"])

    path = preprocessor.save(tmp_path / "preprocessing.json")
    restored = Preprocessor.load(path)

    assert json.loads(path.read_text())["bitmask_features"] == {"a": 8, "b": 2}
    assert restored.bitmask_features == {"a": 8, "b": 2}
    assert restored == preprocessor
    assert restored.n_features == 2 + 3 + 8 + 2
    np.testing.assert_array_equal(restored.transform(rows), preprocessor.transform(rows))


def test_bitmask_selection_keeps_bit_columns() -> None:
    config = make_config(bitmask={"b": 2})
    preprocessor = build(make_frame(a=[0.0, 1.0], b=[0.0, 3.0], proto=["tcp"] * 2), config)

    selected = preprocessor.with_selection(["b:bit1", "a"])
    X = selected.transform(make_frame(a=[1.0], b=[2.0], proto=["tcp"]))

    assert selected.feature_names == ("a", "b:bit1")
    np.testing.assert_array_equal(X, [[1.0, 1.0]])


def test_from_dict_version_1_has_no_bitmask() -> None:
    data = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), make_config()).to_dict()
    version_1 = {key: value for key, value in data.items() if key != "bitmask_features"}

    restored = Preprocessor.from_dict({**version_1, "format_version": 1})

    assert restored.bitmask_features == {}
    assert restored.n_features == 5


def test_from_dict_bitmask_errors() -> None:
    data = build(make_frame(a=[0.0, 1.0], b=[0.0, 1.0], proto=["tcp", "udp"]), make_config()).to_dict()

    with pytest.raises(PreprocessingError, match="key 'bitmask_features' is missing"):
        Preprocessor.from_dict({key: value for key, value in data.items() if key != "bitmask_features"})
    with pytest.raises(PreprocessingError, match="column 'a' has '8'"):
        Preprocessor.from_dict({**data, "bitmask_features": {"a": "8"}})
    with pytest.raises(PreprocessingError, match="bit-mask column 'z' is not a numeric feature"):
        Preprocessor.from_dict({**data, "bitmask_features": {"z": 8}})
    with pytest.raises(PreprocessingError, match="bit-mask column 'a' has 0 bits; expected 1 to 32"):
        Preprocessor.from_dict({**data, "bitmask_features": {"a": 0}})


def test_load_missing_and_invalid_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PreprocessingError, match="preprocessor file not found"):
        Preprocessor.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PreprocessingError, match="invalid JSON"):
        Preprocessor.load(broken)


# ---------------------------------------------------------------------------
# Real captures
# ---------------------------------------------------------------------------


def read_features(path: Path, config: DatasetConfig) -> pd.DataFrame:
    """Read a real capture into the loader's output layout with pandas alone."""
    raw = pd.read_csv(path, low_memory=False)
    frame = pd.DataFrame(
        {
            column: pd.to_numeric(raw[column], errors="coerce").astype(np.float64)
            for column in config.numeric_features
        }
    )
    for column in config.categorical_features:
        frame[column] = raw[column].fillna("").astype(str).str.strip()
    return frame


def test_real_wustl_preprocessor_from_training_rows(wustl_path: Path, wustl_config: DatasetConfig) -> None:
    features = read_features(wustl_path, wustl_config)
    n_train = int(len(features) * wustl_config.split.train_fraction)
    half = n_train // 2
    stats = FeatureStatistics.merge(
        [
            FeatureStatistics.fit(features.iloc[:half], wustl_config),
            FeatureStatistics.fit(features.iloc[half:n_train], wustl_config),
        ]
    )
    preprocessor = Preprocessor.from_statistics(stats, wustl_config)

    X = preprocessor.transform(features)

    assert preprocessor.n_features == 29 + 8
    assert X.shape == (len(features), 37)
    assert not np.isnan(X).any()
    assert X.min() >= 0.0
    assert X.max() <= 1.0
    # Each row has exactly one Flgs column set.
    np.testing.assert_array_equal(X[:, 29:].sum(axis=1), np.ones(len(features)))


def test_real_nfton_extreme_throughput_values(nfton_path: Path, nfton_config: DatasetConfig) -> None:
    features = read_features(nfton_path, nfton_config)
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(features, nfton_config), nfton_config)

    X = preprocessor.transform(features)

    column = preprocessor.output_columns.index("DST_TO_SRC_SECOND_BYTES")
    assert features["DST_TO_SRC_SECOND_BYTES"].max() > 1e38
    assert X.shape == (len(features), len(nfton_config.numeric_features) + 5)
    assert not np.isnan(X).any()
    assert X.min() >= 0.0
    assert X.max() <= 1.0
    # One 2e38 outlier sets the maximum. The log transform keeps ordinary rates
    # spread out instead of squashing them to zero.
    assert np.unique(np.round(X[:, column], 3)).size > 50
