"""Per-user databases on an existing MySQL/MariaDB server reached with admin rights."""
import logging
import secrets
from typing import Any, Dict, Optional

import sqlalchemy as sa

from ..errors import Unavailable
from .base import Provisioned, Provisioner, safe_name

log = logging.getLogger(__name__)

# MySQL 5.7 caps user names at 32 characters and database names at 64.
USER_NAME_MAX, DB_NAME_MAX = 32, 64


def sqlflow_data_source(user: str, password: str, host: str, port: int, database: str) -> str:
    """The MySQL data source in the form SQLFlow understands."""
    return f"mysql://{user}:{password}@tcp({host}:{port})/{database}?maxAllowedPacket=0"


def admin_url(dsn: str) -> sa.engine.URL:
    url = sa.engine.make_url(dsn)
    if url.get_backend_name() != "mysql":
        raise ValueError("--mysql_dsn must be a mysql:// URL")
    return url.set(drivername="mysql+pymysql")


class MysqlProvisioner(Provisioner):
    """Creates a database and a user with a random password granted only on it."""

    name = "mysql"

    def __init__(self, runner, dsn: str, public_host: Optional[str] = None):
        super().__init__(runner)
        url = admin_url(dsn)
        # hide_parameters: the passwords we bind must never reach an error message or log.
        self.engine = sa.create_engine(url, hide_parameters=True, pool_pre_ping=True,
                                       pool_recycle=3600)
        host, port = url.host or "127.0.0.1", url.port or 3306
        if public_host:
            host, _, given_port = public_host.partition(":")
            port = int(given_port) if given_port else port
        self.public_host, self.public_port = host, port

    def names_for(self, user_id: str) -> Dict[str, str]:
        return {"database": safe_name(user_id, "sfp_", DB_NAME_MAX),
                "user": safe_name(user_id, "sfp_", USER_NAME_MAX)}

    async def provision(self, user_id: str) -> Provisioned:
        names = self.names_for(user_id)
        password = secrets.token_urlsafe(24)  # 32 characters from [A-Za-z0-9_-]
        await self._admin(self._create, names, password)
        return Provisioned(
            data_source=sqlflow_data_source(names["user"], password, self.public_host,
                                            self.public_port, names["database"]),
            resource=names,
        )

    def _create(self, conn: sa.Connection, names: Dict[str, str], password: str) -> None:
        db, user = names["database"], names["user"]
        conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        # pymysql formats every statement SQLAlchemy hands it, so '%' is written '%%'.
        # IF NOT EXISTS + ALTER: a half-finished earlier attempt is completed, not an error.
        conn.exec_driver_sql(f"CREATE USER IF NOT EXISTS '{user}'@'%%' IDENTIFIED BY %s",
                             (password,))
        conn.exec_driver_sql(f"ALTER USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        conn.exec_driver_sql(f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%%'")

    async def release(self, user_id: str, resource: Dict[str, Any]) -> None:
        names = {**self.names_for(user_id), **resource}
        await self._admin(self._drop, names)

    def _drop(self, conn: sa.Connection, names: Dict[str, str]) -> None:
        user = names["user"]
        conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
        # Dropping a user leaves its open sessions alive; end them too.
        sessions = conn.exec_driver_sql(
            "SELECT id FROM information_schema.processlist WHERE user = %s", (user,)).scalars()
        for session_id in list(sessions):
            try:
                conn.exec_driver_sql(f"KILL CONNECTION {int(session_id)}")
            except sa.exc.DBAPIError:
                pass  # it ended by itself meanwhile
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{names['database']}`")

    async def check(self) -> None:
        await self._admin(lambda conn: conn.exec_driver_sql("SELECT 1"))

    async def _admin(self, fn, *args: Any) -> None:
        await self.runner.run(self._in_transaction, fn, *args)

    def _in_transaction(self, fn, *args: Any) -> None:
        try:
            with self.engine.begin() as conn:
                fn(conn, *args)
        except sa.exc.DBAPIError as e:
            # The driver's own message only (no SQL, no parameters), for logs and clients.
            reason = e.orig.args[-1] if e.orig is not None and e.orig.args else type(e).__name__
            log.warning("MySQL provisioner: %s", reason)
            raise Unavailable(f"MySQL server error: {reason}") from None

    def close(self) -> None:
        self.engine.dispose()
