"""A throw-away PostgreSQL server on this machine (Debian's ``postgresql`` package), for benchmarks.

:class:`ThrowawayPostgres` runs ``initdb`` + ``pg_ctl start`` in a fresh temporary directory, listening on
127.0.0.1 only, on a free TCP port, with trust authentication and its socket directory inside the temporary
directory; :meth:`~ThrowawayPostgres.stop` stops it and removes the directory. PostgreSQL refuses to run as root,
so when this process is root the server runs as the ``postgres`` user (``runuser -u postgres --``) and the
directory is handed to that user. ``tests/helpers/postgres.py`` does the same for the test suite.

``durable=True`` (the default here) keeps PostgreSQL's own defaults (``fsync``, full-page writes, synchronous
commit): a write rate measured on it is what a production server on the same disk gives. ``durable=False`` turns
fsync and full-page writes off, as the tests do, for speed.

Use it as a context manager::

    with ThrowawayPostgres.start_new() as pg:
        url = pg.new_database("bench")          # postgresql://postgres@127.0.0.1:PORT/bench
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

from pipeline.types import ConfigError

PG_ROOT = Path("/usr/lib/postgresql")


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``pg_ctl`` (else the ones on ``PATH``), or None."""
    for d in sorted(PG_ROOT.glob("*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in name.split("."))
    except ValueError:
        return (0,)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """One PostgreSQL server in a temporary directory (see the module docstring). :meth:`start` brings it up."""

    def __init__(self, bin_dir: Path | None = None, durable: bool = True):
        bin_dir = bin_dir or find_pg_bin()
        if bin_dir is None:
            raise ConfigError("PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH: "
                              "apt-get install postgresql")
        self.bin = Path(bin_dir)
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="shadowcam-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self._n = itertools.count(1)
        self.started = False
        if self.as_root:
            if not shutil.which("runuser"):
                shutil.rmtree(self.root, ignore_errors=True)
                raise ConfigError("running as root needs runuser to start PostgreSQL as the postgres user")
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
            os.chmod(self.root, 0o755)

    @classmethod
    def start_new(cls, bin_dir: Path | None = None, durable: bool = True) -> ThrowawayPostgres:
        return cls(bin_dir, durable).start()

    @property
    def version(self) -> str:
        """The server's major version (the ``/usr/lib/postgresql/<version>/bin`` it runs from)."""
        return self.bin.parent.name

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)

    def start(self) -> ThrowawayPostgres:
        """``initdb`` and ``pg_ctl start``; waits until the server accepts connections. Raises ``RuntimeError`` with
        the tail of the server's output when it does not start (the directory is removed)."""
        try:
            subprocess.run(self._cmd(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                     "--no-sync"), check=True, capture_output=True, timeout=120)
            opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1"
            if not self.durable:
                opts += " -c fsync=off -c full_page_writes=off"
            subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log.txt"),
                                     "-w", "-t", "60", "start"), check=True, capture_output=True, timeout=90)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            out = (getattr(e, "stderr", None) or b"").decode(errors="replace")
            log = self.root / "log.txt"
            if log.exists():
                out += log.read_text(errors="replace")
            self.stop()
            raise RuntimeError(f"PostgreSQL ({self.bin}) did not start: {out[-2000:]}") from None
        self.started = True
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self, prefix: str = "db") -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"{prefix}_{next(self._n)}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (immediate shutdown: it holds nothing worth keeping) and remove its directory."""
        if self.data.exists():
            subprocess.run(self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                           check=False, capture_output=True, timeout=60)
        self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self if self.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
