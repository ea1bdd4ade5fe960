"""Settings of one federated training run, read from Flower's run config.

``flwr run`` fills ``context.run_config`` from ``[tool.flwr.app.config]`` in
pyproject.toml plus ``--run-config`` overrides. ``run_simulation`` passes an
empty run config, so a simulation driver hands its settings to
:func:`server.app.build_server_app` as overrides instead. Both paths end in
:meth:`FederationSettings.from_run_config`, which applies the defaults below,
checks every value and names the key of any invalid one.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecordValues

from common.config import DatasetConfig, check_proximal_step, load_dataset_config
from common.exceptions import ConfigError
from common.partition import PARTITION_MODES

#: Run-config keys and their defaults; ``[tool.flwr.app.config]`` repeats them.
DEFAULTS: dict[str, int | float | str] = {
    "dataset": "wustl-ehms-2020",
    "task": "",
    "num-rounds": 3,
    "window": 0,
    "local-epochs": 1,
    "batch-size": 256,
    "learning-rate": 0.001,
    "proximal-mu": 0.0,
    "min-sites": 2,
    "round-timeout": 600.0,
    "node-wait-timeout": 120.0,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "checkpoint-dir": "runs/federated",
    "run-name": "",
    "data-dir": "",
    "site-dir": "",
    "partition": "contiguous",
    "alpha": 0.5,
    "seed": 42,
    "registry-dir": "runs/registry",
    "signing-key": "",
    "registry-keep": 5,
}

# A run name becomes one folder name under checkpoint-dir.
_RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FederationSettings:
    """Validated settings of one federated run.

    Attributes mirror the run-config keys, with dashes turned into
    underscores. ``signing-key`` is the path of the coordinator's private
    key; when it is empty, no bundle is published. ``task`` is the resolved task name and ``run_name`` is never
    empty: an empty run-config value becomes the start time
    (``YYYYmmdd-HHMMSS``). ``data_dir`` and ``site_dir`` stay as given,
    because each site resolves them on its own machine.
    """

    dataset: str
    task: str
    num_rounds: int
    window: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float
    min_sites: int
    round_timeout: float
    node_wait_timeout: float
    fraction_train: float
    fraction_evaluate: float
    checkpoint_dir: str
    run_name: str
    data_dir: str
    site_dir: str
    partition: str
    alpha: float
    seed: int
    registry_dir: str
    signing_key: str
    registry_keep: int

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> FederationSettings:
        """Merge defaults, the run config and overrides, then validate the result.

        Parameters
        ----------
        run_config : mapping of str to value
            ``context.run_config`` of the ServerApp; keys as in :data:`DEFAULTS`.
        overrides : mapping of str to value, optional
            Values that win over ``run_config``, for example from a simulation driver.

        Raises
        ------
        ConfigError
            If a key is unknown, a value has the wrong type or range, the
            dataset or task does not exist, or ``window`` > 1 is requested for
            a dataset without capture order. The message names the key.
        """
        values: dict[str, Any] = dict(DEFAULTS)
        for source_name, source in (("run config", run_config), ("overrides", overrides or {})):
            unknown = sorted(str(key) for key in source if key not in DEFAULTS)
            if unknown:
                raise ConfigError(
                    f"federation settings: unknown key(s) {unknown} in the {source_name}; "
                    f"known keys are {sorted(DEFAULTS)}"
                )
            values.update(source)

        dataset = _text(values, "dataset", allow_empty=False)
        dataset_config = _dataset_config(dataset)
        task_name = _text(values, "task")
        try:
            task = dataset_config.task(task_name or None).name
        except ConfigError as error:
            raise ConfigError(f"federation settings: key 'task' is invalid: {error}") from error
        # 0 selects the dataset configuration's training.window.
        window = _integer(values, "window", minimum=0) or dataset_config.training.window
        if window > 1 and not dataset_config.capture_order:
            raise ConfigError(
                f"federation settings: key 'window' must be 1 for dataset {dataset!r}, whose rows are "
                f"not in capture order, got {window}"
            )
        partition = _text(values, "partition", allow_empty=False)
        if partition not in PARTITION_MODES:
            raise ConfigError(
                f"federation settings: key 'partition' must be one of {list(PARTITION_MODES)}, got {partition!r}"
            )
        learning_rate = _number(values, "learning-rate", low=0.0, low_inclusive=False)
        proximal_mu = _number(values, "proximal-mu", low=0.0, low_inclusive=True)
        try:
            check_proximal_step(proximal_mu, learning_rate)
        except ValueError as error:
            raise ConfigError(
                f"federation settings: keys 'proximal-mu' and 'learning-rate' are invalid: {error}"
            ) from error
        run_name = _text(values, "run-name") or time.strftime("%Y%m%d-%H%M%S")
        if not _RUN_NAME_PATTERN.match(run_name):
            raise ConfigError(
                f"federation settings: key 'run-name' must be a plain folder name of letters, digits, "
                f"'.', '_' and '-', got {run_name!r}"
            )
        return cls(
            dataset=dataset,
            task=task,
            num_rounds=_integer(values, "num-rounds", minimum=1),
            window=window,
            local_epochs=_integer(values, "local-epochs", minimum=1),
            batch_size=_integer(values, "batch-size", minimum=1),
            learning_rate=learning_rate,
            proximal_mu=proximal_mu,
            min_sites=_integer(values, "min-sites", minimum=1),
            round_timeout=_number(values, "round-timeout", low=0.0, low_inclusive=False),
            node_wait_timeout=_number(values, "node-wait-timeout", low=0.0, low_inclusive=False),
            fraction_train=_number(values, "fraction-train", low=0.0, low_inclusive=False, high=1.0),
            fraction_evaluate=_number(values, "fraction-evaluate", low=0.0, low_inclusive=False, high=1.0),
            checkpoint_dir=_text(values, "checkpoint-dir", allow_empty=False),
            run_name=run_name,
            data_dir=_text(values, "data-dir"),
            site_dir=_text(values, "site-dir"),
            partition=partition,
            alpha=_number(values, "alpha", low=0.0, low_inclusive=False),
            seed=_integer(values, "seed", minimum=0),
            registry_dir=_text(values, "registry-dir", allow_empty=False),
            signing_key=_text(values, "signing-key"),
            registry_keep=_integer(values, "registry-keep", minimum=1),
        )

    def dataset_config(self) -> DatasetConfig:
        """Load the dataset configuration named by :attr:`dataset`."""
        return _dataset_config(self.dataset)

    def message_config(self, server_round: int) -> dict[str, ConfigRecordValues]:
        """Return the values every message to a site carries in its ConfigRecord ``"config"``.

        The train and evaluate messages add ``"preprocessing"`` on top.
        """
        return {
            "dataset": self.dataset,
            "task": self.task,
            "window": self.window,
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "learning-rate": self.learning_rate,
            "proximal-mu": self.proximal_mu,
            "data-dir": self.data_dir,
            "site-dir": self.site_dir,
            "partition": self.partition,
            "alpha": self.alpha,
            "seed": self.seed,
            "server-round": server_round,
        }

    def to_run_config(self) -> dict[str, int | float | str]:
        """Return the settings under their run-config keys, for run.json."""
        return {key: getattr(self, key.replace("-", "_")) for key in DEFAULTS}


def _dataset_config(name: str) -> DatasetConfig:
    try:
        return load_dataset_config(name)
    except ConfigError as error:
        raise ConfigError(f"federation settings: key 'dataset' is invalid: {error}") from error


def _text(values: Mapping[str, Any], key: str, allow_empty: bool = True) -> str:
    value = values[key]
    if not isinstance(value, str):
        raise ConfigError(f"federation settings: key {key!r} must be a string, got {value!r}")
    if not allow_empty and not value.strip():
        raise ConfigError(f"federation settings: key {key!r} must not be empty")
    return value.strip()


def _integer(values: Mapping[str, Any], key: str, minimum: int) -> int:
    value = values[key]
    # bool is a subclass of int, and "true" is never a meaningful count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"federation settings: key {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"federation settings: key {key!r} must be at least {minimum}, got {value}")
    return int(value)


def _number(
    values: Mapping[str, Any],
    key: str,
    *,
    low: float,
    low_inclusive: bool,
    high: float | None = None,
) -> float:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"federation settings: key {key!r} must be a number, got {value!r}")
    number = float(value)
    above_low = number >= low if low_inclusive else number > low
    below_high = high is None or number <= high
    if not (math.isfinite(number) and above_low and below_high):
        low_bracket = "[" if low_inclusive else "("
        high_text = f"{high}]" if high is not None else "inf)"
        raise ConfigError(
            f"federation settings: key {key!r} must be in {low_bracket}{low}, {high_text}, got {value!r}"
        )
    return number
