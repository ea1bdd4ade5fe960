"""Tests of the mutual-information feature ranking and its federated merge."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import DatasetConfig
from common.exceptions import EmptyDataError, PreprocessingError
from common.pipeline import select_top_features
from common.preprocessing import FeatureStatistics, Preprocessor
from common.ranking import FeatureRanking, _stratified_sample, merge_rankings, rank_features


def seeded_inputs(n_rows: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return one informative column, one noise column and one independent one-hot column."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_rows)
    informative = np.clip(0.3 + 0.4 * y + rng.normal(0.0, 0.1, n_rows), 0.0, 1.0)
    noise = rng.random(n_rows)
    one_hot = rng.integers(0, 2, n_rows).astype(np.float64)
    X = np.column_stack([informative, noise, one_hot]).astype(np.float32)
    return X, y, ["informative", "noise", "proto=tcp"]


def test_rank_informative_above_noise() -> None:
    X, y, names = seeded_inputs()

    ranking = rank_features(X, y, names, seed=1)

    assert ranking.n_rows == 2000
    assert ranking.top(1) == ("informative",)
    assert ranking.scores["informative"] > 0.3
    assert ranking.scores["noise"] < 0.05
    assert ranking.scores["proto=tcp"] < 0.05
    assert all(score >= 0.0 for score in ranking.scores.values())


def test_rank_discrete_column_exact_value() -> None:
    # A one-hot column equal to a balanced binary label carries log(2) nats.
    y = np.array([0, 1] * 50)
    X = np.column_stack([y, np.zeros(100)]).astype(np.float32)

    ranking = rank_features(X, y, ["flag=S", "flag=F"])

    assert ranking.scores["flag=S"] == pytest.approx(np.log(2.0))
    assert ranking.scores["flag=F"] == pytest.approx(0.0)


def test_rank_same_seed_same_scores() -> None:
    X, y, names = seeded_inputs()

    first = rank_features(X, y, names, seed=5, max_rows=500)
    second = rank_features(X, y, names, seed=5, max_rows=500)

    assert first.scores == second.scores
    assert first.n_rows == 2000


def test_rank_subsample_keeps_rare_class() -> None:
    y = np.array([0] * 990 + [1] * 10)

    rows = _stratified_sample(y, max_rows=100, seed=0)

    assert len(rows) == 100
    assert np.sum(y[rows] == 1) == 1
    assert len(np.unique(rows)) == len(rows)


def test_rank_subsample_class_below_one_row_share() -> None:
    y = np.array([0] * 999 + [1])

    rows = _stratified_sample(y, max_rows=10, seed=0)

    assert np.sum(y[rows] == 1) == 1
    assert np.sum(y[rows] == 0) >= 9


def test_rank_single_class_gives_zeros(caplog: pytest.LogCaptureFixture) -> None:
    X, _, names = seeded_inputs(n_rows=50)

    with caplog.at_level(logging.WARNING, logger="common.ranking"):
        ranking = rank_features(X, np.zeros(50, dtype=np.int64), names)

    assert ranking.scores == {"informative": 0.0, "noise": 0.0, "proto=tcp": 0.0}
    assert ranking.n_rows == 50
    assert "all 50 rows have the same class" in caplog.text


def test_rank_one_row_per_class_gives_zeros(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="common.ranking"):
        ranking = rank_features(np.array([[0.1], [0.9]]), np.array([0, 1]), ["a"])

    assert ranking.scores == {"a": 0.0}
    assert "no class has two or more" in caplog.text


def test_rank_empty_input_error() -> None:
    with pytest.raises(EmptyDataError, match=r"no data to rank \(X has shape \(0, 3\)\)"):
        rank_features(np.empty((0, 3)), np.empty(0), ["a", "b", "c"])


def test_rank_input_errors() -> None:
    X, y, names = seeded_inputs(n_rows=20)
    with pytest.raises(PreprocessingError, match="2 feature names for 3 columns"):
        rank_features(X, y, names[:2])
    with pytest.raises(PreprocessingError, match="y has 19 labels for 20 rows"):
        rank_features(X, y[:19], names)
    X[0, 0] = np.nan
    with pytest.raises(PreprocessingError, match="contains NaN or infinite values"):
        rank_features(X, y, names)


def test_ranked_ties_by_name() -> None:
    ranking = FeatureRanking(scores={"b": 0.5, "c": 0.1, "a": 0.5}, n_rows=10)

    assert ranking.ranked() == [("a", 0.5), ("b", 0.5), ("c", 0.1)]
    assert ranking.top(2) == ("a", "b")
    assert ranking.top(10) == ("a", "b", "c")


def test_top_k_below_one_error() -> None:
    with pytest.raises(PreprocessingError, match="k must be an integer >= 1, got 0"):
        FeatureRanking(scores={"a": 1.0}, n_rows=1).top(0)


def test_merge_weighted_by_rows() -> None:
    small = FeatureRanking(scores={"a": 0.2, "b": 0.4}, n_rows=100)
    large = FeatureRanking(scores={"b": 0.1, "a": 0.8}, n_rows=300)
    empty = FeatureRanking(scores={}, n_rows=0)

    merged = merge_rankings([small, empty, large])

    # a: (0.2 * 100 + 0.8 * 300) / 400 = 0.65; b: (0.4 * 100 + 0.1 * 300) / 400 = 0.175.
    assert merged.n_rows == 400
    assert list(merged.scores) == ["a", "b"]
    assert merged.scores["a"] == pytest.approx(0.65)
    assert merged.scores["b"] == pytest.approx(0.175)


def test_merge_feature_mismatch_error() -> None:
    first = FeatureRanking(scores={"a": 0.2, "b": 0.4}, n_rows=100)
    second = FeatureRanking(scores={"a": 0.2, "c": 0.4}, n_rows=100)

    with pytest.raises(PreprocessingError, match=r"only in ranking 0: \['b'\]; only in ranking 1: \['c'\]"):
        merge_rankings([first, second])


def test_merge_without_rows_error() -> None:
    with pytest.raises(PreprocessingError, match="none of the 0 site ranking"):
        merge_rankings([])
    with pytest.raises(PreprocessingError, match="none of the 1 site ranking"):
        merge_rankings([FeatureRanking(scores={"a": 0.0}, n_rows=0)])


def test_ranking_dict_round_trip() -> None:
    ranking = FeatureRanking(scores={"a": 0.25, "proto=tcp": 0.0}, n_rows=7)

    assert FeatureRanking.from_dict(ranking.to_dict()) == ranking


def test_ranking_from_dict_errors() -> None:
    data = FeatureRanking(scores={"a": 0.25}, n_rows=7).to_dict()

    with pytest.raises(PreprocessingError, match="format_version is 3"):
        FeatureRanking.from_dict({**data, "format_version": 3})
    with pytest.raises(PreprocessingError, match="key 'n_rows' is missing"):
        FeatureRanking.from_dict({"format_version": 1, "scores": {}})
    with pytest.raises(PreprocessingError, match="key 'scores' must map column names to finite numbers"):
        FeatureRanking.from_dict({**data, "scores": {"a": None}})
    with pytest.raises(PreprocessingError, match="key 'n_rows' must be an integer >= 0, got -1"):
        FeatureRanking.from_dict({**data, "n_rows": -1})


def test_real_wustl_ranking_finds_signal(wustl_path: Path, wustl_config: DatasetConfig) -> None:
    raw = pd.read_csv(wustl_path, low_memory=False)
    features = pd.DataFrame(
        {
            column: pd.to_numeric(raw[column], errors="coerce").astype(np.float64)
            for column in wustl_config.numeric_features
        }
    )
    features["Flgs"] = raw["Flgs"].fillna("").astype(str).str.strip()
    y = raw["Label"].to_numpy(dtype=np.int64)
    n_train = int(len(features) * wustl_config.split.train_fraction)
    train = features.iloc[:n_train]
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(train, wustl_config), wustl_config)
    X = preprocessor.transform(train)

    ranking = rank_features(X, y[:n_train], preprocessor.feature_names, max_rows=5000)

    assert set(ranking.scores) == set(preprocessor.feature_names)
    assert ranking.ranked()[0][1] > 0.05
    assert all(np.isfinite(score) and score >= 0.0 for score in ranking.scores.values())


def test_select_top_k_above_columns_warns(
    wustl_path: Path, wustl_config: DatasetConfig, caplog: pytest.LogCaptureFixture
) -> None:
    raw = pd.read_csv(wustl_path, low_memory=False, nrows=2000)
    features = pd.DataFrame(
        {column: pd.to_numeric(raw[column], errors="coerce") for column in wustl_config.numeric_features}
    )
    features["Flgs"] = raw["Flgs"].fillna("").astype(str).str.strip()
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(features, wustl_config), wustl_config)
    X = preprocessor.transform(features)
    y = raw["Label"].to_numpy(dtype=np.int64)

    with caplog.at_level(logging.WARNING, logger="common.pipeline"):
        selected, _ = select_top_features(preprocessor, X, y, preprocessor.n_features + 5, seed=0)

    n_columns = preprocessor.n_features
    assert selected.feature_names == preprocessor.feature_names
    assert f"top_k {n_columns + 5} is not below the {n_columns} model columns" in caplog.text
