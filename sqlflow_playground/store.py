"""The state store (SQLAlchemy Core): what every replica and every restart must see.

Methods are blocking; services call them through ``BlockingRunner``. Updates that
decide who acts on a row (claiming an idle user for release) are conditional UPDATEs,
so two replicas never act twice on one user.

Backends: sqlite (a file in the state directory, created 0600), MySQL/MariaDB (PyMySQL)
and PostgreSQL (psycopg 3); ``mysql://`` and ``postgresql://`` URLs get those drivers.
The tables below are the shape queries use; the schema itself is created and changed by
``migrations`` (a schema change here needs a migration step there).
"""
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa
from sqlalchemy import event

from . import migrations
from .statedir import create_private_file

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("provisioner", sa.String(32), nullable=False),
    # provisioning: a replica is creating it; ready: it exists; releasing: being dropped.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("data_source", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),  # JSON: the backend's names for it
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("last_seen_at", sa.Double, nullable=False),
    sa.Column("status_changed_at", sa.Double, nullable=False),
    # Who holds the row while it is provisioning ("replica/boot") and until when: a claim
    # past its expiry, or one of a previous life of this replica, is rolled back.
    sa.Column("claimed_by", sa.String(255)),
    sa.Column("claim_expires_at", sa.Double),
)

PROVISIONING, READY, RELEASING = "provisioning", "ready", "releasing"

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("task_type", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON
    sa.Column("meta", sa.Text),  # JSON: what the plugin needs to find the work again
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("outputs", sa.Text),  # JSON, once finished
    sa.Column("created_at", sa.Double, nullable=False, index=True),  # newest first
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("last_fetched_at", sa.Double, nullable=False),
    sa.Column("fetch_timeout_s", sa.Double, nullable=False),
    sa.Column("replica", sa.String(255), nullable=False, default=""),  # who started it
    # For jobs that run inside a replica (process, sql): how many bytes of output it
    # shipped to ``job_output`` once all of it is there; NULL while more may come.
    sa.Column("output_size", sa.BigInteger),
)

# The output of jobs that run inside one replica, shipped in chunks so that every replica
# can serve it: bytes [offset, offset + size) of the job's output file.
job_output = sa.Table(
    "job_output",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary(length=1 << 24), nullable=False),
)

# Each live replica renews its lease; the jobs of one whose lease ran out are ended.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("boot", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.Double, nullable=False),
)

ACTIVE = ("PENDING", "RUNNING")

# URL schemes without a driver -> the driver installed with this package.
_DRIVERS = {"mysql": "mysql+pymysql", "postgresql": "postgresql+psycopg",
            "postgres": "postgresql+psycopg"}


def normalize_url(url: str) -> sa.URL:
    """The SQLAlchemy URL, with this package's driver for a bare ``mysql://`` or
    ``postgresql://`` (``postgres://``)."""
    parsed = sa.engine.make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")  # first: switching to WAL may have to wait
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _same(column: sa.Column, value: Any) -> Any:
    """``column = value``, where a NULL equals NULL."""
    return column.is_(None) if value is None else column == value


def _row(r: Any) -> Dict[str, Any]:
    d = dict(r._mapping)
    d["resource"] = json.loads(d["resource"])
    return d


def _job(r: Any) -> Dict[str, Any]:
    d = dict(r._mapping)
    for key in ("spec", "meta", "outputs"):
        d[key] = json.loads(d[key]) if d[key] is not None else None
    return d


def _encode_job(values: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (json.dumps(v) if k in ("spec", "meta", "outputs") and v is not None else v)
            for k, v in values.items()}


class Store:
    """Users and their databases, in any SQLAlchemy-supported database."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        database = self.url.database
        if self.url.get_backend_name() == "sqlite" and database and database != ":memory:" \
                and not self.url.query.get("uri"):
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            create_private_file(database)  # 0600 before sqlite opens it
        # hide_parameters: rows hold data sources with passwords; errors must not print them.
        # pre-ping guards against a database server that dropped idle connections; a
        # sqlite file has none to drop, and the ping would cost every request a query.
        self.engine = sa.create_engine(self.url, hide_parameters=True,
                                       pool_pre_ping=self.url.get_backend_name() != "sqlite")
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrations.migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- users -------------------------------------------------------------

    def get_user(self, user_id: str) -> Optional[Dict[str, Any]]:
        with self.engine.connect() as conn:
            r = conn.execute(users.select().where(users.c.user_id == user_id)).first()
        return _row(r) if r else None

    def list_users(self) -> List[Dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(users.select().order_by(users.c.user_id)).fetchall()
        return [_row(r) for r in rows]

    def save_user(self, user_id: str, provisioner: str, data_source: str,
                  resource: Dict[str, Any], now: float) -> Dict[str, Any]:
        """Record a freshly provisioned database, replacing any stale row for the user."""
        values = dict(user_id=user_id, provisioner=provisioner, status=READY,
                      data_source=data_source, resource=json.dumps(resource),
                      created_at=now, last_seen_at=now, status_changed_at=now)
        with self.engine.begin() as conn:
            conn.execute(users.delete().where(users.c.user_id == user_id))
            conn.execute(users.insert().values(**values))
        return {**values, "resource": resource}

    def begin_provisioning(self, user_id: str, provisioner: str, now: float,
                           claimant: str, expires_at: float) -> bool:
        """Claim the right to provision ``user_id``: True for exactly one caller across all
        replicas (the row's primary key decides). The row names its claimant and expiry."""
        try:
            with self.engine.begin() as conn:
                conn.execute(users.insert().values(
                    user_id=user_id, provisioner=provisioner, status=PROVISIONING,
                    data_source="", resource="{}", created_at=now, last_seen_at=now,
                    status_changed_at=now, claimed_by=claimant, claim_expires_at=expires_at))
            return True
        except sa.exc.IntegrityError:
            return False

    def take_over(self, seen: Dict[str, Any], status: str, claimant: str, expires_at: float,
                  now: float) -> bool:
        """Replace the claim on a row that is still exactly as ``seen`` (same status,
        claimant and expiry): True for exactly one of several callers."""
        stmt = (users.update().where(users.c.user_id == seen["user_id"])
                .where(users.c.status == seen["status"])
                .where(_same(users.c.claimed_by, seen.get("claimed_by")))
                .where(_same(users.c.claim_expires_at, seen.get("claim_expires_at")))
                .values(status=status, claimed_by=claimant, claim_expires_at=expires_at,
                        status_changed_at=now))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def expire_claim(self, user_id: str, claimant: str) -> None:
        """Give up ``claimant``'s claim at once (its work failed half-way): whoever comes
        next rolls the row back."""
        with self.engine.begin() as conn:
            conn.execute(users.update().where(users.c.user_id == user_id)
                         .where(users.c.claimed_by == claimant)
                         .values(claim_expires_at=0.0))

    def provisioning_claims(self) -> List[Dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(users.select().where(users.c.status == PROVISIONING)).fetchall()
        return [_row(r) for r in rows]

    def touch_users(self, seen: Dict[str, float]) -> None:
        """Move ``last_seen_at`` forward for many users in one transaction."""
        if not seen:
            return
        stmt = (users.update()
                .where(users.c.user_id == sa.bindparam("uid"))
                .where(users.c.last_seen_at < sa.bindparam("ts"))
                .values(last_seen_at=sa.bindparam("ts")))
        with self.engine.begin() as conn:
            conn.execute(stmt, [{"uid": u, "ts": t} for u, t in seen.items()])

    def claim_for_release(self, user_id: str, idle_before: Optional[float] = None,
                          stale_before: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """Atomically mark a user ``releasing``; return the row if this caller won the claim.

        ``idle_before`` restricts the claim to users last seen before that time (the idle
        reaper); ``stale_before`` lets a claim take over a release abandoned by a crash.
        """
        now = time.time()
        claimable = users.c.status == READY
        if stale_before is not None:
            claimable = sa.or_(claimable, sa.and_(users.c.status == RELEASING,
                                                  users.c.status_changed_at < stale_before))
        stmt = users.update().where(users.c.user_id == user_id).where(claimable)
        if idle_before is not None:
            stmt = stmt.where(users.c.last_seen_at < idle_before)
        with self.engine.begin() as conn:
            won = conn.execute(stmt.values(status=RELEASING, status_changed_at=now)).rowcount == 1
            if not won:
                return None
            r = conn.execute(users.select().where(users.c.user_id == user_id)).first()
        return _row(r)

    def idle_candidates(self, idle_before: float, stale_before: float,
                        now: Optional[float] = None) -> List[str]:
        """Users idle since ``idle_before``, whose release was abandoned before
        ``stale_before``, or whose provisioning claim expired."""
        cond = sa.or_(
            sa.and_(users.c.status == READY, users.c.last_seen_at < idle_before),
            sa.and_(users.c.status == RELEASING, users.c.status_changed_at < stale_before),
            sa.and_(users.c.status == PROVISIONING, sa.or_(
                users.c.claim_expires_at < (time.time() if now is None else now),
                sa.and_(users.c.claim_expires_at.is_(None),
                        users.c.status_changed_at < stale_before))),
        )
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(users.c.user_id).where(cond)).scalars())

    def delete_user(self, user_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(users.delete().where(users.c.user_id == user_id))

    # -- jobs ----------------------------------------------------------------

    def insert_job(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(**_encode_job(values)))

    def get_job(self, token: str) -> Optional[Dict[str, Any]]:
        with self.engine.connect() as conn:
            r = conn.execute(jobs.select().where(jobs.c.token == token)).first()
        return _job(r) if r else None

    def update_job(self, token: str, only_if_active: bool = False, **values: Any) -> bool:
        """Update one job; with ``only_if_active``, only while it is PENDING or RUNNING,
        so of two replicas finishing one job, exactly one wins."""
        stmt = jobs.update().where(jobs.c.token == token)
        if only_if_active:
            stmt = stmt.where(jobs.c.status.in_(ACTIVE))
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(**_encode_job(values))).rowcount == 1

    def list_jobs(self, user_id: Optional[str] = None, status: Optional[str] = None,
                  limit: int = 1000) -> List[Dict[str, Any]]:
        stmt = jobs.select().order_by(jobs.c.created_at.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(jobs.c.user_id == user_id)
        if status is not None:
            stmt = stmt.where(jobs.c.status == status)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def active_jobs(self, user_id: Optional[str] = None) -> List[Dict[str, Any]]:
        stmt = jobs.select().where(jobs.c.status.in_(ACTIVE))
        if user_id is not None:
            stmt = stmt.where(jobs.c.user_id == user_id)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def count_active_jobs(self, user_id: Optional[str] = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status.in_(ACTIVE))
        if user_id is not None:
            stmt = stmt.where(jobs.c.user_id == user_id)
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()

    def touch_jobs(self, fetched: Dict[str, float]) -> None:
        if not fetched:
            return
        stmt = (jobs.update()
                .where(jobs.c.token == sa.bindparam("tok"))
                .where(jobs.c.last_fetched_at < sa.bindparam("ts"))
                .values(last_fetched_at=sa.bindparam("ts")))
        with self.engine.begin() as conn:
            conn.execute(stmt, [{"tok": t, "ts": ts} for t, ts in fetched.items()])

    def abandoned_jobs(self, now: float) -> List[Dict[str, Any]]:
        """Active jobs whose owner has not fetched them for their ``fetch_timeout_s``."""
        stmt = jobs.select().where(jobs.c.status.in_(ACTIVE)).where(
            jobs.c.last_fetched_at + jobs.c.fetch_timeout_s < now)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def expired_jobs(self, finished_before: float) -> List[Dict[str, Any]]:
        stmt = jobs.select().where(jobs.c.status.notin_(ACTIVE)).where(
            jobs.c.finished_at < finished_before)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def job_tokens(self) -> List[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(jobs.c.token)).scalars())

    def known_job_tokens(self, tokens: List[str]) -> set:
        """Which of ``tokens`` have a row (asked in chunks, however many there are)."""
        known = set()
        with self.engine.connect() as conn:
            for i in range(0, len(tokens), 500):
                known.update(conn.execute(sa.select(jobs.c.token).where(
                    jobs.c.token.in_(tokens[i:i + 500]))).scalars())
        return known

    def delete_job(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.delete().where(jobs.c.token == token))
            conn.execute(job_output.delete().where(job_output.c.token == token))

    def job_tokens_of(self, user_id: str) -> List[str]:
        """The tokens of every job of ``user_id`` (only that column: specs may be large)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(jobs.c.token).where(
                jobs.c.user_id == user_id)).scalars())

    def job_statuses(self, tokens: List[str]) -> Dict[str, str]:
        """{token: status} of those of ``tokens`` that have a row."""
        found: Dict[str, str] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(tokens), 500):
                rows = conn.execute(sa.select(jobs.c.token, jobs.c.status).where(
                    jobs.c.token.in_(tokens[i:i + 500])))
                found.update((token, status) for token, status in rows)
        return found

    # -- pages (the dashboard: bounded answers however many rows there are) ------

    def count_users_by_status(self) -> Dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(users.c.status, sa.func.count())
                                .group_by(users.c.status)).all()
        return {status: n for status, n in rows}

    def count_jobs_by_status(self, user_id: Optional[str] = None) -> Dict[str, int]:
        stmt = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        if user_id is not None:
            stmt = stmt.where(jobs.c.user_id == user_id)
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(stmt).all()}

    def users_page(self, offset: int, limit: int, status: Optional[str] = None,
                   prefix: Optional[str] = None) -> Tuple[List[Dict[str, Any]], int]:
        """(``limit`` users from ``offset`` in user_id order, how many match in all)."""
        cond = sa.true()
        if status is not None:
            cond = sa.and_(cond, users.c.status == status)
        if prefix:
            cond = sa.and_(cond, users.c.user_id.startswith(prefix, autoescape=True))
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(users)
                                 .where(cond)).scalar_one()
            rows = conn.execute(users.select().where(cond).order_by(users.c.user_id)
                                .offset(offset).limit(limit)).fetchall()
        return [_row(r) for r in rows], total

    JOB_PAGE_COLUMNS = ("token", "user_id", "task_type", "version", "status", "message",
                        "created_at", "started_at", "finished_at", "replica")

    def jobs_page(self, offset: int, limit: int, user_id: Optional[str] = None,
                  status: Optional[str] = None) -> Tuple[List[Dict[str, Any]], int]:
        """(``limit`` jobs from ``offset``, newest first, without their spec, meta and
        outputs (they may be large); how many match in all)."""
        cond = sa.true()
        if user_id is not None:
            cond = sa.and_(cond, jobs.c.user_id == user_id)
        if status is not None:
            cond = sa.and_(cond, jobs.c.status == status)
        columns = [jobs.c[name] for name in self.JOB_PAGE_COLUMNS]
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                 .where(cond)).scalar_one()
            # The page's tokens first: sorting narrow (created_at, token) pairs costs half
            # of sorting whole rows; then those rows alone.
            tokens = list(conn.execute(sa.select(jobs.c.token).where(cond)
                                       .order_by(jobs.c.created_at.desc(), jobs.c.token)
                                       .offset(offset).limit(limit)).scalars())
            rows = conn.execute(sa.select(*columns).where(jobs.c.token.in_(tokens))
                                ).fetchall() if tokens else []
        order = {token: i for i, token in enumerate(tokens)}
        return sorted((dict(r._mapping) for r in rows), key=lambda r: order[r["token"]]), total

    def jobs_per_minute(self, since: float) -> Dict[int, int]:
        """{minute after ``since`` (0, 1, …): jobs created in it}, counted by the database."""
        minutes = (jobs.c.created_at - since) / 60
        if self.engine.dialect.name == "sqlite":
            minute = sa.cast(minutes, sa.Integer)  # truncates, as floor for values >= 0
        else:
            minute = sa.cast(sa.func.floor(minutes), sa.Integer)  # CAST alone rounds there
        minute = minute.label("minute")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(minute, sa.func.count())
                                .where(jobs.c.created_at >= since).group_by(minute)).all()
        return {int(m): n for m, n in rows}

    # -- job output ------------------------------------------------------------

    def append_output(self, chunks: List[tuple]) -> None:
        """Store ``(token, offset, data)`` chunks, all in one transaction."""
        if not chunks:
            return
        with self.engine.begin() as conn:
            conn.execute(job_output.insert(), [
                {"token": t, "offset": o, "size": len(d), "data": d} for t, o, d in chunks])

    def shipped_size(self, token: str) -> int:
        """How many bytes of the job's output are in the store."""
        stmt = (sa.select(job_output.c.offset + job_output.c.size)
                .where(job_output.c.token == token)
                .order_by(job_output.c.offset.desc()).limit(1))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar() or 0

    def read_output(self, token: str, start: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the job's shipped output from byte ``start`` on."""
        end = start + max_bytes
        stmt = (sa.select(job_output.c.offset, job_output.c.data)
                .where(job_output.c.token == token)
                .where(job_output.c.offset < end)
                .where(job_output.c.offset + job_output.c.size > start)
                .order_by(job_output.c.offset))
        parts, at = [], start
        with self.engine.connect() as conn:
            for offset, data in conn.execute(stmt):
                if offset > at:
                    break  # a gap: never, but never read past one either
                parts.append(bytes(data)[max(0, start - offset):end - offset])
                at = offset + len(data)
        return b"".join(parts)

    # -- replica leases --------------------------------------------------------

    def renew_lease(self, name: str, boot: str, until: float) -> None:
        with self.engine.begin() as conn:
            if conn.execute(replicas.update().where(replicas.c.name == name)
                            .values(boot=boot, lease_until=until)).rowcount == 1:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(replicas.insert().values(name=name, boot=boot, lease_until=until))
        except sa.exc.IntegrityError:  # inserted meanwhile by an earlier life: take it
            with self.engine.begin() as conn:
                conn.execute(replicas.update().where(replicas.c.name == name)
                             .values(boot=boot, lease_until=until))

    def drop_lease(self, name: str, boot: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(replicas.delete().where(replicas.c.name == name)
                         .where(replicas.c.boot == boot))

    def jobs_of_lost_replicas(self, now: float, kinds: List[tuple]) -> List[Dict[str, Any]]:
        """Active jobs of the ``(task_type, version)`` kinds whose replica's lease ran out
        before ``now``, or that has no lease at all (it stopped and dropped it)."""
        live = sa.select(replicas.c.name).where(replicas.c.lease_until >= now)
        kind = sa.or_(*(sa.and_(jobs.c.task_type == t, jobs.c.version == v) for t, v in kinds))
        stmt = (jobs.select().where(jobs.c.status.in_(ACTIVE)).where(kind)
                .where(jobs.c.replica.notin_(live)))
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def lease_of(self, name: str) -> Optional[Dict[str, Any]]:
        with self.engine.connect() as conn:
            r = conn.execute(replicas.select().where(replicas.c.name == name)).first()
        return dict(r._mapping) if r else None
