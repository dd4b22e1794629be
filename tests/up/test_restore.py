"""The restore drill of docs/restore.md, end to end: `up` serves the quickstart with an S3
backup target (moto's real S3 server); PyKMIP makes keys; the data directory is destroyed;
`shadowkeep restore` rebuilds the KeyManager from the newest S3 backup with the recovery
key; `up` serves every key again with identical material. Then: a restore is grow-only (a
key made after the backup survives a second restore), a wrong recovery key or a damaged
backup changes nothing, and a restore cannot run beside a running `up`.
"""

import json
import shutil
import subprocess

from test_up import (
    Moto, Up, binary, create, get, manifests, processes_using, request_reconcile, tree_digest, wait_for,
    with_s3_backups,
)

PREFIX = "estates/default/tape-keys/"


def restore(tmp_path, manifests, data_dir, *extra, key=None, check=True):
    """Runs `shadowkeep restore` from target `offsite` into `data_dir`; its JSON answer, or
    the finished process when `check` is false."""
    done = subprocess.run(
        [binary(), "restore", "--from", "target:offsite",
         "--recovery-key", key or tmp_path / "recovery.key",
         "--data-dir", data_dir, "--secrets", tmp_path / "secrets", "-o", "json",
         *extra, manifests],
        capture_output=True, timeout=120,
    )
    if not check:
        return done
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def newest_backup_keys(tmp_path, moto):
    """How many keys the newest backup in the bucket holds (`backup verify`)."""
    names = moto.keys("backups-bucket", PREFIX)
    if not names:
        return None
    copy = tmp_path / "newest.skb"
    copy.write_bytes(moto.s3().get_object(Bucket="backups-bucket", Key=names[-1])["Body"].read())
    verified = subprocess.run(
        [binary(), "backup", "verify", copy], capture_output=True, check=True, timeout=60,
    )
    return json.loads(verified.stdout)["keys"]


def replicas_of(estate):
    replicas = [s for s in estate["servers"] if s["role"] == "replica"]
    assert len(replicas) == 2, estate
    return replicas


def stop(up):
    assert up.interrupt() == 0, up.output()[-4000:]
    wait_for("no server left", lambda: not processes_using(up.data_dir), limit=30)


def test_the_restore_drill_rebuilds_a_destroyed_estate_from_its_s3_backup(tmp_path, manifests):
    moto = Moto(tmp_path)
    try:
        with_s3_backups(tmp_path, manifests, moto)
        secrets = ["--secrets", str(tmp_path / "secrets")]
        up = Up(tmp_path, manifests, extra=secrets).start()
        try:
            estate = up.wait_ready()
            # The quickstart's KeyGroups hold keys of their own: counted from the first backup.
            base = wait_for("a first backup", lambda: newest_backup_keys(tmp_path, moto))
            made = {}
            for i in range(5):
                uid, material = create(estate, replicas_of(estate)[i % 2], f"DRILL{i:02}")
                made[uid] = material
            request_reconcile(manifests, "2026-12-03T03:00:00Z")
            wait_for("a backup holding the new keys", lambda: newest_backup_keys(tmp_path, moto) == base + 5)
        finally:
            stop(up)

        # The site is lost: every key, the KEK and the certificates with it.
        shutil.rmtree(up.data_dir)

        dry = restore(tmp_path, manifests, up.data_dir, "--dry-run")
        assert (dry["how"], dry["keysInBackup"], dry["added"], dry["written"]) == ("rebuilt", base + 5, base + 5, False), dry
        assert not (up.data_dir / "key-managers").exists(), "a dry run writes nothing"

        done = restore(tmp_path, manifests, up.data_dir)
        assert (done["how"], done["added"], done["written"]) == ("rebuilt", base + 5, True), done
        assert done["keyManager"] == done["backupOf"] == "default/tape-keys"
        assert done["backup"] == moto.keys("backups-bucket", PREFIX)[-1].removeprefix(PREFIX)

        # Served again, by every replica, with the same material.
        up = Up(tmp_path, manifests, data_dir=up.data_dir, extra=secrets).start()
        try:
            estate = up.wait_ready()
            for server in replicas_of(estate):
                for uid, material in made.items():
                    assert wait_for(
                        f"key {uid} on {server['name']}", lambda: get(estate, server, uid) == material,
                    )
            # A key made after the backup.
            later, later_material = create(estate, replicas_of(estate)[0], "DRILL-LATER")
            request_reconcile(manifests, "2026-12-03T03:05:00Z")
            wait_for("the later key in a backup", lambda: newest_backup_keys(tmp_path, moto) == base + 6)
        finally:
            stop(up)

        # Restoring an older backup again is grow-only: nothing is rolled back.
        older = moto.keys("backups-bucket", PREFIX)[-2].removeprefix(PREFIX)
        again = subprocess.run(
            [binary(), "restore", "--from", f"target:offsite/{older}", "--recovery-key", tmp_path / "recovery.key",
             "--data-dir", up.data_dir, "--secrets", tmp_path / "secrets", "-o", "json", manifests],
            capture_output=True, timeout=120,
        )
        assert again.returncode == 0, again.stderr.decode()
        again = json.loads(again.stdout)
        assert (again["how"], again["added"], again["written"]) == ("merged", 0, False), again

        # Refusals change nothing: a wrong recovery key, a damaged backup, a running `up`.
        before = tree_digest(up.data_dir / "key-managers")
        wrong = tmp_path / "wrong.key"
        subprocess.run([binary(), "recovery-key", "new", "--out", wrong], capture_output=True, check=True, timeout=60)
        refused = restore(tmp_path, manifests, up.data_dir, key=wrong, check=False)
        assert refused.returncode == 1 and "wrong recovery key" in refused.stderr.decode(), refused.stderr
        damaged = tmp_path / "damaged.skb"
        raw = bytearray(moto.s3().get_object(
            Bucket="backups-bucket", Key=moto.keys("backups-bucket", PREFIX)[-1])["Body"].read())
        raw[len(raw) // 2] ^= 0x01
        damaged.write_bytes(bytes(raw))
        refused = subprocess.run(
            [binary(), "restore", "--from", damaged, "--recovery-key", tmp_path / "recovery.key",
             "--data-dir", up.data_dir],
            capture_output=True, timeout=120,
        )
        assert refused.returncode == 1 and refused.stderr, refused
        assert tree_digest(up.data_dir / "key-managers") == before

        up = Up(tmp_path, manifests, data_dir=up.data_dir, extra=secrets).start()
        try:
            estate = up.wait_ready()
            beside = restore(tmp_path, manifests, up.data_dir, check=False)
            assert beside.returncode == 1 and "stop it first" in beside.stderr.decode(), beside.stderr
            for uid, material in [*made.items(), (later, later_material)]:
                assert get(estate, replicas_of(estate)[1], uid) == material
            log = up.output()
        finally:
            stop(up)
        assert "moto-secret-value-never-printed" not in log
    finally:
        moto.stop()
