"""The state store (SQLAlchemy Core): what every replica and every restart must see.

Methods are blocking; services call them through ``BlockingRunner``. Updates that
decide who acts on a row (claiming an idle user for release) are conditional UPDATEs,
so two replicas never act twice on one user.
"""
import json
import os
import time
from typing import Any, Dict, List, Optional

import sqlalchemy as sa
from sqlalchemy import event

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("provisioner", sa.String(32), nullable=False),
    # ready: the database exists; releasing: someone has claimed it for release.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("data_source", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),  # JSON: the backend's names for it
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),
    sa.Column("status_changed_at", sa.Float, nullable=False),
)

READY, RELEASING = "ready", "releasing"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _row(r: Any) -> Dict[str, Any]:
    d = dict(r._mapping)
    d["resource"] = json.loads(d["resource"])
    return d


class Store:
    """Users and their databases, in any SQLAlchemy-supported database."""

    def __init__(self, url: str):
        self.url = sa.engine.make_url(url)
        if self.url.drivername == "mysql":
            self.url = self.url.set(drivername="mysql+pymysql")
        if self.url.get_backend_name() == "sqlite" and self.url.database:
            os.makedirs(os.path.dirname(os.path.abspath(self.url.database)), exist_ok=True)
        # hide_parameters: rows hold data sources with passwords; errors must not print them.
        self.engine = sa.create_engine(self.url, hide_parameters=True, pool_pre_ping=True)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

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

    def idle_candidates(self, idle_before: float, stale_before: float) -> List[str]:
        """Users idle since ``idle_before``, or whose release was abandoned before ``stale_before``."""
        cond = sa.or_(
            sa.and_(users.c.status == READY, users.c.last_seen_at < idle_before),
            sa.and_(users.c.status == RELEASING, users.c.status_changed_at < stale_before),
        )
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(users.c.user_id).where(cond)).scalars())

    def delete_user(self, user_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(users.delete().where(users.c.user_id == user_id))
