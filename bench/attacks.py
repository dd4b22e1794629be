#!/usr/bin/env python3
"""The attacks of issue #12 on a shadowkeep key server's listeners, with the server's
memory and file descriptors measured under each, and whether a client with a valid
certificate is still served.

    /work/main/.venv/bin/python bench/attacks.py target/debug/shadowkeep-server

Needs PyKMIP (tests/requirements.txt). Each attack gets a fresh server process, run with
--config in a temporary directory (certificates and KEK made by a development-mode run
first) with the default limits and the admin API on; only its file-descriptor limit is
set, per attack, as printed. Attacks:

- big-post: four callers without a client certificate POST 250 MiB each to
  /v1/keystore/merge at once.
- idle-admin: 1,100 connections without a client certificate complete TLS with the admin
  API and stay silent (server limited to 1,024 file descriptors).
- idle-tcp-kmip: 1,100 TCP connections to the KMIP port that never start TLS (server
  limited to 4,096 file descriptors).

After each attack starts, a PyKMIP client with the development client certificate must
Create and Get a key within 15 s, and a peer (the development peer certificate) must get
the keystore digest. Printed per attack: resident memory at rest (VmRSS) and the peak
(VmHWM, from /proc), the most file descriptors seen, how long the client took, and the
lines the server logged.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient

HOST = "127.0.0.1"
# How long a client with a certificate may take to be served during an attack.
SERVED_BOUND = 15.0
# How long each attack is held after it is in place.
HOLD = 10.0
STARTUP_TIMEOUT = 30.0
MIB = 1 << 20

# PyKMIP logs whole messages at DEBUG, and its own failures at ERROR; the figures say enough.
logging.getLogger("kmip").setLevel(logging.CRITICAL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One server process with the admin API, from a configuration in `workdir`."""

    def __init__(self, binary: str, certs: Path, workdir: Path, nofile: int):
        self.certs = certs
        self.workdir = workdir
        workdir.mkdir(parents=True)
        config = workdir / "server.yaml"
        config.write_text(
            f"serverId: bench\n"
            f"kmip: {{listen: \"{HOST}:0\"}}\n"
            f"tls: {{cert: {certs}/server.pem, key: {certs}/server-key.pem, clientCa: {certs}/ca.pem}}\n"
            f"dataDir: {workdir}/store\n"
            f"kekFile: {certs}/kek.bin\n"
            f"drives: {{acceptUnknown: true}}\n"
            f"replication:\n"
            f"  listen: \"{HOST}:{free_port()}\"\n"
            f"  clientCert: {certs}/peer.pem\n"
            f"  clientKey: {certs}/peer-key.pem\n"
            f"  allowedIdentities: [shadowkeep-dev-peer]\n"
        )
        self.stderr_path = workdir / "stderr.log"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [binary, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(self.proc.pid, resource.RLIMIT_NOFILE, (nofile, hard))
        self.kmip_port = self.admin_port = None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.admin_port is None:
            line = self.proc.stdout.readline().decode()
            if not line or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {self.proc.poll()}")
            if line.startswith("kmip listening on "):
                self.kmip_port = int(line.rpartition(":")[2])
            if line.startswith("admin listening on "):
                self.admin_port = int(line.rpartition(":")[2])
        self.peak_fds = 0

    def status(self, field: str) -> int:
        """A /proc/PID/status figure in kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        try:
            n = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            n = 0
        self.peak_fds = max(self.peak_fds, n)
        return n

    def log_lines(self) -> int:
        with open(self.stderr_path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(MIB), b""))

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def kmip_served(server: Server, bound: float = SERVED_BOUND) -> float | None:
    """Seconds a fresh PyKMIP client took to Create and Get a key, or None if it was not
    served within `bound` (or failed)."""
    result = {}

    def run():
        started = time.monotonic()
        client = ProxyKmipClient(
            hostname=HOST,
            port=server.kmip_port,
            cert=str(server.certs / "client.pem"),
            key=str(server.certs / "client-key.pem"),
            ca=str(server.certs / "ca.pem"),
            ssl_version="PROTOCOL_TLSv1_2",
            kmip_version=enums.KMIPVersion.KMIP_1_2,
            config_file="/dev/null",
        )
        try:
            with client:
                uid = client.create(enums.CryptographicAlgorithm.AES, 256)
                if len(client.get(uid).value) == 32:
                    result["secs"] = time.monotonic() - started
        except Exception:  # noqa: BLE001 - any failure means "not served"
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    return result.get("secs")


def peer_served(server: Server, bound: float = SERVED_BOUND) -> bool:
    """Whether a peer gets the keystore digest within `bound`."""
    ctx = ssl.create_default_context(cafile=str(server.certs / "ca.pem"))
    ctx.load_cert_chain(str(server.certs / "peer.pem"), str(server.certs / "peer-key.pem"))
    try:
        conn = http.client.HTTPSConnection(HOST, server.admin_port, context=ctx, timeout=bound)
        conn.request("GET", "/v1/keystore/digest")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def anonymous_context(server: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.certs / "ca.pem"))


def big_post(server: Server, held: list) -> str:
    """Four callers without a certificate POST 250 MiB each to the merge endpoint (and
    hold nothing once done)."""
    size, parallel = 250 * MIB, 4
    ctx = anonymous_context(server)
    outcomes = [None] * parallel
    chunk = b"\0" * MIB

    def one(i: int):
        sent, answer = 0, "no answer"
        try:
            with socket.create_connection((HOST, server.admin_port), timeout=120) as raw:
                with ctx.wrap_socket(raw, server_hostname=HOST) as s:
                    s.sendall(
                        f"POST /v1/keystore/merge HTTP/1.1\r\nhost: {HOST}\r\n"
                        f"content-length: {size}\r\n\r\n".encode()
                    )
                    try:
                        while sent < size:
                            s.sendall(chunk)
                            sent += len(chunk)
                    except OSError as e:
                        answer = f"send stopped: {e.__class__.__name__}"
                    try:
                        head = s.recv(64).decode("latin-1")
                        answer = head.split("\r\n")[0] or answer
                    except OSError:
                        pass
        except OSError as e:
            answer = f"{e.__class__.__name__}"
        outcomes[i] = f"{sent // MIB} MiB sent, {answer}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        server.fds()
        time.sleep(0.2)
    return "; ".join(sorted(set(outcomes), key=outcomes.index))


def idle_admin(server: Server, held: list) -> str:
    """1,100 silent TLS connections without a certificate to the admin API."""
    ctx = anonymous_context(server)
    opened = failed = 0
    while opened < 1100 and failed < 20:
        try:
            raw = socket.create_connection((HOST, server.admin_port), timeout=2)
            s = ctx.wrap_socket(raw, server_hostname=HOST)
            held.append(s)
            opened += 1
        except OSError:
            failed += 1
    return f"{opened} TLS connections opened, {failed} could not (handshake timed out after 2 s)"


def idle_tcp_kmip(server: Server, held: list) -> str:
    """1,100 TCP connections to the KMIP port that never start TLS."""
    for _ in range(1100):
        held.append(socket.create_connection((HOST, server.kmip_port), timeout=5))
    return "1100 TCP connections opened"


ATTACKS = [
    ("big-post", 4096, big_post),
    ("idle-admin", 1024, idle_admin),
    ("idle-tcp-kmip", 4096, idle_tcp_kmip),
]


def make_certificates(binary: str, dir: Path) -> None:
    proc = subprocess.Popen(
        [binary, "--dev", "--data-dir", str(dir), "--listen", f"{HOST}:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    for raw in proc.stdout:
        if raw.startswith(b"kmip listening on "):
            break
    proc.kill()
    proc.wait()
    if not (dir / "ca.pem").exists():
        raise SystemExit("the development run made no certificates")


def run(binary: str, only: list[str]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="shadowkeep-attacks-") as tmp:
        tmp = Path(tmp)
        make_certificates(binary, tmp / "certs")
        print(f"server: {binary}")
        header = (
            f"{'attack':<14} {'nofile':>6} {'rest MiB':>8} {'peak MiB':>8} {'peak fds':>8} "
            f"{'client s':>8} {'peer':>5} {'log lines':>9}  attack outcome"
        )
        print(header)
        for name, nofile, attack in ATTACKS:
            if only and name not in only:
                continue
            server = Server(binary, tmp / "certs", tmp / name, nofile)
            warm = kmip_served(server)
            rest = server.status("VmRSS")
            held: list = []
            try:
                outcome = attack(server, held)
                client = kmip_served(server)
                peer = peer_served(server)
                # Whatever the attack holds open, it holds for a while, as an attacker would.
                deadline = time.monotonic() + (HOLD if held else 0)
                while time.monotonic() < deadline:
                    server.fds()
                    time.sleep(0.2)
                server.fds()
                peak = server.status("VmHWM")
                lines = server.log_lines()
            finally:
                for s in held:
                    s.close()
                code = server.stop()
            client_text = "no" if client is None else f"{client:.2f}"
            print(
                f"{name:<14} {nofile:>6} {rest / 1024:>8.0f} {peak / 1024:>8.0f} {server.peak_fds:>8} "
                f"{client_text:>8} {'yes' if peer else 'no':>5} {lines:>9}  {outcome}"
                f"{'' if warm is not None else ' [not served even before the attack]'}"
                f"{'' if code == 0 else f' [exit {code} on SIGTERM]'}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="the shadowkeep-server binary")
    names = [a[0] for a in ATTACKS]
    parser.add_argument("attacks", nargs="*", help=f"run only these: {', '.join(names)}")
    args = parser.parse_args()
    unknown = sorted(set(args.attacks) - set(names))
    if unknown:
        parser.error(f"unknown attacks {unknown}; known: {names}")
    run(str(Path(args.binary).resolve()), args.attacks)


if __name__ == "__main__":
    sys.exit(main())
