"""A real, throw-away PostgreSQL server for tests (Debian's ``postgresql`` package).

The server is :class:`pipeline.pgserver.ThrowawayPostgres` (``initdb`` + ``pg_ctl start`` in a fresh temporary
directory on a free TCP port on 127.0.0.1, run as the ``postgres`` user when the tests run as root), started
without fsync: tests need a real server, not a durable one.

Use the session-scoped fixture::

    from tests.helpers.postgres import postgres_server  # noqa: F401  (pytest finds it by name)

    def test_x(postgres_server):
        url = postgres_server.new_database()   # postgresql://postgres@127.0.0.1:PORT/test_1_...

It skips (with the reason) only when the PostgreSQL binaries are not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.pgserver import ThrowawayPostgres, find_pg_bin

__all__ = ["PostgresServer", "find_pg_bin", "postgres_server"]


class PostgresServer(ThrowawayPostgres):
    """A non-durable :class:`ThrowawayPostgres` whose databases are named ``test_N_...``."""

    def __init__(self, bin_dir: Path):
        super().__init__(bin_dir, durable=False)

    def new_database(self, prefix: str = "test") -> str:
        return super().new_database(prefix)


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()
