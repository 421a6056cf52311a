"""Versioned DDL for the state store: every schema change is a numbered step, run once
per database by whichever replica gets there first.

``migrate(engine)`` (called by ``Store(url)``) takes a database-wide lock, reads the
versions recorded in ``schema_version``, runs the missing steps in order, records each,
and commits. The lock makes replicas that start at once safe: the second one waits, then
finds nothing left to do. It is ``pg_advisory_xact_lock`` on PostgreSQL, ``GET_LOCK`` on
MySQL/MariaDB and ``BEGIN IMMEDIATE`` (the write lock) on sqlite. PostgreSQL and sqlite
run all steps in one transaction; MySQL commits each DDL statement at once, so a step
there must be safe to run again after a crash (``add_column`` is).

Version 1 is the schema of the releases before migrations existed: on a database that
already has those tables it creates nothing and only records itself.

Adding a migration (say a lease on jobs) is two edits:

1. store.py: add ``sa.Column("lease_until", sa.Double)`` to the ``jobs`` table (the
   shape queries use);
2. here: write the step and append it to ``MIGRATIONS``::

       def _v2_job_leases(conn: sa.Connection) -> None:
           add_column(conn, "jobs", sa.Column("lease_until", sa.Double))

       MIGRATIONS = [(1, _v1_users_and_jobs), (2, _v2_job_leases)]

A NOT NULL column needs a ``server_default`` for the rows already there. Released steps
never change; tests/test_store_backends.py checks on every backend that the migrated
schema has exactly store.py's columns.
"""
import contextlib
import logging
import time
import zlib
from typing import Callable, Iterator, List, Tuple

import sqlalchemy as sa

_meta = sa.MetaData()
schema_version = sa.Table(
    "schema_version", _meta,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 60


def add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    """``ALTER TABLE table ADD COLUMN`` in the connection's dialect; nothing if the column
    is already there (a MySQL step cut short after its DDL may run again)."""
    if column.name in {c["name"] for c in sa.inspect(conn).get_columns(table)}:
        return
    sa.Table(table, sa.MetaData(), column)  # the compiler wants the column in a table
    spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    quoted = conn.dialect.identifier_preparer.quote(table)
    conn.exec_driver_sql(f"ALTER TABLE {quoted} ADD COLUMN {spec}")


def _v1_users_and_jobs(conn: sa.Connection) -> None:
    """The schema as released before migrations (frozen: never edit)."""
    meta = sa.MetaData()
    sa.Table(
        "users", meta,
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("provisioner", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data_source", sa.Text, nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("last_seen_at", sa.Double, nullable=False),
        sa.Column("status_changed_at", sa.Double, nullable=False),
    )
    sa.Table(
        "jobs", meta,
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False, index=True),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("meta", sa.Text),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("last_fetched_at", sa.Double, nullable=False),
        sa.Column("fetch_timeout_s", sa.Double, nullable=False),
        sa.Column("replica", sa.String(255), nullable=False),
    )
    meta.create_all(conn, checkfirst=True)


def _v2_provisioning_claims(conn: sa.Connection) -> None:
    """A provisioning row names its claimant and expiry (crash-safe provisioning)."""
    add_column(conn, "users", sa.Column("claimed_by", sa.String(255)))
    add_column(conn, "users", sa.Column("claim_expires_at", sa.Double))


def _v3_shared_output_and_leases(conn: sa.Connection) -> None:
    """Job output shipped to the store and replica leases (any replica answers any job)."""
    add_column(conn, "jobs", sa.Column("output_size", sa.BigInteger))
    meta = sa.MetaData()
    sa.Table(
        "job_output", meta,
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary(length=1 << 24), nullable=False),
    )
    sa.Table(
        "replicas", meta,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("boot", sa.String(32), nullable=False),
        sa.Column("lease_until", sa.Double, nullable=False),
    )
    meta.create_all(conn, checkfirst=True)


def _v4_jobs_by_age(conn: sa.Connection) -> None:
    """An index on jobs.created_at: listings page jobs newest first (the dashboard reads
    one page of 10,000 jobs)."""
    if "ix_jobs_created_at" in {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}:
        return  # a MySQL step cut short after its DDL runs again
    jobs = sa.Table("jobs", sa.MetaData(), sa.Column("created_at", sa.Double))
    sa.Index("ix_jobs_created_at", jobs.c.created_at).create(conn)


Step = Callable[[sa.Connection], None]
MIGRATIONS: List[Tuple[int, Step]] = [
    (1, _v1_users_and_jobs),
    (2, _v2_provisioning_claims),
    (3, _v3_shared_output_and_leases),
    (4, _v4_jobs_by_age),
]


@contextlib.contextmanager
def _exclusive(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection holding the database's migration lock until the block ends."""
    backend = engine.dialect.name
    with engine.connect() as conn:
        if backend == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits up to the busy timeout
            yield conn
        elif backend == "postgresql":
            key = zlib.crc32(b"sqlflow_playground.migrations")  # per database, till commit
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            yield conn
        elif backend in ("mysql", "mariadb"):
            # GET_LOCK names are server-wide: one lock per database.
            name = "sfp_migrate_%08x" % zlib.crc32((engine.url.database or "").encode())
            got = conn.execute(sa.select(sa.func.get_lock(name, LOCK_TIMEOUT_S))).scalar()
            if got != 1:
                raise RuntimeError(f"state store: no migration lock within {LOCK_TIMEOUT_S}s")
            try:
                yield conn
            finally:
                conn.execute(sa.select(sa.func.release_lock(name)))
        else:
            raise RuntimeError(f"state store: no migration lock for {backend}")


def migrate(engine: sa.Engine) -> Tuple[int, int]:
    """Bring the schema up to the last step; returns (version before, version after)."""
    with _exclusive(engine) as conn:
        schema_version.create(conn, checkfirst=True)
        done = set(conn.execute(sa.select(schema_version.c.version)).scalars())
        applied = []
        for version, step in MIGRATIONS:
            if version not in done:
                step(conn)
                conn.execute(schema_version.insert().values(version=version,
                                                            applied_at=time.time()))
                applied.append(version)
        conn.commit()
    before, after = max(done, default=0), max(done | set(applied))
    if applied:  # the backend's name only: the URL may hold a password
        log.info("state store (%s): schema migrated from version %d to %d",
                 engine.dialect.name, before, after)
    return before, after
