"""Simulate a federation of hospitals on one machine and compare it with centralized and local-only training.

Example::

    python simulations/simulate.py --dataset wustl-ehms-2020 --sites 5 \\
        --partition contiguous --rounds 10 --out runs/sim

The command holds out the last block of the capture as the common test set,
divides the rest among the hospitals, writes each hospital's share to its own
CSV file, and runs the project's ServerApp and ClientApp on Flower's
simulation engine. It then scores the final global model, a centralized model
trained on the pooled training data and one local-only model per hospital on
the same held-out rows, and writes ``report.json``, ``history.jsonl`` and
``report.png`` into ``--out``.

Flower's simulation engine runs on Ray, whose services listen on every
network interface. Where the system allows it (root, or unprivileged user
namespaces), the command therefore re-runs itself in a private network
namespace that has only a loopback interface.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Set inside the private network namespace so the command does not re-run itself again.
NETNS_ENV = "FEDIDS_IN_NETNS"

logger = logging.getLogger("simulations.simulate")


def _namespace_prefix() -> list[str] | None:
    """Return the command prefix that runs a program in a new loopback-only network namespace, if allowed."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for flags in (["--net"], ["--net", "--map-root-user"]):
        probe = subprocess.run(
            ["unshare", *flags, "sh", "-c", "ip link set lo up"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return None


def reexec_in_network_namespace(argv: Sequence[str]) -> None:
    """Replace this process with itself inside a private network namespace, when possible.

    Returns only when isolation is unavailable or already in place.
    """
    if os.environ.get(NETNS_ENV) == "1":
        return
    prefix = _namespace_prefix()
    if prefix is None:
        logging.getLogger("simulations.simulate").warning(
            "isolation: no private network namespace is available (needs root or user namespaces); "
            "Ray's services will listen on all network interfaces during the simulation"
        )
        return
    os.environ[NETNS_ENV] = "1"
    command = [*prefix, sys.executable, os.path.abspath(__file__), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], command)


def build_parser() -> argparse.ArgumentParser:
    from common.config import DATA_DIR_ENV
    from common.partition import PARTITION_MODES
    from simulations.arguments import LOG_LEVELS, non_negative_float, positive_float, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset configuration name (configs/NAME.toml) or path")
    parser.add_argument("--task", help="task name from the configuration (default: its default_task)")
    parser.add_argument("--data-dir", help=f"folder with the dataset files (default: ${DATA_DIR_ENV}, then ./data)")
    parser.add_argument("--sites", type=int, default=5, help="number of hospital sites (default: 5)")
    parser.add_argument(
        "--partition",
        choices=PARTITION_MODES,
        default="contiguous",
        help="how the training data is divided among sites (default: contiguous)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: 0.5)")
    parser.add_argument("--rounds", type=int, default=10, help="federated rounds (default: 10)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--window",
        type=positive_int,
        help="flows per window (default: the configuration's training.window)",
    )
    parser.add_argument(
        "--local-epochs",
        type=positive_int,
        help="local epochs per round (default: the configuration's training.local_epochs)",
    )
    parser.add_argument(
        "--proximal-mu",
        type=non_negative_float,
        help="FedProx proximal term of the sites' training, 0 for plain FedAvg "
        "(default: the configuration's training.proximal_mu)",
    )
    parser.add_argument("--epochs", type=positive_int, help="epoch limit of the centralized and local-only models")
    parser.add_argument(
        "--min-sites", type=positive_int, help="minimum sites per round (default: 2, or 1 for a single site)"
    )
    parser.add_argument(
        "--round-timeout", type=positive_float, default=600.0, help="seconds to wait for replies per round"
    )
    parser.add_argument(
        "--site-file",
        action="append",
        default=[],
        metavar="INDEX=PATH",
        help="use PATH as site INDEX's data instead of its share of the dataset (repeatable)",
    )
    parser.add_argument("--max-rows", type=positive_int, help="use only the first N rows of the dataset")
    parser.add_argument("--no-baselines", action="store_true", help="skip the centralized and local-only models")
    parser.add_argument("--seed", type=int, help="seed of the partition and the models (default: configured)")
    parser.add_argument(
        "--signing-key",
        type=Path,
        help="coordinator's Ed25519 private key; every round is then published as a signed bundle "
        "(create one with 'python -m server.signing init --out secrets/')",
    )
    parser.add_argument(
        "--registry-dir", type=Path, help="model registry folder for the signed bundles (default: OUT/registry)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (default: INFO)",
    )
    return parser


def _parse_site_files(values: Sequence[str], n_sites: int) -> dict[int, Path]:
    from common.exceptions import ConfigError

    overrides = {}
    for value in values:
        index_text, separator, path = value.partition("=")
        if not separator or not index_text.isdigit() or not path:
            raise ConfigError(f"--site-file expects INDEX=PATH, got {value!r}")
        index = int(index_text)
        if index >= n_sites:
            raise ConfigError(f"--site-file index {index} is out of range for {n_sites} sites")
        if not Path(path).is_file():
            raise ConfigError(f"--site-file {value!r}: file not found: {path}")
        overrides[index] = Path(path)
    return overrides


def _plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [entry["round"] for entry in history]
    figure, (f1_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
    f1_axis.plot(rounds, [entry.get("f1") for entry in history], marker="o", label="F1")
    f1_axis.plot(rounds, [entry.get("macro_f1") for entry in history], marker="s", label="macro-F1")
    f1_axis.set_xlabel("round")
    f1_axis.set_ylabel("score on the sites' local test blocks")
    f1_axis.set_ylim(0, 1.02)
    f1_axis.legend()
    f1_axis.grid(alpha=0.3)
    loss_axis.plot(rounds, [entry.get("loss") for entry in history], marker="o", color="tab:red")
    loss_axis.set_xlabel("round")
    loss_axis.set_ylabel("federated evaluation loss")
    loss_axis.grid(alpha=0.3)
    for axis in (f1_axis, loss_axis):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def best_validation_round(history: list[dict[str, Any]]) -> int | None:
    """Return the round with the highest validation F1 (the later one on a tie), or ``None`` without scores."""
    scored = [entry for entry in history if entry.get("val_f1") is not None]
    if not scored:
        return None
    return int(max(scored, key=lambda entry: (entry["val_f1"], entry["round"]))["round"])


def format_report(report: dict[str, Any]) -> str:
    """Render the comparison as a text table."""
    keys = ("accuracy", "precision", "recall", "f1", "macro_f1", "fpr", "roc_auc")
    rows = [("federated", report["federated"])]
    if "federated_best_validation" in report:
        best = report["federated_best_validation"]
        rows.append((f"federated, round {best['round']}", best))
    if "centralized" in report:
        rows.append(("centralized", report["centralized"]))
    rows += [(f"local-only {name}", values) for name, values in report.get("local_only", {}).items()]
    lines = [f"{'model':<22}" + "".join(f"{key:>10}" for key in keys)]
    for name, values in rows:
        if "error" in values:
            lines.append(f"{name:<22}  failed: {values['error']}")
            continue
        cells = "".join(
            f"{values[key]:>10.4f}" if values.get(key) is not None else f"{'n/a':>10}" for key in keys
        )
        lines.append(f"{name:<22}{cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the simulation described by parsed command-line arguments and write the report."""
    import numpy as np

    from common.bundle import load_model, write_json
    from common.config import check_proximal_step, load_dataset_config, resolve_data_dir
    from common.exceptions import ConfigError, FedIDSError
    from common.loading import FlowTable, clean_flows, read_flow_csv
    from common.partition import partition_rows
    from common.splits import make_splits
    from simulations.comparison import TestSet, compare_models, score_on_test_set

    config = load_dataset_config(args.dataset)
    task = config.task(args.task)
    if args.sites < 1 or args.rounds < 1:
        raise ConfigError(f"--sites and --rounds must be at least 1, got {args.sites} and {args.rounds}")
    seed = config.training.seed if args.seed is None else args.seed
    window = args.window or config.training.window
    local_epochs = args.local_epochs or config.training.local_epochs
    proximal_mu = config.training.proximal_mu if args.proximal_mu is None else args.proximal_mu
    try:
        check_proximal_step(proximal_mu, config.model.learning_rate)
    except ValueError as error:
        raise ConfigError(f"--proximal-mu is invalid: {error}; lower it") from error
    if not config.capture_order and window != 1:
        raise ConfigError(f"{config.name} has no capture order, so --window must be 1, got {window}")
    site_overrides = _parse_site_files(args.site_file, args.sites)
    if args.signing_key:
        from server.registry import check_registry_dir
        from server.signing import load_private_key

        # Fail now on a bad key or registry folder, not after the data is read and partitioned.
        load_private_key(args.signing_key)
        check_registry_dir(args.registry_dir or args.out / "registry")
    min_sites = args.min_sites or min(2, args.sites)
    if min_sites > args.sites:
        raise ConfigError(f"--min-sites {min_sites} is larger than --sites {args.sites}")

    out = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    path = config.data_paths(resolve_data_dir(args.data_dir))[0]
    raw = read_flow_csv(path)
    if args.max_rows is not None:
        raw = raw.iloc[: args.max_rows]
    table = clean_flows(raw, config, task, source=str(path))
    assert table.labels is not None and table.source_rows is not None

    # The global split holds out the test block; the rest is shared among the sites.
    split = make_splits(config, table.labels, folds=False)[0]
    pool = np.sort(np.concatenate([split.rows("train"), split.rows("validation")]))
    shares = partition_rows(
        table.labels[pool],
        args.sites,
        args.partition,
        normal_index=task.normal_index,
        alpha=args.alpha,
        seed=seed,
        block_size=64 if config.capture_order else 1,
    )
    # A site trains only if its local training block holds at least one window.
    smallest = min(len(share) for share in shares)
    if smallest * config.split.train_fraction < window:
        raise ConfigError(
            f"the smallest site has {smallest} rows, too few for a training block with one window of "
            f"{window} flows; use fewer sites, a shorter --window or more rows"
        )
    site_dir = out / "sites"
    site_dir.mkdir(exist_ok=True)
    # A reused --out may hold the files of an earlier run with more sites.
    current = {f"site-{index}.csv" for index in range(args.sites)}
    for stale in sorted(site_dir.glob("site-*.csv")):
        if stale.name not in current:
            stale.unlink()
            logger.info("sites: removed %s, left by an earlier run with more sites", stale)
    sites: dict[int, FlowTable] = {}
    for index, share in enumerate(shares):
        rows = pool[share]
        target = site_dir / f"site-{index}.csv"
        if index in site_overrides:
            shutil.copyfile(site_overrides[index], target)
            logger.info("sites: site %d uses %s", index, site_overrides[index])
        else:
            raw.iloc[table.source_rows[rows]].to_csv(target, index=False)
            sites[index] = table.take(rows)
        counts = np.bincount(table.labels[rows], minlength=task.n_classes).tolist()
        logger.info("sites: site %d has %d rows, class counts %s", index, len(rows), counts)

    checkpoint_dir = out / "checkpoints"
    # A fresh run name per invocation keeps the histories of repeated runs apart.
    run_name = time.strftime("federated-%Y%m%d-%H%M%S")
    settings = {
        "dataset": str(config.source),
        "task": task.name,
        "num-rounds": args.rounds,
        "window": window,
        "local-epochs": local_epochs,
        "proximal-mu": proximal_mu,
        "batch-size": config.training.batch_size,
        "learning-rate": config.model.learning_rate,
        "min-sites": min_sites,
        "round-timeout": args.round_timeout,
        "checkpoint-dir": str(checkpoint_dir.resolve()),
        "run-name": run_name,
        "site-dir": str(site_dir.resolve()),
        "seed": seed,
        "registry-dir": str((args.registry_dir or out / "registry").resolve()),
        "signing-key": str(args.signing_key.resolve()) if args.signing_key else "",
    }
    started = time.perf_counter()
    global _active_run_dir
    _active_run_dir = checkpoint_dir / run_name
    run_federation(settings, args.sites)
    federation_seconds = time.perf_counter() - started

    run_dir = checkpoint_dir / run_name
    history_path = run_dir / "history.jsonl"
    if not history_path.exists():
        raise FedIDSError(f"the federation wrote no round history to {history_path}; see the log above")
    history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
    last_round = max(entry["round"] for entry in history)
    final_dir = run_dir / f"round-{last_round:03d}"
    federated_model, federated_preprocessor = load_model(final_dir)

    failed_rounds = [entry["round"] for entry in history if entry.get("failures")]
    if failed_rounds:
        logger.warning(
            "federation: sites failed in %d of %d rounds (rounds %s); the round records in %s name them",
            len(failed_rounds),
            len(history),
            failed_rounds,
            run_dir,
        )
    # A site given its own file (--site-file) has that file's rows, not its share of the dataset.
    site_rows: list[int | None] = [len(share) for share in shares]
    for index in site_overrides:
        try:
            site_rows[index] = len(read_flow_csv(site_dir / f"site-{index}.csv"))
        except FedIDSError:
            site_rows[index] = None

    test_set = TestSet(table=table, runs=split.test)
    comparison = compare_models(
        sites,
        test_set,
        federated_model,
        federated_preprocessor,
        config,
        task,
        epochs=args.epochs,
        local_only=not args.no_baselines,
        centralized=not args.no_baselines,
    )
    # The registry's "best" version is the round with the highest validation F1.
    # Sites that pull "best" run that round's model, so it is scored as well.
    best_round = best_validation_round(history)
    if best_round is not None and best_round != last_round:
        best_dir = run_dir / f"round-{best_round:03d}"
        best_model, best_preprocessor = load_model(best_dir)
        comparison["federated_best_validation"] = {
            **score_on_test_set(best_model, best_preprocessor, test_set, config, task),
            "round": best_round,
            "checkpoint": str(best_dir),
        }
    report = {
        **comparison,
        "dataset": config.name,
        "task": task.name,
        "classes": list(task.classes),
        "window": window,
        "sites": args.sites,
        "partition": args.partition,
        "alpha": args.alpha if args.partition == "dirichlet" else None,
        "rounds": args.rounds,
        "local_epochs": local_epochs,
        "proximal_mu": proximal_mu,
        "test_rows": len(split.rows("test")),
        "site_rows": site_rows,
        "site_files": [str(site_dir / f"site-{index}.csv") for index in range(args.sites)],
        "failures_per_round": [int(entry.get("failures", 0)) for entry in history],
        "federation_seconds": federation_seconds,
        "final_checkpoint": str(final_dir),
        "best_validation_round": best_round,
        "history": history,
    }
    write_json(out / "report.json", report)
    shutil.copyfile(history_path, out / "history.jsonl")
    _plot(history, out / "report.png", f"{config.name}, {args.sites} sites, {args.partition} partition")
    return report


class FederationFailedError(Exception):
    """The simulation engine or the ServerApp stopped with an error."""


def _shutdown_and_exit(code: int) -> None:
    """End this process with ``code`` after killing every process it started, Ray's included.

    Flower's ServerApp runs in a thread that is not a daemon and can wait out
    long round timeouts after a failure, so a normal interpreter exit could
    hang. ``ray.shutdown()`` is not used either: after an interrupt it can
    block, and Ray's driver in this process exits with code 1 as soon as the
    raylet is gone, which left Ray's agents running when their turn had not
    come yet. All descendants are therefore killed at once, and this process
    exits right after.
    """
    try:
        import psutil

        _end_processes(psutil.Process().children(recursive=True))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _end_processes(processes: Sequence[Any]) -> None:
    """Kill ``processes`` at once (SIGKILL)."""
    import psutil

    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            continue


def _start_ray(num_cpus: int) -> None:
    """Start Ray for the simulation engine, then install this process's signal handlers again.

    ``ray.init()`` replaces the SIGTERM handler with one that raises
    ``SystemExit`` inside Flower's engine. Flower's Ray backend reuses a Ray
    that is already running, so ``_stop_on_signal`` stays in charge.
    """
    import ray

    import_path = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        import_path = f"{import_path}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = import_path
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": import_path}},
    )
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)


def run_federation(settings: dict[str, Any], n_sites: int) -> None:
    """Run the ServerApp and one ClientApp per site on Flower's simulation engine."""
    # Start this process's TensorFlow runtime with its default thread pools
    # before the thread limits below are set, because those limits are only
    # meant for the Ray workers that inherit the environment: each simulated
    # site then trains with one thread and two sites share two cores.
    import tensorflow as tf
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from common.exceptions import FedIDSError
    from server.app import build_server_app

    _ = tf.constant(0) + 1
    os.environ.update({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"})
    _start_ray(num_cpus=max(os.cpu_count() or 1, 1))
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    logger.info("federation: starting %d sites for %d rounds", n_sites, settings["num-rounds"])
    try:
        run_simulation(
            server_app=build_server_app(settings),
            client_app=client_app,
            num_supernodes=n_sites,
            backend_config=backend_config,  # type: ignore[arg-type]
        )
    except FedIDSError:
        raise
    except Exception as error:
        raise FederationFailedError(f"the federation failed: {error}; see the log above") from error
    finally:
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.pop(name, None)


#: The run folder of the federation in progress, so that a signal can mark its run.json.
_active_run_dir: Path | None = None


def _mark_run_stopped(signum: int) -> None:
    """Set ``status`` in the active run's run.json to ``"interrupted"``, so dashboards stop showing it as running."""
    if _active_run_dir is None:
        return
    path = _active_run_dir / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(info, dict) and info.get("status") == "running":
            from common.bundle import write_json

            info["status"] = "interrupted"
            info["error"] = f"stopped by {signal.Signals(signum).name}"
            write_json(path, info)
    except (OSError, ValueError):
        pass  # no run.json yet, or unreadable: nothing to correct, and shutting down comes first


def _stop_on_signal(signum: int, _frame: object) -> None:
    """End the run at once on SIGINT or SIGTERM, with exit code 128 + the signal number.

    Flower's clean-up after ``KeyboardInterrupt`` calls ``ray.shutdown()`` on
    the main thread while worker threads still wait for Ray results, with no
    time limit. This handler kills Ray's processes itself (see
    :func:`_shutdown_and_exit`) and ignores a second signal meanwhile.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("interrupted" if signum == signal.SIGINT else "terminated", file=sys.stderr)
    _mark_run_stopped(signum)
    # Flower's worker threads log every Ray call that the shutdown cuts short,
    # with a traceback each. These lines carry no information, so they are muted.
    logging.getLogger("flwr").disabled = True
    _shutdown_and_exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Flower's logger prints through its own handler, so passing its lines on
    # to the root handler as well would print each of them twice.
    logging.getLogger("flwr").propagate = False
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    reexec_in_network_namespace(argv)

    from common.exceptions import FedIDSError

    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        report = run(args)
    except (FedIDSError, FederationFailedError) as error:
        print(f"error: {error}", file=sys.stderr)
        _shutdown_and_exit(2)
    print(format_report(report))
    print(f"wrote {args.out / 'report.json'}, {args.out / 'history.jsonl'} and {args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
