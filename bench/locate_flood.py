"""Measures Locate answers without Maximum Items against a running server: the size of
one answer, of a batch of 32, and the server's peak RSS (VmHWM) while four connections
send the batch of 32 at once. Prints one JSON line (issue #12 item 9).

    .venv/bin/python bench/locate_flood.py HOST PORT CERTS_DIR SERVER_PID

CERTS_DIR holds what `shadowkeep-server --dev` writes (ca.pem, client.pem,
client-key.pem). Fill the server first, e.g. 51,000 keys with
`target/release/examples/kmip_load --addr HOST:PORT --certs CERTS_DIR --op create
--connections 8 --seconds 60`.
"""
import json
import socket
import ssl
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kmip"))
import kmipwire as w  # noqa: E402
from kmip.core import enums  # noqa: E402

host, port, certs, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def connect():
    ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
    ctx.load_cert_chain(f"{certs}/client.pem", f"{certs}/client-key.pem")
    raw = socket.create_connection((host, port), timeout=300)
    return ctx.wrap_socket(raw, server_hostname=host)


def message(items: int) -> bytes:
    header = w.struct_(w.T.REQUEST_HEADER,
                       w.struct_(w.T.PROTOCOL_VERSION, w.integer(w.T.PROTOCOL_VERSION_MAJOR, 1),
                                 w.integer(w.T.PROTOCOL_VERSION_MINOR, 2)),
                       w.enum(w.T.BATCH_ERROR_CONTINUATION_OPTION, 1),
                       w.integer(w.T.BATCH_COUNT, items))
    batch = [w.struct_(w.T.BATCH_ITEM, w.enum(w.T.OPERATION, enums.Operation.LOCATE),
                       w.struct_(w.T.REQUEST_PAYLOAD)) for _ in range(items)]
    return w.encode(w.struct_(w.T.REQUEST_MESSAGE, header, *batch))


def exchange(sock, request: bytes) -> bytes:
    sock.sendall(request)
    def exact(n):
        out = bytearray()
        while len(out) < n:
            chunk = sock.recv(min(1 << 20, n - len(out)))
            if not chunk:
                raise EOFError("closed")
            out += chunk
        return bytes(out)
    header = exact(8)
    n = int.from_bytes(header[4:8], "big")
    return header + exact(n)


def summary(reply: bytes):
    parsed = w.parse_response(w.decode(reply))
    ids = sum(len(i.payload.children(w.T.UNIQUE_IDENTIFIER)) for i in parsed.items if i.payload)
    failed = sum(1 for i in parsed.items if i.status != enums.ResultStatus.SUCCESS)
    return {"bytes": len(reply), "identifiers": ids, "failed_items": failed}


def hwm():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024


out = {"rss_before_mib": hwm()}
with connect() as s:
    out["one_locate"] = summary(exchange(s, message(1)))
with connect() as s:
    out["batch_of_32"] = summary(exchange(s, message(32)))
sizes = []
def worker():
    with connect() as s:
        sizes.append(len(exchange(s, message(32))))
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["four_parallel_batches_bytes"] = sizes
out["peak_rss_mib"] = hwm()
print(json.dumps(out))
