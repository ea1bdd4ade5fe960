"""Tests for common.config: reading and validating dataset configurations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.config import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    ModelConfig,
    available_datasets,
    load_dataset_config,
    resolve_data_dir,
)
from common.exceptions import ConfigError

VALID = """\
[dataset]
name = "toy"
files = ["toy/flows.csv"]
capture_order = true
default_task = "binary"
identifier_columns = ["SrcAddr", "Sport"]
missing_values = "drop"

[features]
numeric = ["Bytes", "Dur"]

[features.categorical]
Flgs = [" e ", "M"]

[tasks.binary]
label_column = "Label"
classes = ["normal", "attack"]
normal_class = "normal"
label_values = { "0" = "normal", " 1 " = "attack" }

[tasks.category]
label_column = "Attack"
classes = ["normal", "Spoofing"]
normal_class = "normal"

[split]
train_fraction = 0.6
validation_fraction = 0.2
test_fraction = 0.2

[training]
window_lengths = [8, 1, 4, 4]
"""


def write_config(folder: Path, text: str, name: str = "toy.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    """Return VALID with one exact snippet replaced."""
    assert old in VALID, f"snippet not in VALID: {old!r}"
    return VALID.replace(old, new, 1)


def expect_error(tmp_path: Path, text: str, pattern: str) -> ConfigError:
    """Load ``text`` and assert a ConfigError naming the file and matching ``pattern``."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as error:
        load_dataset_config(path)
    assert str(path) in str(error.value)
    return error.value


# --- valid configurations ----------------------------------------------------


def test_config_shipped_wustl_loads() -> None:
    config = load_dataset_config("wustl-ehms-2020")
    assert config.name == "wustl-ehms-2020"
    assert config.capture_order is True
    assert config.split.stratified is False
    assert config.training.window_lengths == (1, 4, 8, 16)
    assert len(config.numeric_features) == 29
    assert config.feature_columns[-1] == "Flgs"
    assert "SrcMac" in config.identifier_columns
    assert not set(config.identifier_columns) & set(config.feature_columns)
    assert config.task().name == "binary"
    assert config.task("category").classes == ("normal", "Spoofing", "Data Alteration")
    assert config.task("binary").class_for_value("1") == "attack"


def test_config_shipped_nfton_loads() -> None:
    config = load_dataset_config("nf-ton-iot-v2")
    assert config.capture_order is False
    assert config.split.stratified is True
    assert config.training.window_lengths == (1,)
    assert config.log_transform is True
    assert len(config.numeric_features) == 37
    assert config.categorical_features == {"PROTOCOL": ("1", "2", "6", "17")}
    assert config.task().name == "category"
    assert config.task().n_classes == 10
    assert config.task().normal_index == 0
    assert config.required_columns[-2:] == ("Label", "Attack")


def test_config_shipped_names_listed() -> None:
    assert {"wustl-ehms-2020", "nf-ton-iot-v2"} <= set(available_datasets())


def test_config_valid_file_parsed(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID))
    assert config.files == ("toy/flows.csv",)
    assert config.missing_values == "drop"
    assert config.categorical_features == {"Flgs": ("e", "M")}
    assert config.tasks["binary"].label_values == {"0": "normal", "1": "attack"}
    assert config.tasks["category"].class_for_value("Spoofing") == "Spoofing"
    assert config.tasks["category"].class_for_value("spoofing") is None
    assert config.label_columns == ("Label", "Attack")
    assert config.training.window_lengths == (1, 4, 8)
    assert config.split.train_fraction == 0.6
    assert config.model == ModelConfig()
    assert config.top_k_features is None
    assert config.drop_duplicates is True
    assert config.training.monitor == "val_loss"


def test_config_bitmask_read(tmp_path: Path) -> None:
    text = edited('numeric = ["Bytes", "Dur"]\n', 'numeric = ["Bytes", "Dur"]\nbitmask = { Dur = 4, Bytes = 8 }\n')

    config = load_dataset_config(write_config(tmp_path, text))

    assert config.bitmask_features == {"Dur": 4, "Bytes": 8}
    assert list(config.bitmask_features) == ["Dur", "Bytes"]
    # Bit-mask columns are read as numeric features, so the file needs no new column.
    assert config.feature_columns == ("Bytes", "Dur", "Flgs")


def test_config_bitmask_default_empty(tmp_path: Path) -> None:
    assert load_dataset_config(write_config(tmp_path, VALID)).bitmask_features == {}


def test_config_normalization_and_monitor_read(tmp_path: Path) -> None:
    text = edited("[training]\n", '[model]\nnormalization = "layer"\n\n[training]\nmonitor = "val_macro_f1"\n')

    config = load_dataset_config(write_config(tmp_path, text))

    assert config.model.normalization == "layer"
    assert config.training.monitor == "val_macro_f1"
    assert config.training.oversample_max_ratio == 0.0
    assert config.training.local_epochs == 2
    assert config.training.monitor_min_support == 0
    assert config.training.proximal_mu == 0.0


def test_config_per_flow_sizes_at_w1(tmp_path: Path) -> None:
    text = edited(
        "[training]\n",
        "[model]\nlstm_units = 48\npool_size = 2\n\n[model.per_flow]\npool_size = 4\nlstm_units = 16\n\n[training]\n",
    )

    model = load_dataset_config(write_config(tmp_path, text)).model

    assert model.per_flow == (("pool_size", 4), ("lstm_units", 16))
    per_flow = model.for_window(1)
    assert (per_flow.pool_size, per_flow.lstm_units, per_flow.per_flow) == (4, 16, ())
    # Keys the table leaves out keep the [model] values, and longer windows keep all of them.
    assert per_flow.conv_filters == model.conv_filters
    assert model.for_window(8) is model


def test_config_per_flow_absent(tmp_path: Path) -> None:
    model = load_dataset_config(write_config(tmp_path, VALID)).model

    assert model.per_flow == ()
    assert model.for_window(1) is model


def test_config_name_looked_up_in_folder(tmp_path: Path) -> None:
    write_config(tmp_path, VALID, name="toy.toml")
    config = load_dataset_config("toy", config_dir=tmp_path)
    assert config.source == tmp_path / "toy.toml"
    assert available_datasets(tmp_path) == ["toy"]


# --- file-level errors -------------------------------------------------------


def test_config_missing_file_lists_known(tmp_path: Path) -> None:
    write_config(tmp_path, VALID, name="toy.toml")
    with pytest.raises(ConfigError, match=r"not found: .*absent\.toml; known datasets: \['toy'\]"):
        load_dataset_config("absent", config_dir=tmp_path)


def test_config_missing_shipped_name_lists_shipped() -> None:
    with pytest.raises(ConfigError, match=r"known datasets: .*'wustl-ehms-2020'"):
        load_dataset_config("no-such-dataset")


def test_config_other_file_rejected(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("{}", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"report\.json is not a dataset configuration: give a \.toml file"):
        load_dataset_config(report)


def test_config_invalid_toml_rejected(tmp_path: Path) -> None:
    expect_error(tmp_path, VALID + "\nbroken = [1,\n", "invalid TOML")


def test_config_non_utf8_rejected(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.replace('"toy"', '"caf\xe9"', 1).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: invalid TOML"):
        load_dataset_config(path)


# --- missing keys, wrong types, unknown keys ---------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('files = ["toy/flows.csv"]\n', "", "dataset.files"),
        ("capture_order = true\n", "", "dataset.capture_order"),
        ('default_task = "binary"\n', "", "dataset.default_task"),
        ('label_column = "Attack"\n', "", "tasks.category.label_column"),
        ('normal_class = "normal"\nlabel_values', "label_values", "tasks.binary.normal_class"),
    ],
)
def test_config_missing_key_named(tmp_path: Path, old: str, new: str, key: str) -> None:
    expect_error(tmp_path, edited(old, new), rf"key '{re.escape(key)}' is missing")


def test_config_missing_tasks_table(tmp_path: Path) -> None:
    before_tasks, _ = VALID.split("[tasks.binary]")
    _, after_tasks = VALID.split("[split]")
    expect_error(tmp_path, before_tasks + "[split]" + after_tasks, r"key 'tasks' is missing")


def test_config_empty_tasks_table(tmp_path: Path) -> None:
    text = VALID.split("[tasks.binary]")[0] + "[tasks]\n"
    expect_error(tmp_path, text, r"key 'tasks' must define at least one task")


WRONG_VALUES = [
    ("capture_order = true", 'capture_order = "yes"', r"'dataset.capture_order' must be true or false"),
    ('files = ["toy/flows.csv"]', 'files = "toy/flows.csv"', r"'dataset.files' must be a list"),
    ('numeric = ["Bytes", "Dur"]', 'numeric = ["Bytes", 3]', r"'features.numeric' must be a list of strings"),
    ("test_fraction = 0.2", "test_fraction = true", r"'split.test_fraction' must be an integer or a number"),
    ("window_lengths = [8, 1, 4, 4]", "window_lengths = [1, 0]", r"'training.window_lengths' must be"),
    ("[training]\n", "[training]\nepochs = 2.5\n", r"'training.epochs' must be an integer, got 2.5"),
    ("[training]\n", "[training]\nepochs = true\n", r"'training.epochs' must be an integer, got True"),
    ("[training]\n", "[training]\nepochs = 0\n", r"'training.epochs' must be at least 1"),
    ('missing_values = "drop"', 'missing_values = "zero"', r"'dataset.missing_values' must be 'impute'"),
    ('name = "toy"', 'name = " "', r"'dataset.name' must not be empty"),
    ('classes = ["normal", "Spoofing"]', 'classes = ["normal"]', r"'tasks.category.classes' must list"),
    ('numeric = ["Bytes", "Dur"]', 'numeric = ["Bytes", "Bytes"]', r"'features.numeric' repeats \['Bytes'\]"),
    ("[training]\n", '[model]\nnormalization = "group"\n\n[training]\n', r"'model.normalization' must be one of"),
    ("[training]\n", '[training]\nmonitor = "val_f1"\n', r"'training.monitor' must be one of"),
    (
        "[training]\n",
        "[model.per_flow]\nlstm_units = 0\n\n[training]\n",
        r"'model.per_flow.lstm_units' must be at least 1",
    ),
    (
        "[training]\n",
        "[model.per_flow]\nlearning_rate = 0.1\n\n[training]\n",
        r"'model.per_flow.learning_rate'\] cannot be set per flow",
    ),
    (
        "[training]\n",
        '[model.per_flow]\nnormalization = "group"\n\n[training]\n',
        r"'model.per_flow.normalization' must",
    ),
    ("[training]\n", "[model.per_flow]\n\n[training]\n", r"'model.per_flow' is an empty table; set at least one"),
    ("[training]\n", "[training]\noversample_max_ratio = 0.5\n", r"'training.oversample_max_ratio' must be 0"),
    ("[training]\n", "[training]\nlocal_epochs = 0\n", r"'training.local_epochs' must be at least 1"),
    ("[training]\n", "[training]\nproximal_mu = -0.5\n", r"'training.proximal_mu' must be 0 \(plain FedAvg\)"),
    ("[training]\n", "[training]\nproximal_mu = nan\n", r"'training.proximal_mu' must be 0 \(plain FedAvg\)"),
    (
        "[training]\n",
        "[training]\nproximal_mu = 2000\n",
        r"keys 'training.proximal_mu' and 'model.learning_rate' are invalid: "
        r"proximal mu 2000 times learning rate 0.001 is 2; it must be at most 1",
    ),
    ("[training]\n", "[training]\nmonitor_min_support = -1\n", r"'training.monitor_min_support' must be 0"),
    ("[training]\n", "[training]\nmonitor_min_support = 2.5\n", r"'training.monitor_min_support' must be an integer"),
    (
        'numeric = ["Bytes", "Dur"]\n',
        'numeric = ["Bytes", "Dur"]\nbitmask = { Flags = 8 }\n',
        r"'features.bitmask' names 'Flags', which is not in 'features.numeric'",
    ),
    (
        'numeric = ["Bytes", "Dur"]\n',
        'numeric = ["Bytes", "Dur"]\nbitmask = { Bytes = 0 }\n',
        r"'features.bitmask' gives 'Bytes' 0 bits; use an integer from 1 to 32",
    ),
    (
        'numeric = ["Bytes", "Dur"]\n',
        'numeric = ["Bytes", "Dur"]\nbitmask = { Bytes = 33 }\n',
        r"'features.bitmask' gives 'Bytes' 33 bits",
    ),
    (
        'numeric = ["Bytes", "Dur"]\n',
        'numeric = ["Bytes", "Dur"]\nbitmask = { Bytes = 8.0 }\n',
        r"'features.bitmask' gives 'Bytes' 8.0 bits",
    ),
    (
        'numeric = ["Bytes", "Dur"]\n',
        'numeric = ["Bytes", "Dur"]\nbitmask = { Bytes = true }\n',
        r"'features.bitmask' gives 'Bytes' True bits",
    ),
    (
        'numeric = ["Bytes", "Dur"]\n',
        'numeric = ["Bytes", "Dur"]\nbitmask = ["Bytes"]\n',
        r"'features.bitmask' must be a table",
    ),
]


@pytest.mark.parametrize(("old", "new", "pattern"), WRONG_VALUES)
def test_config_wrong_value_rejected(tmp_path: Path, old: str, new: str, pattern: str) -> None:
    expect_error(tmp_path, edited(old, new), pattern)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('name = "toy"\n', 'name = "toy"\ncolour = "blue"\n', "dataset.colour"),
        ("[split]\n", "[split]\nshuffle = true\n", "split.shuffle"),
        ('label_column = "Attack"\n', 'label_column = "Attack"\nlabels = 2\n', "tasks.category.labels"),
        ("[training]\n", "[extra]\nx = 1\n\n[training]\n", "extra"),
    ],
)
def test_config_unknown_key_rejected(tmp_path: Path, old: str, new: str, key: str) -> None:
    expect_error(tmp_path, edited(old, new), rf"unknown key\(s\) \['{re.escape(key)}'\]; check the spelling")


# --- keys that contradict each other -----------------------------------------


def test_config_fractions_must_sum_to_one(tmp_path: Path) -> None:
    text = edited("test_fraction = 0.2", "test_fraction = 0.3")
    pattern = r"'split.train_fraction' plus validation_fraction and test_fraction must be 1"
    expect_error(tmp_path, text, pattern)


def test_config_fraction_out_of_range(tmp_path: Path) -> None:
    text = edited("train_fraction = 0.6", "train_fraction = 1.0")
    expect_error(tmp_path, text, r"'split.train_fraction' must be in \(0, 1\), got 1.0")


def test_config_normal_class_not_in_classes(tmp_path: Path) -> None:
    text = edited('normal_class = "normal"\nlabel_values', 'normal_class = "benign"\nlabel_values')
    pattern = r"'tasks.binary.normal_class' 'benign' is not in classes \['normal', 'attack'\]"
    expect_error(tmp_path, text, pattern)


def test_config_label_value_to_unknown_class(tmp_path: Path) -> None:
    text = edited('" 1 " = "attack"', '" 1 " = "malicious"')
    pattern = r"'tasks.binary.label_values' maps ' 1 ' to 'malicious', which is not in classes"
    expect_error(tmp_path, text, pattern)


def test_config_identifier_as_numeric_feature(tmp_path: Path) -> None:
    text = edited('numeric = ["Bytes", "Dur"]', 'numeric = ["Bytes", "Dur", "Sport"]')
    pattern = r"lists identifier columns \['Sport'\]; identifiers must never be model inputs"
    expect_error(tmp_path, text, pattern)


def test_config_identifier_as_categorical_feature(tmp_path: Path) -> None:
    text = edited('Flgs = [" e ", "M"]', 'Flgs = [" e ", "M"]\nSrcAddr = ["10.0.0.1"]')
    expect_error(tmp_path, text, r"lists identifier columns \['SrcAddr'\]")


def test_config_label_as_feature(tmp_path: Path) -> None:
    text = edited('numeric = ["Bytes", "Dur"]', 'numeric = ["Bytes", "Dur", "Label"]')
    expect_error(tmp_path, text, r"lists label columns \['Label'\]")


def test_config_feature_both_numeric_and_categorical(tmp_path: Path) -> None:
    text = edited('Flgs = [" e ", "M"]', 'Flgs = [" e ", "M"]\nDur = ["0"]')
    expect_error(tmp_path, text, r"'features.categorical' repeats numeric features \['Dur'\]")


def test_config_no_features(tmp_path: Path) -> None:
    text = edited('numeric = ["Bytes", "Dur"]\n\n[features.categorical]\nFlgs = [" e ", "M"]\n', "")
    expect_error(tmp_path, text, r"'features.numeric' and 'features.categorical' are both empty")


def test_config_windows_need_capture_order(tmp_path: Path) -> None:
    text = edited("capture_order = true", "capture_order = false")
    text = text.replace("test_fraction = 0.2\n", "test_fraction = 0.2\nstratified = true\n")
    expect_error(
        tmp_path, text,
        r"'training.window' and 'training.window_lengths' must be 1 and \[1\] when "
        r"'dataset.capture_order' is false, got 1 and \[1, 4, 8\]",
    )


def test_config_unordered_data_needs_stratified_split(tmp_path: Path) -> None:
    text = edited("capture_order = true", "capture_order = false")
    text = text.replace("window_lengths = [8, 1, 4, 4]", "window_lengths = [1]")
    expect_error(tmp_path, text, r"'split.stratified' must be true when 'dataset.capture_order' is false")


def test_config_unordered_data_with_single_window_loads(tmp_path: Path) -> None:
    text = edited("capture_order = true", "capture_order = false")
    text = text.replace("window_lengths = [8, 1, 4, 4]", "window_lengths = [1]")
    text = text.replace("test_fraction = 0.2\n", "test_fraction = 0.2\nstratified = true\n")
    config = load_dataset_config(write_config(tmp_path, text))
    assert config.capture_order is False
    assert config.training.window_lengths == (1,)


def test_config_default_task_names_no_task(tmp_path: Path) -> None:
    text = edited('default_task = "binary"', 'default_task = "multiclass"')
    expect_error(
        tmp_path, text,
        r"'dataset.default_task' names no task; choose one of \['binary', 'category'\]",
    )


def test_config_task_lookup_unknown_name(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID))
    with pytest.raises(ConfigError, match=r"dataset 'toy' has no task 'multiclass'; choose one of"):
        config.task("multiclass")


# --- data folder --------------------------------------------------------------


def test_data_paths_prefer_existing_gzip(tmp_path: Path) -> None:
    config = load_dataset_config(write_config(tmp_path, VALID))
    data_dir = tmp_path / "data"
    assert config.data_paths(data_dir) == [data_dir / "toy" / "flows.csv"]
    (data_dir / "toy").mkdir(parents=True)
    (data_dir / "toy" / "flows.csv.gz").write_bytes(b"")
    assert config.data_paths(data_dir) == [data_dir / "toy" / "flows.csv.gz"]
    (data_dir / "toy" / "flows.csv").write_text("")
    assert config.data_paths(data_dir) == [data_dir / "toy" / "flows.csv"]


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir() == DEFAULT_DATA_DIR
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
