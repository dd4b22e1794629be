"""`shadowkeep up --git`: the quickstart followed from a local Git repository built here with
the `git` binary. A commit changes what `up` serves; a risky commit is held (the estate keeps
running as it was) until its commit is written into DIR/git/accept-risks; with
`--git-keyring`, only heads signed (by real `gpg`) with a key of the keyring are applied.
"""

import json
import os
import shutil
import subprocess

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
