"""A real, throw-away PostgreSQL server for tests (Debian's ``postgresql`` package).

``PostgresServer`` runs ``initdb`` + ``pg_ctl start`` in a fresh temporary directory on a free TCP port on
127.0.0.1 (trust authentication, socket directory inside the temporary directory). PostgreSQL refuses to run as
root, so when the tests run as root the server runs as the ``postgres`` user (``runuser -u postgres --``) and
the directory is handed to that user.

Use the session-scoped fixture::

    from tests.helpers.postgres import postgres_server  # noqa: F401  (pytest finds it by name)

    def test_x(postgres_server):
        url = postgres_server.new_database()   # postgresql://postgres@127.0.0.1:PORT/test_1

It skips (with the reason) only when the PostgreSQL binaries are not installed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_pg_bin() -> Path | None:
    for d in PG_BIN_DIRS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="shadowcam-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self._n = itertools.count(1)
        if self.as_root:
            if not shutil.which("runuser"):
                raise RuntimeError("running as root needs runuser to start PostgreSQL as the postgres user")
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
            os.chmod(self.root, 0o755)

    def _cmd(self, *args: str) -> list[str]:
        cmd = list(args)
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def start(self) -> "PostgresServer":
        subprocess.run(
            self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True, timeout=120,
        )
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log.txt"), "-w", "-t", "60", "start"),
            check=True, capture_output=True, timeout=90,
        )
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """Create an empty database and return its URL (each test gets its own)."""
        import psycopg

        name = f"test_{next(self._n)}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except subprocess.CalledProcessError as e:
        server.stop()
        raise RuntimeError(f"PostgreSQL test server did not start: {e.stderr.decode(errors='replace')[-2000:]}") from None
    yield server
    server.stop()
