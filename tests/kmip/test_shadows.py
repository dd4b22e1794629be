"""A shadow with PyKMIP as the client: two replicas and a shadow as real processes on
127.0.0.1, licences signed here (Ed25519) and Argon2id verifiers made here, the same formats
the operator issues. Every replica hangs (SIGSTOP): the shadow serves, read-only, every key
acknowledged before, with identical material; the replicas come back (SIGCONT): it refuses
KMIP again. Key material is compared by SHA-256 fingerprint, never printed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kmip.core import enums
from kmip.pie import exceptions as pie_exceptions

from kmipserver import HOST, make_client

SERVER_ID = "tape"
LICENCE_CONTEXT = b"shadowkeep.io/license/v1\0"
GRACE_SECS = 2


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def argon2id(password: str) -> str:
    return Argon2id(
        salt=os.urandom(16), length=32, iterations=2, lanes=1, memory_cost=19456
    ).derive_phc_encoded(password.encode())


def sign_licence(key: ed25519.Ed25519PrivateKey, body: dict) -> str:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return f"skl1.{b64url(raw)}.{b64url(key.sign(LICENCE_CONTEXT + raw))}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Pki:
    """A CA and the certificates the estate needs, as PEM files in `dir`."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shadow test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        (dir / "ca.pem").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, stem: str, common_name: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        if server:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))])
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            san = x509.SubjectAlternativeName([x509.DNSName(common_name)])
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        (self.dir / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / f"{stem}-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def admin(certs: Path, identity: str, port: int, method: str, path: str, body: bytes = b""):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / f"{identity}.pem"), str(certs / f"{identity}-key.pem"))
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(what: str, check, bound: float = 20.0):
    deadline = time.monotonic() + bound
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {bound}s: {what}"
        time.sleep(0.05)


@pytest.fixture
def estate(tmp_path, servers):
    certs = tmp_path / "certs"
    certs.mkdir()
    pki = Pki(certs)
    pki.leaf("server", "localhost", server=True)
    for identity in ["client", "peer", "operator", "shadow-a"]:
        pki.leaf(identity, identity, server=False)
    (certs / "kek.bin").write_bytes(os.urandom(32))
    signer = ed25519.Ed25519PrivateKey.generate()
    public = signer.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ).hex()
    issued = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    (certs / "replica.lic").write_text(
        sign_licence(signer, {"format": 1, "serverId": SERVER_ID, "role": "primary", "issuedAt": issued})
    )
    password = base64.b32encode(os.urandom(15)).decode()  # 24 characters
    (certs / "shadow-a.password").write_text(password)
    (certs / "shadow-a.lic").write_text(
        sign_licence(
            signer,
            {
                "format": 1,
                "serverId": SERVER_ID,
                "role": "shadow",
                "shadowName": "shadow-a",
                "passwordVerifier": argon2id(password),
                "issuedAt": issued,
            },
        )
    )
    tls = {"cert": str(certs / "server.pem"), "key": str(certs / "server-key.pem"), "clientCa": str(certs / "ca.pem")}
    admins = [free_port(), free_port()]
    replicas = []
    for i in range(2):
        other = 1 - i
        config = {
            "serverId": SERVER_ID,
            "kmip": {"listen": f"{HOST}:0"},
            "tls": tls,
            "dataDir": str(tmp_path / f"r{i}"),
            "kekFile": str(certs / "kek.bin"),
            "drives": {"acceptUnknown": True},
            "licence": {"file": str(certs / "replica.lic"), "publicKey": public},
            "replication": {
                "listen": f"{HOST}:{admins[i]}",
                "clientCert": str(certs / "peer.pem"),
                "clientKey": str(certs / "peer-key.pem"),
                "allowedIdentities": ["peer", "operator"],
                "peers": [{"name": f"r{other}", "address": f"{HOST}:{admins[other]}"}],
                "peerAcknowledgements": 1,
                "syncIntervalSecs": 1,
                "shadowVerifiers": {"shadow-a": [{"verifier": argon2id(password)}]},
            },
        }
        replicas.append(servers.from_config(config, certs))
    shadow_admin = free_port()
    shadow = servers.from_config(
        {
            "serverId": SERVER_ID,
            "kmip": {"listen": f"{HOST}:0"},
            "tls": tls,
            "dataDir": str(tmp_path / "shadow-a"),
            "kekFile": str(certs / "kek.bin"),
            "licence": {"file": str(certs / "shadow-a.lic"), "publicKey": public},
            "replication": {
                "listen": f"{HOST}:{shadow_admin}",
                "clientCert": str(certs / "shadow-a.pem"),
                "clientKey": str(certs / "shadow-a-key.pem"),
                "allowedIdentities": ["operator", "peer"],
            },
            "shadow": {
                "passwordFile": str(certs / "shadow-a.password"),
                "takeoverGracePeriodSecs": GRACE_SECS,
                "pollIntervalMs": 250,
                "pollTimeoutMs": 500,
                "replicas": [
                    {"name": f"r{i}", "address": f"{HOST}:{admins[i]}"} for i in range(2)
                ],
            },
        },
        certs,
    )
    yield certs, replicas, admins, shadow, shadow_admin, password
    # A stopped process cannot take the SIGTERM the fixture ends it with.
    for s in [*replicas, shadow]:
        if s.running:
            s.proc.send_signal(signal.SIGCONT)


def shadow_state(certs, port) -> str:
    status, body = admin(certs, "operator", port, "GET", "/v1/state")
    assert status == 200, body
    return json.loads(body)["shadow"]["state"]


def refused(c, call) -> str:
    with pytest.raises(pie_exceptions.KmipOperationFailure) as err:
        call(c)
    assert err.value.reason == enums.ResultReason.PERMISSION_DENIED, err.value
    return str(err.value)


def test_a_shadow_serves_every_acknowledged_key_read_only_while_the_replicas_hang(estate):
    certs, replicas, admins, shadow, shadow_admin, _ = estate
    with make_client(replicas[0]) as c:
        uids = [c.create(enums.CryptographicAlgorithm.AES, 256) for _ in range(5)]
        originals = {u: hashlib.sha256(bytes(c.get(u).value)).hexdigest() for u in uids}

    def digest(port):
        status, body = admin(certs, "operator", port, "GET", "/v1/keystore/digest")
        assert status == 200, body
        return json.loads(body)

    wait_for("the shadow holds the replicas' keys", lambda: digest(shadow_admin) == digest(admins[0]))
    with make_client(shadow) as s:
        text = refused(s, lambda s: s.get(uids[0]))
        assert "emergency shadow" in text and "Shadowing" in text, text
        for r in replicas:
            r.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for("Serving", lambda: shadow_state(certs, shadow_admin) == "Serving", 20)
            for u in uids:
                assert hashlib.sha256(bytes(s.get(u).value)).hexdigest() == originals[u], u
            assert sorted(s.locate()) == sorted(uids)
            text = refused(s, lambda s: s.create(enums.CryptographicAlgorithm.AES, 256))
            assert "Create refused" in text, text
            refused(s, lambda s: s.destroy(uids[0]))
            refused(s, lambda s: s.activate(uids[1]))
            assert hashlib.sha256(bytes(s.get(uids[0]).value)).hexdigest() == originals[uids[0]]
        finally:
            for r in replicas:
                r.proc.send_signal(signal.SIGCONT)
        wait_for("Shadowing", lambda: shadow_state(certs, shadow_admin) == "Shadowing", 20)
        refused(s, lambda s: s.get(uids[0]))


def test_a_refused_registration_says_why_and_no_password_reaches_a_log(estate):
    certs, replicas, admins, shadow, shadow_admin, password = estate
    wrong = base64.b32encode(os.urandom(15)).decode()
    body = json.dumps(
        {
            "licence": (certs / "shadow-a.lic").read_text(),
            "password": wrong,
            "instanceId": "00000000-0000-4000-8000-000000000001",
        }
    ).encode()
    status, reply = admin(certs, "shadow-a", admins[0], "POST", "/v1/shadow/register", body)
    assert status == 403, reply
    assert json.loads(reply)["reason"] == "password-wrong"
    assert wrong.encode() not in reply
    # The shadow registered with the right one meanwhile; the refusal was logged by code.
    wait_for("the shadow polls", lambda: shadow_state(certs, shadow_admin) == "Shadowing")
    logs = [s.stderr_text() for s in (*replicas, shadow)]
    assert any("password-wrong" in log for log in logs[:1]), logs[0][-2000:]
    for log in logs:
        assert wrong not in log and password not in log
