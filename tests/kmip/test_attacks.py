"""PyKMIP, a real client with a valid certificate, keeps being served under attacks on the
listener (issue #12): idle TCP connections that never start TLS, and a server whose stderr
cannot be written. The attacks' effect on memory is measured by bench/attacks.py, not here.
"""

import signal
import socket
import subprocess
import threading
import time

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient

from kmipserver import HOST, LISTENING, STARTUP_TIMEOUT, STOP_TIMEOUT, dev_config, make_client, server_binary

# How long a client may take to be served on a busy machine.
BOUND = 30.0


def served_within(open_client, bound=BOUND):
    """Creates a key with a fresh PyKMIP client and reads it back, in a thread so that a
    client stuck behind the attack fails the test instead of hanging it. Returns the
    material's length, or None if the client was not served within `bound`."""
    result = {}

    def run():
        with open_client() as c:
            uid = c.create(enums.CryptographicAlgorithm.AES, 256)
            result["length"] = len(c.get(uid).value)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    return result.get("length")


def test_idle_tcp_connections_do_not_lock_out_a_client_with_a_certificate(servers, tmp_path):
    certs = servers.dev(tmp_path / "certs")
    certs.stop()
    config = dev_config(certs.certs_dir, tmp_path / "store", {"acceptUnknown": True})
    config["kmip"]["maxConnections"] = 8
    s = servers.from_config(config, certs.certs_dir)
    crowd = [socket.create_connection((HOST, s.port)) for _ in range(40)]
    try:
        assert served_within(lambda: make_client(s)) == 32
    finally:
        for c in crowd:
            c.close()


def test_a_server_whose_stderr_cannot_be_written_serves_and_stops_cleanly(tmp_path):
    data = tmp_path / "dev"
    with open("/dev/full", "wb") as full:
        proc = subprocess.Popen(
            [str(server_binary()), "--dev", "--data-dir", str(data), "--listen", f"{HOST}:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=full,
            env={"RUST_LOG": "debug", "PATH": "/usr/bin:/bin"},
        )
    try:
        port = None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode().strip()
            if line.startswith(LISTENING):
                port = int(line.rpartition(":")[2])
                break
            assert time.monotonic() < deadline, "no listening line in time"
        assert port is not None, f"exited with {proc.wait(STOP_TIMEOUT)} before listening"

        def client():
            return ProxyKmipClient(
                hostname=HOST,
                port=port,
                cert=str(data / "client.pem"),
                key=str(data / "client-key.pem"),
                ca=str(data / "ca.pem"),
                ssl_version="PROTOCOL_TLSv1_2",
                kmip_version=enums.KMIPVersion.KMIP_1_2,
                config_file="/dev/null",
            )

        assert served_within(client) == 32
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
