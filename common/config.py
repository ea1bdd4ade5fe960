"""Typed dataset configuration, read from one TOML file per dataset.

A dataset configuration fixes everything that every hospital site must agree
on before training: which columns are features, which are identifiers that
must never reach the model, the categorical vocabularies, the ordered class
list of each task and the split, model and training settings. Supporting
another flow exporter means adding a file under ``configs/``, not code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.exceptions import ConfigError

#: Folder with the shipped dataset configurations (``configs/`` at the repository root).
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Environment variable naming the folder that contains the dataset files.
DATA_DIR_ENV = "FEDIDS_DATA_DIR"

#: Data folder used when neither ``--data-dir`` nor :data:`DATA_DIR_ENV` is set.
DEFAULT_DATA_DIR = Path("data")

MissingValuePolicy = Literal["impute", "drop"]

#: Normalisation layers the CNN-LSTM can place between pooling and the LSTM.
NORMALIZATIONS = ("none", "layer", "batch")

#: Quantities early stopping can watch on the validation data.
MONITORS = ("val_loss", "val_macro_f1")

#: Widest bit mask ``features.bitmask`` accepts. Integers up to 2**53 are
#: exact in float64, the type numeric columns are read as.
MAX_BITMASK_BITS = 32


def check_proximal_step(proximal_mu: float, learning_rate: float) -> None:
    """Raise ValueError unless ``proximal_mu * learning_rate`` is at most 1.

    The product is the share of the distance to the global weights that the
    FedProx proximal step removes after each batch: 1 returns the weights to
    the global ones, and above 1 the step overshoots them.
    """
    share = proximal_mu * learning_rate
    # 1e-6 of slack, because optimizers keep their learning rate in float32.
    if share > 1 + 1e-6:
        raise ValueError(
            f"proximal mu {proximal_mu:g} times learning rate {learning_rate:g} is {share:g}; it must be at "
            "most 1, because it is the share of the distance to the global weights removed per batch"
        )


@dataclass(frozen=True)
class TaskConfig:
    """Label column and fixed class list of one classification task.

    Parameters
    ----------
    name : str
        Task name, for example ``"binary"`` or ``"category"``.
    label_column : str
        Column holding the raw label.
    classes : tuple of str
        Ordered class names; the position of a name is its class index at
        every site, whether or not a site has seen that class.
    normal_class : str
        Name of the benign class; every other class counts as an attack.
    label_values : mapping of str to str
        Raw label value (as a stripped string, integral floats written without
        a decimal point) to class name. Empty means each raw value must be a
        class name itself.
    """

    name: str
    label_column: str
    classes: tuple[str, ...]
    normal_class: str
    label_values: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def normal_index(self) -> int:
        return self.classes.index(self.normal_class)

    def class_for_value(self, raw_value: str) -> str | None:
        """Map a raw label value to its class name, or ``None`` if unknown."""
        if self.label_values:
            return self.label_values.get(raw_value)
        return raw_value if raw_value in self.classes else None


@dataclass(frozen=True)
class SplitConfig:
    """How rows are divided into training, validation and test data.

    With ``stratified = false`` the rows are split into contiguous blocks in
    capture order; with ``stratified = true`` (data without capture order)
    they are shuffled with ``seed`` and split stratified by class.
    """

    train_fraction: float = 0.7
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    folds: int = 5
    stratified: bool = False
    seed: int = 42


@dataclass(frozen=True)
class ModelConfig:
    """Layer sizes and optimiser settings of the CNN-LSTM.

    ``normalization`` names the layer between pooling and the LSTM. It is
    ``"none"``, ``"layer"`` (per-sample layer normalisation, which keeps no
    running statistics and therefore merges across sites like any other
    weight) or ``"batch"`` (batch normalisation).

    ``per_flow`` holds ``(name, value)`` pairs that replace layer settings
    when W = 1. With one flow per sample the convolution and the LSTM run
    along the flow's features, not along time, so that network can be sized
    on its own; :meth:`for_window` applies the pairs.
    """

    conv_filters: int = 64
    kernel_size: int = 3
    pool_size: int = 2
    lstm_units: int = 64
    dense_units: int = 64
    dropout: float = 0.3
    learning_rate: float = 1e-3
    normalization: str = "none"
    per_flow: tuple[tuple[str, Any], ...] = ()

    def for_window(self, window: int) -> ModelConfig:
        """Return the settings of the network for windows of ``window`` flows."""
        if window != 1 or not self.per_flow:
            return self
        return dataclasses.replace(self, **dict(self.per_flow), per_flow=())


@dataclass(frozen=True)
class TrainingConfig:
    """Training loop settings.

    ``window_lengths`` lists the candidate window lengths W (flows per
    sample) from which the centralized command picks one on validation data.
    ``window`` is the length that federated training and detection use unless
    a command sets another. ``monitor`` is what early stopping watches,
    ``"val_loss"`` or ``"val_macro_f1"``; ``monitor_min_support`` leaves
    classes with fewer validation windows out of that macro-F1 (0 keeps
    all). ``oversample_max_ratio`` caps
    SMOTE, so a class of n training windows grows to at most
    ``ceil(ratio * n)``. The default 0 balances every class to the majority count.
    ``local_epochs`` is the epochs each site trains per federated round
    and ``proximal_mu`` the strength of the FedProx proximal term in that
    training (0 is plain FedAvg), both when the simulation command does not
    set them.
    W = 1 is the only valid choice for data without capture order.
    """

    epochs: int = 30
    batch_size: int = 256
    patience: int = 5
    monitor: str = "val_loss"
    monitor_min_support: int = 0
    window: int = 1
    window_lengths: tuple[int, ...] = (1,)
    smote_k_neighbors: int = 5
    oversample_max_ratio: float = 0.0
    local_epochs: int = 2
    proximal_mu: float = 0.0
    seed: int = 42


@dataclass(frozen=True)
class DatasetConfig:
    """Everything the pipeline needs to read and prepare one dataset.

    Parameters
    ----------
    name : str
        Dataset name; also the configuration's file name without ``.toml``.
    source : Path
        The configuration file this object was read from.
    files : tuple of str
        Data files, relative to the data folder.
    capture_order : bool
        Whether the rows are in capture order. Only then may flows be grouped
        into windows of W > 1 and split in time blocks.
    tasks : mapping of str to TaskConfig
        Classification tasks, by name.
    default_task : str
        Task used when a command does not name one.
    identifier_columns : tuple of str
        Host identifiers, counters and timestamps; never model inputs.
    numeric_features : tuple of str
        Numeric input columns, in model order.
    categorical_features : mapping of str to tuple of str
        Categorical input column to its fixed vocabulary (stripped strings).
        Values outside the vocabulary go to an unknown bucket.
    missing_values : {"impute", "drop"}
        ``"impute"`` fills missing numeric values with the federation-wide
        mean at transform time; ``"drop"`` drops rows with missing values.
    log_transform : bool
        Apply ``sign(x) * log1p(|x|)`` to numeric features before min-max
        scaling, for exporters whose counters span many orders of magnitude.
    drop_duplicates : bool
        Drop rows that repeat an earlier row in every column.
    top_k_features : int or None
        Keep only the k highest-ranked input columns; ``None`` keeps all.
    bitmask_features : mapping of str to int
        Numeric feature that holds a bit mask (for example TCP flags) to its
        number of bits. Each such column also gives one 0/1 input per bit,
        next to its scaled value, because min-max scaling of the integer
        puts flag combinations that share no bit side by side.
    """

    name: str
    source: Path
    files: tuple[str, ...]
    capture_order: bool
    tasks: Mapping[str, TaskConfig]
    default_task: str
    identifier_columns: tuple[str, ...]
    numeric_features: tuple[str, ...]
    categorical_features: Mapping[str, tuple[str, ...]]
    missing_values: MissingValuePolicy = "impute"
    log_transform: bool = False
    drop_duplicates: bool = True
    top_k_features: int | None = None
    bitmask_features: Mapping[str, int] = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def label_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(task.label_column for task in self.tasks.values()))

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Input columns as read from a file: numeric, then categorical."""
        return self.numeric_features + tuple(self.categorical_features)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns a training file must contain."""
        return self.feature_columns + self.label_columns

    def task(self, name: str | None = None) -> TaskConfig:
        """Return the task called ``name``, or the default task."""
        key = self.default_task if name is None else name
        if key not in self.tasks:
            raise ConfigError(
                f"{self.source}: dataset {self.name!r} has no task {key!r}; "
                f"choose one of {sorted(self.tasks)}"
            )
        return self.tasks[key]

    def data_paths(self, data_dir: str | os.PathLike[str]) -> list[Path]:
        """Return the dataset's files inside ``data_dir``, preferring a ``.gz`` copy if only that exists."""
        paths = []
        for relative in self.files:
            path = Path(data_dir) / relative
            gz = path.with_name(path.name + ".gz")
            if not path.exists() and gz.exists():
                path = gz
            paths.append(path)
        return paths


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``data_dir`` if given, else ``$FEDIDS_DATA_DIR``, else ``data/``."""
    if data_dir is not None:
        return Path(data_dir)
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env) if from_env else DEFAULT_DATA_DIR


def available_datasets(config_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Return the names of the dataset configurations in ``config_dir``."""
    folder = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
    return sorted(path.stem for path in folder.glob("*.toml"))


def load_dataset_config(
    name_or_path: str | os.PathLike[str],
    config_dir: str | os.PathLike[str] | None = None,
) -> DatasetConfig:
    """Read and validate a dataset configuration.

    Parameters
    ----------
    name_or_path : str or path-like
        A dataset name (looked up as ``<config_dir>/<name>.toml``) or the path
        of a TOML file.
    config_dir : str or path-like, optional
        Folder of named configurations; defaults to the repository's
        ``configs/``.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid TOML, or a key is missing, has
        the wrong type or contradicts another key. The message names the file
        and the key.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if path.is_file():
            raise ConfigError(f"{path} is not a dataset configuration: give a .toml file or a dataset name")
        folder = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
        path = folder / f"{name_or_path}.toml"
    if not path.is_file():
        known = available_datasets(config_dir)
        raise ConfigError(
            f"dataset configuration not found: {path}; known datasets: {known or 'none'}"
        )
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error
    return _parse_config(raw, path)


class _Reader:
    """Typed access to one TOML table, with errors that name the file and key."""

    def __init__(self, table: Mapping[str, Any], path: Path, prefix: str) -> None:
        self.table = table
        self.path = path
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: key {self.key(name)!r} {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                raise self.fail(name, "is missing")
            return default
        value = self.table[name]
        # TOML booleans are ints in Python, so reject them where a number is expected.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(name, f"must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(name, f"must be {_kind_name(kind)}, got {value!r}")
        return value

    def strings(self, name: str, default: Any = ..., allow_empty: bool = True) -> tuple[str, ...]:
        values = self.get(name, list, default)
        if not all(isinstance(item, str) for item in values):
            raise self.fail(name, f"must be a list of strings, got {values!r}")
        if not allow_empty and not values:
            raise self.fail(name, "must not be empty")
        duplicates = sorted({item for item in values if values.count(item) > 1})
        if duplicates:
            raise self.fail(name, f"repeats {duplicates}")
        return tuple(values)

    def table_of(self, name: str, required: bool = True) -> _Reader:
        default: Any = ... if required else {}
        return _Reader(self.get(name, dict, default), self.path, self.key(name))

    def positive_int(self, name: str, default: Any = ...) -> int:
        value = self.get(name, int, default)
        if value < 1:
            raise self.fail(name, f"must be at least 1, got {value}")
        return int(value)

    def fraction(self, name: str, default: float, low_inclusive: bool) -> float:
        value = float(self.get(name, (int, float), default))
        low_ok = value >= 0.0 if low_inclusive else value > 0.0
        if not (low_ok and value < 1.0) or math.isnan(value):
            bound = "[0, 1)" if low_inclusive else "(0, 1)"
            raise self.fail(name, f"must be in {bound}, got {value}")
        return value

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown key(s) {[self.key(name) for name in unknown]}; "
                "check the spelling"
            )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(item, item.__name__) for item in kinds)


def _parse_config(raw: Mapping[str, Any], path: Path) -> DatasetConfig:
    root = _Reader(raw, path, "")
    dataset = root.table_of("dataset")
    name = dataset.get("name", str)
    if not name.strip():
        raise dataset.fail("name", "must not be empty")
    files = dataset.strings("files", allow_empty=False)
    capture_order = dataset.get("capture_order", bool)
    identifiers = dataset.strings("identifier_columns", default=[])
    missing_values = dataset.get("missing_values", str, "impute")
    if missing_values not in ("impute", "drop"):
        raise dataset.fail("missing_values", f"must be 'impute' or 'drop', got {missing_values!r}")
    log_transform = dataset.get("log_transform", bool, False)
    drop_duplicates = dataset.get("drop_duplicates", bool, True)
    dataset.get("description", str, "")
    default_task = dataset.get("default_task", str)
    dataset.reject_unknown()

    features = root.table_of("features")
    numeric = features.strings("numeric", default=[])
    categorical_table = features.table_of("categorical", required=False)
    categorical: dict[str, tuple[str, ...]] = {}
    for column in list(categorical_table.table):
        vocabulary = categorical_table.strings(column, allow_empty=False)
        categorical[column] = tuple(value.strip() for value in vocabulary)
    top_k = features.get("top_k", int, 0)
    if top_k < 0:
        raise features.fail("top_k", f"must be 0 (all features) or positive, got {top_k}")
    bitmask = _parse_bitmask(features, numeric)
    features.reject_unknown()
    if not numeric and not categorical:
        raise features.fail("numeric", "and 'features.categorical' are both empty; list at least one feature")

    tasks = _parse_tasks(root.table_of("tasks"), path)
    if default_task not in tasks:
        raise dataset.fail("default_task", f"names no task; choose one of {sorted(tasks)}")

    label_columns = {task.label_column for task in tasks.values()}
    feature_set = set(numeric) | set(categorical)
    overlap = sorted(feature_set & set(numeric).intersection(categorical))
    if overlap:
        raise features.fail("categorical", f"repeats numeric features {overlap}")
    leaking = sorted(feature_set & set(identifiers))
    if leaking:
        raise features.fail(
            "numeric", f"lists identifier columns {leaking}; identifiers must never be model inputs"
        )
    label_inputs = sorted(feature_set & label_columns)
    if label_inputs:
        raise features.fail("numeric", f"lists label columns {label_inputs}")

    split = _parse_split(root.table_of("split", required=False))
    model = _parse_model(root.table_of("model", required=False))
    training = _parse_training(root.table_of("training", required=False))
    try:
        check_proximal_step(training.proximal_mu, model.learning_rate)
    except ValueError as error:
        raise ConfigError(
            f"{path}: keys 'training.proximal_mu' and 'model.learning_rate' are invalid: {error}"
        ) from error
    if not capture_order:
        if not split.stratified:
            raise ConfigError(
                f"{path}: key 'split.stratified' must be true when 'dataset.capture_order' is false, "
                "because time blocks need rows in capture order"
            )
        if training.window_lengths != (1,) or training.window != 1:
            raise ConfigError(
                f"{path}: keys 'training.window' and 'training.window_lengths' must be 1 and [1] when "
                f"'dataset.capture_order' is false, got {training.window} and {list(training.window_lengths)}"
            )
    root.reject_unknown()

    return DatasetConfig(
        name=name,
        source=path,
        files=files,
        capture_order=capture_order,
        tasks=tasks,
        default_task=default_task,
        identifier_columns=identifiers,
        numeric_features=numeric,
        categorical_features=categorical,
        missing_values=missing_values,
        log_transform=log_transform,
        drop_duplicates=drop_duplicates,
        top_k_features=top_k or None,
        bitmask_features=bitmask,
        split=split,
        model=model,
        training=training,
    )


def _parse_bitmask(features: _Reader, numeric: tuple[str, ...]) -> dict[str, int]:
    table = features.get("bitmask", dict, {})
    bitmask: dict[str, int] = {}
    for column, bits in table.items():
        if column not in numeric:
            raise features.fail(
                "bitmask", f"names {column!r}, which is not in 'features.numeric'; list the column there as well"
            )
        valid = isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= MAX_BITMASK_BITS
        if not valid:
            raise features.fail(
                "bitmask", f"gives {column!r} {bits!r} bits; use an integer from 1 to {MAX_BITMASK_BITS}"
            )
        bitmask[column] = bits
    return bitmask


def _parse_tasks(tasks_table: _Reader, path: Path) -> dict[str, TaskConfig]:
    if not tasks_table.table:
        raise ConfigError(f"{path}: key 'tasks' must define at least one task, for example [tasks.binary]")
    tasks: dict[str, TaskConfig] = {}
    for task_name in list(tasks_table.table):
        table = tasks_table.table_of(task_name)
        label_column = table.get("label_column", str)
        classes = table.strings("classes", allow_empty=False)
        if len(classes) < 2:
            raise table.fail("classes", f"must list at least two classes, got {list(classes)}")
        normal_class = table.get("normal_class", str)
        if normal_class not in classes:
            raise table.fail("normal_class", f"{normal_class!r} is not in classes {list(classes)}")
        label_values_raw = table.get("label_values", dict, {})
        label_values: dict[str, str] = {}
        for raw_value, class_name in label_values_raw.items():
            if class_name not in classes:
                raise table.fail(
                    "label_values",
                    f"maps {raw_value!r} to {class_name!r}, which is not in classes {list(classes)}",
                )
            label_values[str(raw_value).strip()] = class_name
        table.reject_unknown()
        tasks[task_name] = TaskConfig(
            name=task_name,
            label_column=label_column,
            classes=classes,
            normal_class=normal_class,
            label_values=label_values,
        )
    return tasks


def _parse_split(table: _Reader) -> SplitConfig:
    defaults = SplitConfig()
    train = table.fraction("train_fraction", defaults.train_fraction, low_inclusive=False)
    validation = table.fraction("validation_fraction", defaults.validation_fraction, low_inclusive=True)
    test = table.fraction("test_fraction", defaults.test_fraction, low_inclusive=False)
    if not math.isclose(train + validation + test, 1.0, abs_tol=1e-9):
        raise table.fail(
            "train_fraction",
            f"plus validation_fraction and test_fraction must be 1, got {train} + {validation} + {test}",
        )
    folds = table.get("folds", int, defaults.folds)
    if folds < 2:
        raise table.fail("folds", f"must be at least 2, got {folds}")
    split = SplitConfig(
        train_fraction=train,
        validation_fraction=validation,
        test_fraction=test,
        folds=folds,
        stratified=table.get("stratified", bool, defaults.stratified),
        seed=table.get("seed", int, defaults.seed),
    )
    table.reject_unknown()
    return split


#: Keys of ``[model]`` that ``[model.per_flow]`` may replace: the layers, not the optimiser.
PER_FLOW_KEYS: tuple[str, ...] = (
    "conv_filters",
    "kernel_size",
    "pool_size",
    "lstm_units",
    "dense_units",
    "dropout",
    "normalization",
)


def _parse_model(table: _Reader, defaults: ModelConfig | None = None) -> ModelConfig:
    per_flow_table = table.table_of("per_flow", required=False) if defaults is None else None
    defaults = defaults or ModelConfig()
    dropout = table.fraction("dropout", defaults.dropout, low_inclusive=True)
    learning_rate = float(table.get("learning_rate", (int, float), defaults.learning_rate))
    if not learning_rate > 0:
        raise table.fail("learning_rate", f"must be positive, got {learning_rate}")
    normalization = table.get("normalization", str, defaults.normalization)
    if normalization not in NORMALIZATIONS:
        raise table.fail("normalization", f"must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    model = ModelConfig(
        conv_filters=table.positive_int("conv_filters", defaults.conv_filters),
        kernel_size=table.positive_int("kernel_size", defaults.kernel_size),
        pool_size=table.positive_int("pool_size", defaults.pool_size),
        lstm_units=table.positive_int("lstm_units", defaults.lstm_units),
        dense_units=table.positive_int("dense_units", defaults.dense_units),
        dropout=dropout,
        learning_rate=learning_rate,
        normalization=normalization,
    )
    table.reject_unknown()
    if per_flow_table is not None and "per_flow" in table.table and not per_flow_table.table:
        # An empty table changes nothing, so it is most likely a header whose keys were lost.
        raise table.fail("per_flow", f"is an empty table; set at least one of {list(PER_FLOW_KEYS)} or remove it")
    if per_flow_table is not None and per_flow_table.table:
        # Parsed like [model] itself, starting from its values, so each key gets the same checks.
        not_layers = sorted(set(per_flow_table.table) - set(PER_FLOW_KEYS))
        if not_layers:
            raise ConfigError(
                f"{table.path}: key(s) {[per_flow_table.key(name) for name in not_layers]} cannot be "
                f"set per flow; choose from {list(PER_FLOW_KEYS)}"
            )
        sized = _parse_model(per_flow_table, defaults=model)
        pairs = tuple((name, getattr(sized, name)) for name in PER_FLOW_KEYS if name in per_flow_table.table)
        model = dataclasses.replace(model, per_flow=pairs)
    return model


def _parse_training(table: _Reader) -> TrainingConfig:
    defaults = TrainingConfig()
    windows = table.get("window_lengths", list, list(defaults.window_lengths))
    if not windows or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in windows):
        raise table.fail("window_lengths", f"must be a non-empty list of integers >= 1, got {windows!r}")
    max_ratio = float(table.get("oversample_max_ratio", (int, float), defaults.oversample_max_ratio))
    if not (math.isfinite(max_ratio) and (max_ratio == 0 or max_ratio >= 1)):
        raise table.fail("oversample_max_ratio", f"must be 0 (balance fully) or at least 1, got {max_ratio}")
    monitor = table.get("monitor", str, defaults.monitor)
    if monitor not in MONITORS:
        raise table.fail("monitor", f"must be one of {list(MONITORS)}, got {monitor!r}")
    min_support = table.get("monitor_min_support", int, defaults.monitor_min_support)
    proximal_mu = float(table.get("proximal_mu", (int, float), defaults.proximal_mu))
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise table.fail("proximal_mu", f"must be 0 (plain FedAvg) or positive, got {proximal_mu}")
    if min_support < 0:
        raise table.fail("monitor_min_support", f"must be 0 (all classes) or positive, got {min_support}")
    training = TrainingConfig(
        epochs=table.positive_int("epochs", defaults.epochs),
        batch_size=table.positive_int("batch_size", defaults.batch_size),
        patience=table.positive_int("patience", defaults.patience),
        monitor=monitor,
        monitor_min_support=min_support,
        window=table.positive_int("window", defaults.window),
        window_lengths=tuple(sorted(set(windows))),
        smote_k_neighbors=table.positive_int("smote_k_neighbors", defaults.smote_k_neighbors),
        oversample_max_ratio=max_ratio,
        local_epochs=table.positive_int("local_epochs", defaults.local_epochs),
        proximal_mu=proximal_mu,
        seed=table.get("seed", int, defaults.seed),
    )
    table.reject_unknown()
    return training
