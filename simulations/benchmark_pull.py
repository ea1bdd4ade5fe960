"""Benchmark pulling a bundle over HTTPS on loopback: latency and bundle size.

Example::

    python simulations/benchmark_pull.py --window 16 --repeat 10 --out runs/bench-pull.json

The script trains a one-epoch CNN-LSTM on the first 70% of the WUSTL file,
publishes it as a signed bundle with model.onnx, starts the model service
(``python -m server.model_service serve``) on 127.0.0.1 with a throw-away CA
and server certificate, and then measures

- a full pull into an empty folder (TLS connection, version entry, archive
  download, SHA-256, extraction, signature and checksum verification, the
  switch of ``current``), ``--repeat`` times, in this process;
- a pull when the site already has that version (one entry request);
- the ``python -m client.pull`` command once, Python start-up included.

Loopback has no network latency, so these numbers are the cost of the
protocol and the verification; add the round trips of the real network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.pull import ModelServiceClient, pull_bundle  # noqa: E402
from common.bundle import load_public_key  # noqa: E402
from common.config import DATA_DIR_ENV, load_dataset_config, resolve_data_dir  # noqa: E402
from common.exceptions import FedIDSError  # noqa: E402
from server.model_service import add_site  # noqa: E402
from server.signing import generate_keypair, load_private_key  # noqa: E402
from simulations.benchmark_detection import publish_benchmark_bundle  # noqa: E402

# The throw-away PKI of the loopback tests; a deployment uses its own CA.
from tests.tls_helpers import write_test_pki  # noqa: E402


def run_benchmark(data_dir: Path, window: int, repeat: int) -> dict[str, Any]:
    """Publish one bundle, serve it on loopback and time the pulls."""
    config = load_dataset_config("wustl-ehms-2020")
    data_path = config.data_paths(data_dir)[0]
    with tempfile.TemporaryDirectory(prefix="fedids-pull-") as folder:
        work = Path(folder)
        private_path, public_path = generate_keypair(work / "keys")
        bundle_path = publish_benchmark_bundle(work, data_path, config.name, window, load_private_key(private_path))
        archive = bundle_path.with_name(bundle_path.name + ".tar.gz")
        ca, cert, key = write_test_pki(work / "tls")
        token = add_site(work / "tokens.json", "bench-site")
        (work / "site.token").write_text(token + "\n")
        (work / "site.token").chmod(0o600)
        service = subprocess.Popen(
            [
                sys.executable, "-m", "server.model_service", "serve", "--registry", str(work / "registry"),
                "--tokens", str(work / "tokens.json"), "--cert", str(cert), "--key", str(key),
                "--host", "127.0.0.1", "--port", "0",
            ],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert service.stdout is not None
            line = service.stdout.readline()
            if not line.startswith("serve: listening on "):
                raise FedIDSError(f"the model service did not start: {line!r}")
            url = line.split()[3]
            client = ModelServiceClient(url, token, ca)
            public_key = load_public_key(public_path)

            full = []
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                result = pull_bundle(client, work / f"site-{attempt}", public_key)
                if attempt > 0:  # the first pull warms the service's imports
                    full.append(time.perf_counter() - started)
                assert result.updated
            current = []
            for _ in range(repeat):
                started = time.perf_counter()
                result = pull_bundle(client, work / f"site-{repeat}", public_key)
                current.append(time.perf_counter() - started)
                assert not result.updated
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable, "-m", "client.pull", "--url", url, "--token-file", str(work / "site.token"),
                    "--ca", str(ca), "--public-key", str(public_path), "--to", str(work / "site-command"),
                ],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, check=True,
            )
            command_seconds = time.perf_counter() - started
        finally:
            service.terminate()
            service.wait(timeout=30)
        files = {path.name: path.stat().st_size for path in sorted(bundle_path.iterdir())}
        return {
            "window": window,
            "archive_bytes": archive.stat().st_size,
            "unpacked_bytes": sum(files.values()),
            "files": files,
            "full_pull_seconds": {"median": round(statistics.median(full), 4), "best": round(min(full), 4)},
            "already_current_seconds": {
                "median": round(statistics.median(current), 4), "best": round(min(current), 4)
            },
            "command_seconds": round(command_seconds, 2),
            "repeat": repeat,
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "nice": os.nice(0),
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark pulling a bundle over HTTPS on loopback.")
    parser.add_argument("--data-dir", type=Path, help=f"folder with the dataset files (default: ${DATA_DIR_ENV})")
    parser.add_argument("--window", type=int, default=16, help="window length of the published model (default: 16)")
    parser.add_argument("--repeat", type=int, default=10, help="timed pulls of each kind")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    try:
        report = run_benchmark(resolve_data_dir(args.data_dir), args.window, args.repeat)
    except (FedIDSError, OSError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
