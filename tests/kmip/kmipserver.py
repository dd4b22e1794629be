"""Running shadowkeep-server processes for the KMIP tests (the fixtures are in conftest.py).

- `server_binary()`: $SHADOWKEEP_SERVER or target/debug/shadowkeep-server; fails the test
  run with a clear message if it is missing (nothing is built here).
- `ServerProcess`: one server; start, stop (SIGTERM, then SIGKILL after a timeout), kill,
  restart on the same data directory, its stdout lines and JSON stderr logs.
- `Servers`: starts development-mode or --config servers in a tmp_path, cleans up.
- `dev_config()`: a --config file using a development directory's certificates and KEK.
- `make_client()`: a PyKMIP ProxyKmipClient for a server.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO / "target" / "debug" / "shadowkeep-server"
HOST = "127.0.0.1"
# How long a server may take to print its listening line (a debug build generating its
# certificates on a busy machine), and to exit after SIGTERM.
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
LISTENING = "kmip listening on "

# PyKMIP logs whole messages (key material included) at DEBUG; keep that out of reports.
logging.getLogger("kmip").setLevel(logging.WARNING)


def server_binary() -> Path:
    path = Path(os.environ.get("SHADOWKEEP_SERVER", str(DEFAULT_BINARY)))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"shadowkeep-server binary not found at {path}; build it with "
            f"`cargo build -p shadowkeep-server` or set SHADOWKEEP_SERVER to its path",
            pytrace=False,
        )
    return path


class ServerProcess:
    """One shadowkeep-server: started, stopped and restarted on the same arguments, so a
    restart serves the same data directory (on a new port)."""

    def __init__(self, args: list[str], workdir: Path, *, data_dir: Path, certs_dir: Path, name: str):
        self.args = args
        self.workdir = workdir
        self.data_dir = data_dir  # the directory whose keystore this server serves
        self.certs_dir = certs_dir  # where ca.pem, client.pem and client-key.pem are
        self.name = name
        self.host = HOST
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.stdout_lines: list[str] = []
        self.stderr_path: Path | None = None

    # Client credentials (made by the development-mode server that created certs_dir).
    @property
    def ca(self) -> str:
        return str(self.certs_dir / "ca.pem")

    @property
    def cert(self) -> str:
        return str(self.certs_dir / "client.pem")

    @property
    def key(self) -> str:
        return str(self.certs_dir / "client-key.pem")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServerProcess:
        assert not self.running, f"{self.name} is already running"
        self.runs += 1
        self.stderr_path = self.workdir / f"{self.name}.run{self.runs}.stderr.log"
        stderr = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [str(server_binary()), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
                cwd=self.workdir,
                env={**os.environ, "RUST_LOG": os.environ.get("SHADOWKEEP_TEST_RUST_LOG", "info")},
            )
        finally:
            stderr.close()
        lines: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines = []

        def pump(stream, sink=self.stdout_lines):
            # Keeps reading to the end so that the server never blocks on a full pipe.
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                sink.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                self.kill()
                pytest.fail(
                    f"{self.name}: no '{LISTENING}...' line within {STARTUP_TIMEOUT}s\n"
                    f"stdout: {self.stdout_lines}\nstderr: {self.stderr_text()}"
                )
            if line is None:
                code = self.proc.wait(timeout=STOP_TIMEOUT)
                pytest.fail(
                    f"{self.name} exited with {code} before listening\n"
                    f"stdout: {self.stdout_lines}\nstderr: {self.stderr_text()}"
                )
            if line.startswith(LISTENING):
                addr = line[len(LISTENING):].strip()
                host, _, port = addr.rpartition(":")
                assert host == HOST, f"{self.name} listens on {addr}, expected {HOST}"
                self.port = int(port)
                return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `sig` and waits for the exit; SIGKILL if it does not come in time.
        Returns the exit code (negative: killed by that signal)."""
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
                pytest.fail(
                    f"{self.name} did not exit within {timeout}s of signal {sig}; killed it\n"
                    f"stderr: {self.stderr_text()[-4000:]}"
                )
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL: no chance to flush or clean up anything."""
        return self.stop(signal.SIGKILL)

    def restart(self) -> ServerProcess:
        """Graceful stop (SIGTERM, which must exit 0), then a new process on the same data."""
        code = self.stop()
        assert code == 0, f"{self.name} exited with {code} on SIGTERM\nstderr: {self.stderr_text()[-4000:]}"
        return self.start()

    def stderr_text(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text("utf-8", "replace")

    def logs(self) -> list[dict]:
        """The JSON log lines of the current (or last) run."""
        out = []
        for line in self.stderr_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


class Servers:
    """Starts servers for one test and stops whatever is still running afterwards."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.started: list[ServerProcess] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def dev(self, data_dir: Path | None = None) -> ServerProcess:
        """A development-mode server on `data_dir` (made, with its CA, certificates and KEK,
        if new)."""
        name = self._name("dev")
        data_dir = data_dir or self.tmp_path / name
        s = ServerProcess(
            ["--dev", "--data-dir", str(data_dir), "--listen", f"{HOST}:0"],
            self.tmp_path,
            data_dir=data_dir,
            certs_dir=data_dir,
            name=name,
        )
        self.started.append(s)
        return s.start()

    def from_config(self, config: dict, certs_dir: Path) -> ServerProcess:
        """A server run with --config. `config` is the file's content as a dict (written as
        JSON, which is YAML); `certs_dir` holds the client credentials to use with it."""
        name = self._name("cfg")
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=2))
        s = ServerProcess(
            ["--config", str(path)],
            self.tmp_path,
            data_dir=Path(config["dataDir"]),
            certs_dir=certs_dir,
            name=name,
        )
        self.started.append(s)
        return s.start()

    def stop_all(self) -> list[str]:
        problems = []
        for s in self.started:
            if s.running:
                code = s.stop()
                if code != 0:
                    problems.append(f"{s.name} exited with {code} on SIGTERM\n{s.stderr_text()[-4000:]}")
        return problems


def dev_config(certs_dir: Path, data_dir: Path, drives: dict, server_id: str = "tape-eu1") -> dict:
    """A --config file serving `data_dir` with the certificates and KEK of a development
    directory, and the drive policy `drives`."""
    return {
        "serverId": server_id,
        "kmip": {"listen": f"{HOST}:0", "idleTimeoutSecs": 120, "maxConnections": 1024},
        "tls": {
            "cert": str(certs_dir / "server.pem"),
            "key": str(certs_dir / "server-key.pem"),
            "clientCa": str(certs_dir / "ca.pem"),
        },
        "dataDir": str(data_dir),
        "kekFile": str(certs_dir / "kek.bin"),
        "drives": drives,
    }


def make_client(server: ServerProcess, version: enums.KMIPVersion = enums.KMIPVersion.KMIP_1_2) -> ProxyKmipClient:
    """An unopened PyKMIP client for `server` with the dev client certificate."""
    return ProxyKmipClient(
        hostname=server.host,
        port=server.port,
        cert=server.cert,
        key=server.key,
        ca=server.ca,
        ssl_version="PROTOCOL_TLSv1_2",
        kmip_version=version,
        config_file="/dev/null",
    )
