"""Run a real Flower deployment on one machine: one SuperLink and one SuperNode per hospital file.

Example::

    python simulations/federation.py --dataset wustl-ehms-2020 \\
        --site hospital-a=runs/sites/a.csv --site hospital-b=runs/sites/b.csv \\
        --site hospital-c=runs/sites/c.csv --rounds 2 --work-dir runs/deploy

Unlike ``simulate.py``, which runs every site inside Flower's simulation
engine, this command starts the processes a hospital network runs, each in
its own process group, all on 127.0.0.1 with free ports:

1. ``python -m server.tls`` material and one key pair per site
   (``python -m client.keys``) under ``<work-dir>/secrets``;
2. ``flower-superlink`` with TLS, SuperNode authentication and a database
   file (:mod:`server.superlink`), then every site's key is registered;
3. one ``python -m client.supernode`` per site, each with its own data file;
4. ``flwr run`` submits the project with the run settings, and the run's
   log is followed into ``<work-dir>/logs/run-<id>.log``;
5. at the end, or on Ctrl-C or an error, every process it started is
   stopped, with the processes Flower started below them.

``--kill-site NAME`` kills that site's SuperNode with SIGKILL while round
``--kill-round`` trains, to measure how long the round then takes.
``--restart-after S`` starts it again S seconds later. ``--compare-simulation``
runs ``simulate.py`` on the same site files and settings afterwards and
prints the round times of both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from client.keys import create_site_credentials
from client.supernode import SuperNodeSettings, check_settings
from common.exceptions import ConfigError, DeploymentError, FedIDSError
from common.processes import (
    flwr_environment,
    flwr_executable,
    free_port,
    kill_process_tree,
    stop_process_tree,
)
from server.superlink import (
    CONNECTION_NAME,
    SuperLinkLayout,
    SuperLinkSettings,
    list_sites,
    register_site,
    run_status,
    start_superlink,
    stop_superlink,
    submit_run,
)
from server.tls import create_superlink_tls

logger = logging.getLogger("simulations.federation")

ROOT = Path(__file__).resolve().parent.parent

#: Run statuses of Flower 1.42 that mean the run is over.
FINISHED_PREFIX = "finished"


@dataclass(frozen=True)
class SiteSpec:
    """A hospital of the local federation: its name and its own flow file."""

    name: str
    data_path: Path


@dataclass
class SiteProcess:
    """A running ``client.supernode`` process of one site."""

    spec: SiteSpec
    settings: SuperNodeSettings
    process: subprocess.Popen[bytes]
    log_path: Path
    node_id: int | None = None


@dataclass
class RunResult:
    """Outcome of one run: its id, final status, log file and timing events."""

    run_id: int
    status: str
    log_path: Path
    seconds: float
    events: dict[str, float] = field(default_factory=dict)


class LocalFederation:
    """A SuperLink and one SuperNode per site on 127.0.0.1, each a separate process.

    Use it as a context manager: leaving the block stops every process the
    federation started, with their descendants.

    Parameters
    ----------
    work_dir : Path
        Folder for secrets, the coordinator's state, site folders and logs.
    sites : sequence of SiteSpec
        The hospitals, each with its own data file.
    host : str
        Address of the SuperLink, ``127.0.0.1`` unless the sites run in
        network namespaces that reach it on another address.
    site_namespaces : mapping of str to str, optional
        Site name to the network namespace (``ip netns``) its SuperNode runs in.
    """

    def __init__(
        self,
        work_dir: Path,
        sites: Sequence[SiteSpec],
        *,
        host: str = "127.0.0.1",
        site_namespaces: Mapping[str, str] | None = None,
    ) -> None:
        names = [site.name for site in sites]
        if len(set(names)) != len(names):
            raise ConfigError(f"site names must be unique, got {names}")
        self.work_dir = Path(work_dir).resolve()
        self.sites = {site.name: site for site in sites}
        self.host = host
        self.site_namespaces = dict(site_namespaces or {})
        unknown = sorted(set(self.site_namespaces) - set(self.sites))
        if unknown:
            raise ConfigError(f"network namespaces given for unknown sites {unknown}; sites are {names}")
        self.secrets_dir = self.work_dir / "secrets"
        self.logs_dir = self.work_dir / "logs"
        self.superlink_settings = SuperLinkSettings(
            state_dir=self.work_dir / "coordinator",
            tls_dir=self.secrets_dir / "coordinator",
            host=host,
            port=free_port(host),
        )
        self.layout: SuperLinkLayout = self.superlink_settings.layout
        self.running: dict[str, SiteProcess] = {}
        self.node_ids: dict[str, int] = {}
        self._followers: list[subprocess.Popen[bytes]] = []

    # ---- setup -------------------------------------------------------------

    def create_credentials(self) -> None:
        """Create the coordinator's TLS files and every site's keys, unless they exist."""
        tls = self.superlink_settings
        if not tls.certificate.exists():
            addresses = [self.host] if self.host != "127.0.0.1" else []
            create_superlink_tls(tls.tls_dir, ip_addresses=addresses)
        for name in self.sites:
            if not (self.site_credentials(name) / "site.key").exists():
                create_site_credentials(self.site_credentials(name), name)

    def site_credentials(self, name: str) -> Path:
        return self.secrets_dir / name

    def start(self, *, register: bool = True, start_sites: bool = True) -> None:
        """Create credentials, start the SuperLink, register and start every site."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.create_credentials()
        start_superlink(self.superlink_settings)
        if register:
            for name in self.sites:
                self.node_ids[name] = register_site(self.layout, name, self.site_credentials(name) / "site.pub")
        if start_sites:
            for name in self.sites:
                self.start_site(name)

    def site_settings(self, name: str, credentials: Path | None = None) -> SuperNodeSettings:
        """Return the SuperNode settings of a site, optionally with other credentials."""
        spec = self.sites[name]
        return SuperNodeSettings(
            superlink=f"{self.host}:{self.superlink_settings.port}",
            root_certificates=self.superlink_settings.ca_certificate,
            credentials_dir=credentials or self.site_credentials(name),
            site_name=name,
            data_path=spec.data_path.resolve(),
            work_dir=self.work_dir / "sites" / name,
            runtime_port=free_port(),
        )

    def supernode_command(self, settings: SuperNodeSettings, join_timeout: float) -> list[str]:
        """Return the ``python -m client.supernode`` command of ``settings``."""
        return [
            sys.executable, "-m", "client.supernode",
            "--superlink", settings.superlink,
            "--root-certificates", str(settings.root_certificates),
            "--credentials", str(settings.credentials_dir),
            "--site-name", settings.site_name,
            "--data-path", str(settings.data_path),
            "--work-dir", str(settings.work_dir),
            "--runtime-port", str(settings.runtime_port),
            "--join-timeout", str(join_timeout),
        ]  # fmt: skip

    def start_site(
        self,
        name: str,
        *,
        credentials: Path | None = None,
        join_timeout: float = 150.0,
        command_prefix: Sequence[str] = (),
    ) -> SiteProcess:
        """Start a site's SuperNode in its own process group, logging to ``logs/<name>.log``.

        ``command_prefix`` runs the command through another program; by
        default a site with a network namespace runs under ``ip netns exec``.
        """
        if not command_prefix and name in self.site_namespaces:
            command_prefix = ["ip", "netns", "exec", self.site_namespaces[name]]
        settings = self.site_settings(name, credentials)
        check_settings(settings)
        log_path = self.logs_dir / f"{name}.log"
        environment = flwr_environment(settings.flwr_home, {"PYTHONPATH": _python_path()})
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*command_prefix, *self.supernode_command(settings, join_timeout)],
                cwd=self.work_dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        site = SiteProcess(self.sites[name], settings, process, log_path, self.node_ids.get(name))
        self.running[name] = site
        logger.info("site %s: started SuperNode supervisor process %d, log %s", name, process.pid, log_path)
        return site

    def wait_for_sites(self, names: Sequence[str], status: str = "online", timeout: float = 120.0) -> None:
        """Wait until the SuperLink lists every site in ``names`` with ``status``.

        Raises
        ------
        DeploymentError
            If a site's process exits, or the status is not reached within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            listed = {site["name"]: site["status"] for site in list_sites(self.layout)}
            if all(listed.get(name) == status for name in names):
                return
            for name in names:
                site = self.running.get(name)
                if status == "online" and site is not None and site.process.poll() is not None:
                    raise DeploymentError(
                        f"site {name}: SuperNode exited with code {site.process.returncode}; see {site.log_path}"
                    )
            if time.monotonic() > deadline:
                raise DeploymentError(f"sites did not reach status {status!r} within {timeout:.0f} s: {listed}")
            time.sleep(1.0)

    # ---- runs --------------------------------------------------------------

    def submit(self, run_config: Mapping[str, Any]) -> int:
        """Submit the project as a run and start following its log."""
        return submit_run(self.layout, ROOT, run_config)

    def follow_log(self, run_id: int) -> Path:
        """Stream a run's log into ``logs/run-<id>.log`` with ``flwr log`` and return the file."""
        path = self.logs_dir / f"run-{run_id}.log"
        with path.open("ab") as log:
            follower = subprocess.Popen(
                [flwr_executable("flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"],
                cwd=self.layout.state_dir,
                env=flwr_environment(self.layout.cli_home),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._followers.append(follower)
        return path

    def wait_for_run(self, run_id: int, timeout: float) -> str:
        """Wait until the run is finished and return its status, for example ``finished:completed``.

        Raises
        ------
        DeploymentError
            If the run does not finish within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = run_status(self.layout, run_id)
            if status.startswith(FINISHED_PREFIX):
                return status
            if time.monotonic() > deadline:
                raise DeploymentError(f"run {run_id} still {status!r} after {timeout:.0f} s")
            time.sleep(2.0)

    def wait_for_clientapp(self, name: str, timeout: float) -> bool:
        """Wait until a site's SuperNode runs a ``flwr-clientapp`` process, that is, handles a message."""
        import psutil

        deadline = time.monotonic() + timeout
        root = psutil.Process(self.running[name].process.pid)
        while time.monotonic() < deadline:
            for child in root.children(recursive=True):
                try:
                    if any("flwr-clientapp" in part for part in child.cmdline()):
                        return True
                except psutil.Error:
                    continue
            time.sleep(0.1)
        return False

    def kill_site(self, name: str) -> float:
        """Kill a site's SuperNode and its ClientApp processes with SIGKILL; return the wall-clock time."""
        site = self.running.pop(name)
        killed_at = time.time()
        pids = kill_process_tree(site.process.pid)
        site.process.wait()
        logger.warning("site %s: killed processes %s at %.3f", name, pids, killed_at)
        return killed_at

    # ---- teardown ----------------------------------------------------------

    def stop_site(self, name: str) -> None:
        site = self.running.pop(name, None)
        if site is not None:
            stop_process_tree(site.process.pid)
            site.process.wait()

    def stop(self) -> None:
        """Stop every site, log follower and the SuperLink, with all their descendants."""
        for name in list(self.running):
            self.stop_site(name)
        for follower in self._followers:
            stop_process_tree(follower.pid, timeout=5)
            follower.wait()
        self._followers.clear()
        stop_superlink(self.layout.state_dir)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _python_path() -> str:
    # The SuperNode supervisor runs as "python -m client.supernode", so the
    # repository must be importable from its working directory.
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([str(ROOT), existing]) if existing else str(ROOT)


# ---------------------------------------------------------------------------
# Experiments: a killed site, and the same sites in simulation
# ---------------------------------------------------------------------------


class LogWatcher:
    """Record the wall-clock time at which each of several lines first appears in a growing log file.

    The times are those at which ``flwr log`` wrote the lines, which trails
    the ServerApp by the polling interval of its log stream.
    """

    def __init__(self, path: Path, needles: Mapping[str, str], interval: float = 0.2) -> None:
        self.path = path
        self.needles = dict(needles)
        self.interval = interval
        self.times: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LogWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.times) < len(self.needles):
            text = self.path.read_text(errors="replace") if self.path.exists() else ""
            now = time.time()
            for name, needle in self.needles.items():
                if name not in self.times and needle in text:
                    self.times[name] = now
            time.sleep(self.interval)

    def wait_for(self, name: str, timeout: float) -> float | None:
        """Wait until the line ``name`` appeared and return its time, or ``None`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while name not in self.times and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(self.interval)
        return self.times.get(name)


def run_with_kill(
    federation: LocalFederation,
    run_config: Mapping[str, Any],
    *,
    kill_site: str,
    kill_round: int,
    kill_delay: float,
    restart_after: float | None,
    timeout: float,
) -> RunResult:
    """Run once and kill ``kill_site`` ``kill_delay`` seconds after round ``kill_round`` starts training.

    ``events`` of the result holds wall-clock times: ``round_started``,
    ``killed``, ``restarted``, and when the log showed the end of the
    round's train phase (``train_aggregated``) and its checkpoint (``round_saved``).
    """
    started = time.monotonic()
    run_id = federation.submit(run_config)
    log_path = federation.follow_log(run_id)
    watcher = LogWatcher(
        log_path,
        {
            "round_started": f"round {kill_round}: train: sent the global model",
            "train_aggregated": f"round {kill_round}: train: aggregated",
            "round_saved": f"round {kill_round}: checkpoint: saved",
        },
    ).start()
    try:
        if watcher.wait_for("round_started", timeout) is None:
            raise DeploymentError(f"round {kill_round} did not start within {timeout:.0f} s; see {log_path}")
        # The log stream can lag behind the run, so the kill waits until the
        # site is seen handling the round's message, not only for the log line.
        if not federation.wait_for_clientapp(kill_site, timeout=min(timeout, 120.0)):
            logger.warning("site %s: no ClientApp process seen in round %d; killing it anyway", kill_site, kill_round)
        time.sleep(kill_delay)
        killed = federation.kill_site(kill_site)
        restarted = None
        if restart_after is not None:
            time.sleep(restart_after)
            restarted = time.time()
            federation.start_site(kill_site)
        status = federation.wait_for_run(run_id, timeout)
    finally:
        watcher.stop()
    events = {**watcher.times, "killed": killed}
    if restarted is not None:
        events["restarted"] = restarted
    return RunResult(run_id, status, log_path, time.monotonic() - started, events)


def run_plain(federation: LocalFederation, run_config: Mapping[str, Any], timeout: float) -> RunResult:
    """Submit one run, follow its log and wait for it to finish."""
    started = time.monotonic()
    run_id = federation.submit(run_config)
    log_path = federation.follow_log(run_id)
    status = federation.wait_for_run(run_id, timeout)
    return RunResult(run_id, status, log_path, time.monotonic() - started)


def round_times(run_dir: Path) -> list[float]:
    """Return the ``seconds`` of every round's metrics.json (train plus evaluate), in round order."""
    times = []
    for folder in sorted(run_dir.glob("round-*")):
        summary = json.loads((folder / "metrics.json").read_text())
        if summary.get("round", 0) > 0:
            times.append(float(summary["seconds"]))
    return times


def run_simulation_comparison(
    sites: Sequence[SiteSpec], settings: Mapping[str, Any], out_dir: Path, timeout: float, data_dir: Path
) -> Path:
    """Run ``simulate.py`` on the same site files and settings; return its run folder.

    ``simulate.py`` reads the whole dataset from ``data_dir`` to lay out its
    sites before the site files replace every share.
    """
    command = [
        sys.executable, str(ROOT / "simulations" / "simulate.py"),
        "--dataset", str(settings["dataset"]),
        "--sites", str(len(sites)),
        "--rounds", str(settings["num-rounds"]),
        "--window", str(settings["window"]),
        "--local-epochs", str(settings["local-epochs"]),
        "--proximal-mu", str(settings["proximal-mu"]),
        "--min-sites", str(settings["min-sites"]),
        "--round-timeout", str(settings["round-timeout"]),
        "--seed", str(settings["seed"]),
        "--no-baselines",
        "--data-dir", str(data_dir),
        "--out", str(out_dir),
    ]  # fmt: skip
    for index, site in enumerate(sites):
        command += ["--site-file", f"{index}={site.data_path.resolve()}"]
    logger.info("simulation: running simulate.py on the same %d site files", len(sites))
    completed = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": _python_path()},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    (out_dir / "simulate.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise DeploymentError(f"simulate.py failed with code {completed.returncode}; see {out_dir / 'simulate.log'}")
    runs = sorted((out_dir / "checkpoints").iterdir())
    return runs[-1]


def _report(out: IO[str], name: str, times: Sequence[float]) -> None:
    cells = ", ".join(f"{value:.1f} s" for value in times)
    out.write(f"{name:<12} round times: {cells}\n")


def build_run_config(args: argparse.Namespace, checkpoint_dir: Path, run_name: str) -> dict[str, Any]:
    """Return the run config of the deployment, in the keys of ``[tool.flwr.app.config]``."""
    from common.config import load_dataset_config

    config = load_dataset_config(args.dataset)
    return {
        "dataset": args.dataset,
        "num-rounds": args.rounds,
        "window": args.window or config.training.window,
        "local-epochs": args.local_epochs,
        "proximal-mu": args.proximal_mu,
        "batch-size": config.training.batch_size,
        "learning-rate": config.model.learning_rate,
        "min-sites": args.min_sites or min(2, len(args.site)),
        "round-timeout": args.round_timeout,
        "node-wait-timeout": 120.0,
        "checkpoint-dir": str(checkpoint_dir),
        "run-name": run_name,
        "seed": config.training.seed,
    }


def _simulation_data_dir(args: argparse.Namespace) -> Path:
    """Return the dataset folder ``simulate.py`` needs, checked before the deployment starts."""
    from common.config import load_dataset_config, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    path = load_dataset_config(args.dataset).data_paths(data_dir)[0]
    if not path.exists():
        raise ConfigError(
            f"--compare-simulation needs the dataset file {path}; set --data-dir or FEDIDS_DATA_DIR"
        )
    return Path(data_dir).resolve()


def _parse_sites(values: Sequence[str]) -> list[SiteSpec]:
    sites = []
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise ConfigError(f"--site expects NAME=PATH, got {value!r}")
        if not Path(path).is_file():
            raise ConfigError(f"--site {value!r}: file not found: {path}")
        sites.append(SiteSpec(name, Path(path)))
    if not sites:
        raise ConfigError("give at least one --site NAME=PATH")
    return sites


def build_parser() -> argparse.ArgumentParser:
    from simulations.arguments import non_negative_float, positive_float, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset configuration name")
    parser.add_argument("--site", action="append", default=[], metavar="NAME=PATH", help="a hospital and its file")
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for secrets, state, logs, checkpoints")
    parser.add_argument("--rounds", type=positive_int, default=2, help="federated rounds (default: 2)")
    parser.add_argument("--window", type=positive_int, help="flows per window (default: the configuration's)")
    parser.add_argument("--local-epochs", type=positive_int, default=1, help="local epochs per round (default: 1)")
    parser.add_argument(
        "--proximal-mu",
        type=non_negative_float,
        default=0.0,
        help="FedProx proximal term of the sites' training (default: 0, plain FedAvg)",
    )
    parser.add_argument("--min-sites", type=positive_int, help="minimum sites per round (default: 2)")
    parser.add_argument(
        "--round-timeout", type=positive_float, default=120.0, help="seconds to wait for replies per phase"
    )
    parser.add_argument("--run-timeout", type=positive_float, default=1800.0, help="seconds allowed for the run")
    parser.add_argument("--host", default="127.0.0.1", help="SuperLink address (default: 127.0.0.1)")
    parser.add_argument(
        "--site-netns",
        action="append",
        default=[],
        metavar="NAME=NAMESPACE",
        help="run site NAME's SuperNode in network namespace NAMESPACE (repeatable; needs root)",
    )
    parser.add_argument("--kill-site", help="kill this site's SuperNode during a round")
    parser.add_argument("--kill-round", type=positive_int, default=1, help="round in which to kill (default: 1)")
    parser.add_argument("--kill-delay", type=float, default=2.0, help="seconds after the round starts (default: 2)")
    parser.add_argument("--restart-after", type=float, help="restart the killed site after this many seconds")
    parser.add_argument(
        "--compare-simulation", action="store_true", help="also run simulate.py on the same files and settings"
    )
    parser.add_argument(
        "--data-dir", help="folder with the dataset files, for --compare-simulation (default: $FEDIDS_DATA_DIR)"
    )
    return parser


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM, and SIGINT in a background job of a non-interactive shell,
    # would otherwise end this process without stopping the SuperLink, which
    # runs in its own session.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sites = _parse_sites(args.site)
        if args.kill_site is not None and args.kill_site not in {site.name for site in sites}:
            raise ConfigError(f"--kill-site {args.kill_site!r} is not one of the --site names")
        data_dir = _simulation_data_dir(args) if args.compare_simulation else None
        work_dir = args.work_dir.resolve()
        run_name = time.strftime("deployment-%Y%m%d-%H%M%S")
        run_config = build_run_config(args, work_dir / "checkpoints", run_name)
        namespaces = dict(value.partition("=")[::2] for value in args.site_netns)
        with LocalFederation(work_dir, sites, host=args.host, site_namespaces=namespaces) as federation:
            federation.start()
            federation.wait_for_sites([site.name for site in sites])
            if args.kill_site:
                result = run_with_kill(
                    federation,
                    run_config,
                    kill_site=args.kill_site,
                    kill_round=args.kill_round,
                    kill_delay=args.kill_delay,
                    restart_after=args.restart_after,
                    timeout=args.run_timeout,
                )
            else:
                result = run_plain(federation, run_config, args.run_timeout)
        run_dir = work_dir / "checkpoints" / run_name
        summary: dict[str, Any] = {
            "run_id": result.run_id,
            "status": result.status,
            "run_seconds": result.seconds,
            "round_seconds": round_times(run_dir),
            "events": result.events,
        }
        if "killed" in result.events:
            metrics = run_dir / f"round-{args.kill_round:03d}" / "metrics.json"
            summary["kill_to_round_end_seconds"] = metrics.stat().st_mtime - result.events["killed"]
            if "train_aggregated" in result.events:
                summary["kill_to_train_end_seconds"] = result.events["train_aggregated"] - result.events["killed"]
            summary["kill_round_record"] = json.loads(metrics.read_text())
        if data_dir is not None:
            simulation_dir = run_simulation_comparison(
                sites, run_config, work_dir / "simulation", args.run_timeout, data_dir
            )
            summary["simulation_round_seconds"] = round_times(simulation_dir)
        (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130
    print(f"run {result.run_id}: {result.status} in {result.seconds:.1f} s; checkpoints in {run_dir}")
    _report(sys.stdout, "deployment", summary["round_seconds"])
    if "simulation_round_seconds" in summary:
        _report(sys.stdout, "simulation", summary["simulation_round_seconds"])
    if "kill_to_round_end_seconds" in summary:
        train_end = summary.get("kill_to_train_end_seconds")
        print(
            f"killed {args.kill_site} in round {args.kill_round}: its train phase ended "
            f"{'n/a' if train_end is None else f'{train_end:.1f}'} s later, the round "
            f"{summary['kill_to_round_end_seconds']:.1f} s later (round timeout {args.round_timeout:.0f} s)"
        )
    print(f"wrote {work_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
