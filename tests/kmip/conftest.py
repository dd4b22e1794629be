"""Fixtures for testing shadowkeep-server with PyKMIP.

Nothing is built here: the server binary must exist already (`cargo build -p
shadowkeep-server`). Its path is $SHADOWKEEP_SERVER, or target/debug/shadowkeep-server in
this repository. Every server listens on 127.0.0.1, port 0, in a pytest tmp_path.

- `server`: a development-mode server (its own CA, certificates and KEK) in a fresh
  directory; stopped with SIGTERM after the test, which must make it exit 0.
- `client`: an opened PyKMIP ProxyKmipClient connected to `server`.
- `servers`: a factory for more servers: `servers.dev(dir)` and
  `servers.from_config(cfg, certs_dir)` (see `kmipserver.dev_config`). Each ServerProcess
  has `restart()` (SIGTERM, exit 0, start again on the same data directory), `stop()`,
  `kill()` (SIGKILL) and `start()`; anything still running after the test gets SIGTERM
  and must exit 0.
- `kmipserver.make_client(server, version)`: an unopened ProxyKmipClient for any server.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kmipserver import Servers, make_client, server_binary  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    try:
        server_binary()
    except pytest.fail.Exception as e:
        # Once, clearly, rather than as an error in every test.
        pytest.exit(str(e), returncode=1)


@pytest.fixture
def servers(tmp_path):
    factory = Servers(tmp_path)
    yield factory
    problems = factory.stop_all()
    assert not problems, "\n".join(problems)


@pytest.fixture
def server(servers, tmp_path):
    s = servers.dev(tmp_path / "dev")
    yield s
    if s.running:
        code = s.stop()
        assert code == 0, f"server exited with {code} on SIGTERM\nstderr: {s.stderr_text()[-4000:]}"


@pytest.fixture
def client(server):
    c = make_client(server)
    c.open()
    yield c
    c.close()
