"""`shadowkeep up --git`: the quickstart followed from a local Git repository built here with
the `git` binary. A commit changes what `up` serves; a risky commit is held (the estate keeps
running as it was) until its commit is written into DIR/git/accept-risks; with
`--git-keyring`, only heads signed (by real `gpg`) with a key of the keyring are applied. Over
HTTPS (git http-backend behind TLS and basic auth, a private CA), the credentials are read
from `--secrets` files.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_up import QUICKSTART, Up, binary, create, get, processes_using, wait_for

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo, *args):
    out = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com",
         "-c", "commit.gpgsign=false", *args],
        cwd=repo, env=GIT_ENV, capture_output=True, text=True, check=True, timeout=60,
    )
    return out.stdout.strip()


def commit(repo, message):
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class GitUp(Up):
    """`shadowkeep up --git` following branch main of `repo`, fetched every second."""

    def start(self):
        self.out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [binary(), "up", "--git", f"file://{self.manifests}#main", "--git-interval", "1s",
             "--data-dir", str(self.data_dir), "--address-base", self.base, *self.extra],
            stdout=self.out, stderr=subprocess.STDOUT,
        )
        return self

    def git_status(self):
        return json.loads((self.data_dir / "git" / "status.json").read_text())

    def ready(self):
        status = self.git_status()
        [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
        return ready


@pytest.fixture
def repo(tmp_path):
    dest = tmp_path / "repo"
    shutil.copytree(QUICKSTART, dest)
    # A recovery recipient (its private key thrown away): without one the head carries the
    # "no recovery key" warning, a risk that would hold the first sync.
    km = dest / "keymanager.yaml"
    km.write_text(km.read_text().replace(
        "  backup:\n",
        "  backup:\n    recoveryRecipients: [age1hy3xdcy84zv0ux2msjyne60kecsz72sjlj08hxq3v6552xpaef7qcvqxp0]\n", 1))
    git(dest, "init", "-q", "-b", "main")
    commit(dest, "the quickstart")
    return dest


@pytest.fixture
def up(tmp_path, repo):
    running = GitUp(tmp_path, repo).start()
    running.wait_ready()
    yield running
    if running.proc.poll() is None:
        code = running.interrupt()
        assert code == 0, running.output()[-4000:]
    wait_for("no server left", lambda: not processes_using(running.data_dir), limit=30)


def test_a_commit_to_the_followed_branch_changes_what_up_serves(up, repo):
    first = git(repo, "rev-parse", "HEAD")
    assert f"git: applied main@sha1:{first}" in up.output()
    assert up.git_status()["lastAppliedRevision"] == f"main@sha1:{first}"
    pid = up.proc.pid

    table = repo / "drivetable.yaml"
    table.write_text(table.read_text() + """    - serial: "2013000001"
      certificateIdentity: library-b.tape.example.com
      keyGroup: lto-default
""")
    second = commit(repo, "library B")

    def admitted():
        e = up.estate()
        if not any(c["identity"] == "library-b.tape.example.com" for c in e["clients"]):
            return None
        return e if all(s["pid"] for s in e["servers"]) else None

    estate = wait_for("library-b's certificate in estate.json", admitted)
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    uid, material = wait_for(
        "library-b served",
        lambda: create(estate, replicas[0], "TAPE-B-0001", identity="library-b.tape.example.com"),
    )
    assert get(estate, replicas[1], uid, identity="library-b.tape.example.com") == material
    assert up.git_status()["lastAppliedRevision"] == f"main@sha1:{second}"
    assert up.proc.poll() is None and up.proc.pid == pid


def test_a_risky_commit_is_held_until_its_commit_is_written_to_accept_risks(up, repo):
    shadows = [s["name"] for s in up.estate()["servers"] if s["role"] == "shadow"]
    assert shadows == ["tape-keys-dr"]

    (repo / "shadow.yaml").unlink()
    risky = commit(repo, "no more shadow")
    held = wait_for("the commit held", lambda: up.ready()["reason"] == "RiskHeld" and up.ready())
    assert risky in held["message"]
    assert "last-active-shadow" in [r["code"] for r in up.git_status()["heldRisks"]]
    assert f"echo {risky} >" in up.output()
    # Held: the shadow keeps running, the applied revision stays.
    assert up.git_status()["lastAppliedRevision"] != f"main@sha1:{risky}"
    assert [s["name"] for s in up.estate()["servers"] if s["role"] == "shadow"] == shadows

    (up.data_dir / "git" / "accept-risks").write_text(risky + "\n")
    wait_for("the accepted commit applied",
             lambda: up.git_status()["lastAppliedRevision"] == f"main@sha1:{risky}")
    wait_for("the pruned shadow stopped",
             lambda: not [s for s in up.estate()["servers"] if s["role"] == "shadow"])
    assert up.git_status()["heldRisks"] == []
    assert "git: pruned Shadow default/tape-keys-dr" in up.output()


PASSWORD = "correct horse battery staple"


def private_ca_and_server_cert(directory):
    """A CA made here and a certificate for 127.0.0.1 it signs: (CA PEM, cert file, key file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "git test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "git")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


@pytest.fixture
def https_url(tmp_path, repo):
    """The repository served over HTTPS with basic auth (user bot, PASSWORD) by
    operator/tests/fixtures/git_https.py, behind a private CA: (URL, the CA's PEM)."""
    srv = tmp_path / "srv"
    srv.mkdir()
    git(repo, "clone", "-q", "--bare", ".", str(srv / "estate.git"))
    ca, cert, key = private_ca_and_server_cert(tmp_path)
    backend = Path(git(repo, "--exec-path")) / "git-http-backend"
    fixture = Path(__file__).resolve().parents[2] / "operator" / "tests" / "fixtures" / "git_https.py"
    server = subprocess.Popen(
        [sys.executable, str(fixture), str(srv), str(cert), str(key), str(backend)],
        stdout=subprocess.PIPE, env={**os.environ, "GIT_TEST_USER": "bot", "GIT_TEST_PASSWORD": PASSWORD},
    )
    port = int(server.stdout.readline())
    yield f"https://127.0.0.1:{port}/estate.git", ca
    server.kill()
    server.wait()


class UrlUp(GitUp):
    """`shadowkeep up --git URL#main` with `extra` arguments."""

    def __init__(self, tmp_path, url, extra):
        super().__init__(tmp_path, None, extra=extra)
        self.url = url

    def start(self):
        self.out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [binary(), "up", "--git", f"{self.url}#main", "--git-interval", "1s",
             "--data-dir", str(self.data_dir), "--address-base", self.base, *self.extra],
            stdout=self.out, stderr=subprocess.STDOUT,
        )
        return self


def test_up_fetches_over_https_with_credentials_read_from_secrets_files(tmp_path, repo, https_url):
    url, ca = https_url
    secrets = tmp_path / "secrets"
    secret = secrets / "default" / "estate-git"
    secret.mkdir(parents=True)
    (secret / "username").write_text("bot\n")
    (secret / "ca.crt").write_text(ca)
    extra = ["--secrets", str(secrets), "--git-credentials", "estate-git"]

    # No password: the Secret, its directory and the key named; nothing starts.
    refused = UrlUp(tmp_path, url, extra).start()
    assert refused.proc.wait(timeout=120) == 1, refused.output()[-4000:]
    assert (f'git: Secret default/estate-git ({secret}, --git-credentials) has no key "password"; '
            "nothing fetched or applied") in refused.output()
    assert not processes_using(refused.data_dir)

    # A wrong password: the server's refusal said, without the password; nothing starts.
    (secret / "password").write_text("tr0ub4dor&3\n")
    wrong = UrlUp(tmp_path, url, extra).start()
    assert wrong.proc.wait(timeout=120) == 1, wrong.output()[-4000:]
    assert 'the server refused user "bot" with key "password" of Secret default/estate-git' in wrong.output()
    assert "tr0ub4dor" not in wrong.output()

    (secret / "password").write_text(PASSWORD + "\n")
    running = UrlUp(tmp_path, url, extra).start()
    try:
        running.wait_ready()
        head = git(repo, "rev-parse", "HEAD")
        assert running.git_status()["lastAppliedRevision"] == f"main@sha1:{head}"
        assert f"git: applied main@sha1:{head}" in running.output()
        assert PASSWORD not in running.output()
    finally:
        if running.proc.poll() is None:
            assert running.interrupt() == 0, running.output()[-4000:]
    wait_for("no server left", lambda: not processes_using(running.data_dir), limit=30)


def test_up_applies_only_heads_signed_by_a_key_of_its_openpgp_keyring(tmp_path, repo):
    if shutil.which("gpg") is None:
        # CI installs gnupg: there a missing gpg is a failure, not a skip.
        if os.environ.get("SHADOWKEEP_CI"):
            pytest.fail("gpg is required under CI (apt-get install gnupg)")
        pytest.skip("no gpg on PATH")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**GIT_ENV, "GNUPGHOME": str(home)}

    def gpg(*args):
        return subprocess.run(["gpg", "--batch", "--passphrase", "", *args], env=env,
                              capture_output=True, text=True, check=True, timeout=120).stdout

    try:
        gpg("--quick-gen-key", "Signer <signer@example.com>", "ed25519", "sign", "never")
        fingerprint = next(line.strip(":").split(":")[-1] for line in
                           gpg("--with-colons", "--list-keys", "signer@example.com").splitlines()
                           if line.startswith("fpr:"))
        keyring = tmp_path / "keyring.asc"
        keyring.write_text(gpg("--armor", "--export", fingerprint))
        extra = ["--git-keyring", str(keyring)]

        # The fixture's head is unsigned: nothing was ever applied and nothing can be.
        refused = GitUp(tmp_path, repo, extra=extra).start()
        assert refused.proc.wait(timeout=120) == 1, refused.output()[-4000:]
        head = git(repo, "rev-parse", "HEAD")
        assert f"failed to verify commit {head}: it is not signed" in refused.output()
        assert not processes_using(refused.data_dir)

        def signed_commit(message):
            subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com",
                            "-c", "gpg.program=gpg", "-c", f"user.signingkey={fingerprint}",
                            "commit", "-q", "-S", "--allow-empty", "-m", message],
                           cwd=repo, env=env, check=True, capture_output=True, timeout=60)
            return git(repo, "rev-parse", "HEAD")

        signed = signed_commit("signed")
        running = GitUp(tmp_path, repo, extra=extra).start()
        try:
            running.wait_ready()
            assert running.git_status()["lastAppliedRevision"] == f"main@sha1:{signed}"
            assert running.ready()["message"].endswith(f"(signed by OpenPGP key {fingerprint})")

            # An unsigned head is refused; the signed one stays applied and served.
            git(repo, "commit", "-q", "--allow-empty", "-m", "unsigned")
            unsigned = git(repo, "rev-parse", "HEAD")
            refusal = wait_for("the unsigned head refused",
                               lambda: running.ready()["reason"] == "VerificationFailed"
                               and running.ready())
            assert f"failed to verify commit {unsigned}: it is not signed" in refusal["message"]
            assert running.git_status()["lastAppliedRevision"] == f"main@sha1:{signed}"
            assert running.proc.poll() is None
        finally:
            if running.proc.poll() is None:
                assert running.interrupt() == 0, running.output()[-4000:]
            wait_for("no server left", lambda: not processes_using(running.data_dir), limit=30)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)
