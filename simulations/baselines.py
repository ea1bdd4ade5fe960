"""Classical detectors from the IoMT intrusion-detection literature.

They run on the same splits, preprocessing and resampled training data as the
CNN-LSTM, one flow per sample (W = 1), so their scores are a fair reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from common.config import TaskConfig
from common.exceptions import ConfigError
from common.metrics import classification_metrics

logger = logging.getLogger(__name__)


def _factories(seed: int) -> dict[str, Callable[[], ClassifierMixin]]:
    return {
        "random_forest": lambda: RandomForestClassifier(n_estimators=200, n_jobs=-1, random_state=seed),
        "logistic_regression": lambda: LogisticRegression(max_iter=2000),
        "decision_tree": lambda: DecisionTreeClassifier(random_state=seed),
        "naive_bayes": GaussianNB,
        "knn": lambda: KNeighborsClassifier(n_neighbors=5, n_jobs=-1),
        "gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=seed),
        "mlp": lambda: MLPClassifier(
            hidden_layer_sizes=(64, 32), max_iter=200, early_stopping=True, random_state=seed
        ),
        # A kernel SVM scales quadratically with the rows; the linear one
        # finishes in seconds on tens of thousands of flows.
        "linear_svm": lambda: LinearSVC(random_state=seed),
    }


#: Every baseline the centralized command can run.
BASELINES = tuple(_factories(0))

#: Baselines run when the command line does not choose.
DEFAULT_BASELINES = ("random_forest", "logistic_regression")


def _scores(model: ClassifierMixin, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Return class scores of shape (n_samples, n_classes) whose argmax is the prediction."""
    if hasattr(model, "predict_proba"):
        proba = np.zeros((len(X), n_classes))
        proba[:, model.classes_] = model.predict_proba(X)
        return proba
    decision = np.asarray(model.decision_function(X))
    scores = np.full((len(X), n_classes), -np.inf)
    if decision.ndim == 1:
        # Binary decision values: a logistic squash keeps their order.
        positive = 1.0 / (1.0 + np.exp(-decision))
        scores[:, model.classes_[0]] = 1.0 - positive
        scores[:, model.classes_[1]] = positive
        return np.nan_to_num(scores, neginf=0.0)
    shifted = np.exp(decision - decision.max(axis=1, keepdims=True))
    scores[:, model.classes_] = shifted / shifted.sum(axis=1, keepdims=True)
    return np.nan_to_num(scores, neginf=0.0)


def run_baselines(
    names: Sequence[str],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    task: TaskConfig,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Fit each named baseline on flattened training samples and score it on the test samples.

    Parameters
    ----------
    names : sequence of str
        Names from :data:`BASELINES`.
    X_train, X_test : ndarray of shape (n_samples, 1, n_features) or (n_samples, n_features)
    y_train, y_test : ndarray of shape (n_samples,)

    Returns
    -------
    dict
        Baseline name to its metrics, with ``train_seconds`` added. A baseline
        is left out, with a warning, when the training samples hold a single
        class or scikit-learn rejects them as too few for that estimator.

    Raises
    ------
    ConfigError
        If a name is not in :data:`BASELINES`.
    """
    factories = _factories(seed)
    unknown = sorted(set(names) - set(factories))
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {sorted(factories)}")
    flat_train = X_train.reshape(len(X_train), -1)
    flat_test = X_test.reshape(len(X_test), -1)
    results: dict[str, dict[str, Any]] = {}
    single_class = len(np.unique(y_train)) < 2
    for name in names:
        if single_class:
            logger.warning("baseline: skipped %s because the training data contains a single class", name)
            continue
        model = factories[name]()
        started = time.perf_counter()
        try:
            model.fit(flat_train, y_train)
            seconds = time.perf_counter() - started
            scores = _scores(model, flat_test, task.n_classes)
        except ValueError as error:
            # scikit-learn rejects training sets that are too small for the
            # estimator, for example fewer samples than knn's 5 neighbours or
            # too few for the mlp's early-stopping validation split.
            logger.warning(
                "baseline: skipped %s because scikit-learn rejected %d training samples: %s",
                name,
                len(y_train),
                error,
            )
            continue
        metrics = classification_metrics(y_test, scores, task.classes, task.normal_class)
        metrics["train_seconds"] = seconds
        results[name] = metrics
        logger.info("baseline: %s F1 %.4f in %.1f s", name, metrics["f1"], seconds)
    return results
