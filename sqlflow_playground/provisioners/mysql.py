"""Per-user databases on an existing MySQL/MariaDB server reached with admin rights.

Each tenant account is ``'USER'@'HOST'`` with HOST from ``--mysql_tenant_host`` (checked
against a strict pattern at start; bound as a string literal in every statement) and
``MAX_USER_CONNECTIONS`` from ``--mysql_max_user_connections``, so one tenant cannot take
all of the server's connections.

Two addresses of the MySQL server: the one this gateway (and the jobs it runs) connects
through, the host of ``--mysql_dsn``; and the one written into the data sources users get,
``--mysql_public_host`` (default: the same). The store keeps a data source with the
internal address, and both are rewritten from the current flags whenever a data source is
read (``public_data_source``, ``internal_data_source``), so a corrected flag takes effect
at the next start, for databases made before too.
"""
import logging
import re
import secrets
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa

from ..errors import Unavailable
from .base import Provisioned, Provisioner, safe_name

log = logging.getLogger(__name__)

# MySQL 5.7 caps user names at 32 characters and database names at 64.
USER_NAME_MAX, DB_NAME_MAX = 32, 64
# The host part of an account: a name, an IPv4/IPv6 address, a netmask (10.0.0.0/255.0.0.0)
# or a pattern with the wildcards % and _. No quotes, spaces or backslashes.
TENANT_HOST_RE = re.compile(r"^[A-Za-z0-9%_.:/-]{1,255}$")


def sqlflow_data_source(user: str, password: str, host: str, port: int, database: str) -> str:
    """The MySQL data source in the form SQLFlow understands."""
    return f"mysql://{user}:{password}@tcp({host}:{port})/{database}?maxAllowedPacket=0"


# mysql://USER:PASS@tcp(HOST:PORT)/DB?...: the parts around the address. The password is
# greedy up to the last "@tcp(", as plugins/sql.py's MYSQL_RE reads it.
_ADDRESS_RE = re.compile(r"^(?P<head>mysql://[^:@/]*:.*@tcp\()(?P<address>[^()]*)(?P<tail>\)/.*)$",
                         re.DOTALL)


def with_address(data_source: str, host: str, port: int) -> str:
    """``data_source`` (SQLFlow's MySQL form) pointing at ``host:port``; any other
    data source unchanged."""
    m = _ADDRESS_RE.match(data_source)
    return f"{m['head']}{host}:{port}{m['tail']}" if m else data_source


def without_address(data_source: str) -> str:
    """``data_source`` with its address left out (what proves who its holder is: the
    account, its password and the database); any other data source unchanged."""
    m = _ADDRESS_RE.match(data_source)
    return f"{m['head']}{m['tail']}" if m else data_source


def split_host_port(address: str, default_port: int) -> Tuple[str, int]:
    host, _, port = address.partition(":")
    return host, int(port) if port else default_port


def admin_url(dsn: str) -> sa.engine.URL:
    url = sa.engine.make_url(dsn)
    if url.get_backend_name() != "mysql":
        raise ValueError("--mysql_dsn must be a mysql:// URL")
    return url.set(drivername="mysql+pymysql")


class MysqlProvisioner(Provisioner):
    """Creates a database and a user with a random password granted only on it."""

    name = "mysql"

    def __init__(self, runner, dsn: str, public_host: Optional[str] = None,
                 max_user_connections: int = 20, tenant_host: str = "%"):
        super().__init__(runner)
        if not isinstance(tenant_host, str) or not TENANT_HOST_RE.match(tenant_host):
            raise ValueError("--mysql_tenant_host must be a MySQL host pattern made of letters, "
                             "digits and . : / - _ %, e.g. 10.0.% or gateway.internal")
        if isinstance(max_user_connections, bool) or not isinstance(max_user_connections, int) \
                or max_user_connections < 0:
            raise ValueError("--mysql_max_user_connections must be 0 or a positive integer")
        self.tenant_host, self.max_user_connections = tenant_host, max_user_connections
        self._limits_applied = False
        url = admin_url(dsn)
        # hide_parameters: the passwords we bind must never reach an error message or log.
        self.engine = sa.create_engine(url, hide_parameters=True, pool_pre_ping=True,
                                       pool_recycle=3600)
        # Jobs run by this gateway connect where it does; users get the public name.
        self.internal_host, self.internal_port = url.host or "127.0.0.1", url.port or 3306
        self.public_host, self.public_port = self.internal_host, self.internal_port
        if public_host:
            try:
                self.public_host, self.public_port = split_host_port(public_host,
                                                                     self.internal_port)
            except ValueError:
                raise ValueError("--mysql_public_host must be HOST or HOST:PORT") from None
            if not re.match(r"^[A-Za-z0-9_.-]{1,255}$", self.public_host):
                raise ValueError("--mysql_public_host must be HOST or HOST:PORT")

    def names_for(self, user_id: str) -> Dict[str, str]:
        return {"database": safe_name(user_id, "sfp_", DB_NAME_MAX),
                "user": safe_name(user_id, "sfp_", USER_NAME_MAX), "host": self.tenant_host}

    async def provision(self, user_id: str) -> Provisioned:
        names = self.names_for(user_id)
        password = secrets.token_urlsafe(24)  # 32 characters from [A-Za-z0-9_-]
        await self._admin(self._create, names, password)
        return Provisioned(
            data_source=sqlflow_data_source(names["user"], password, self.internal_host,
                                            self.internal_port, names["database"]),
            resource=names,
        )

    def public_data_source(self, data_source: str) -> str:
        return with_address(data_source, self.public_host, self.public_port)

    def internal_data_source(self, data_source: str) -> str:
        return with_address(data_source, self.internal_host, self.internal_port)

    def _create(self, conn: sa.Connection, names: Dict[str, str], password: str) -> None:
        db, account = names["database"], (names["user"], names["host"])
        limit = f"WITH MAX_USER_CONNECTIONS {int(self.max_user_connections)}"
        conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        # User and host are bound as string literals ('sfp_x'@'10.0.%'), never pasted in.
        # IF NOT EXISTS + ALTER: a half-finished earlier attempt is completed, not an error.
        conn.exec_driver_sql(f"CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s {limit}",
                             (*account, password))
        conn.exec_driver_sql(f"ALTER USER %s@%s IDENTIFIED BY %s {limit}", (*account, password))
        conn.exec_driver_sql(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@%s", account)
        log.info("MySQL provisioner: database %s and account %s@%s ready", db, *account)

    async def release(self, user_id: str, resource: Dict[str, Any]) -> None:
        names = {**self.names_for(user_id), **resource}
        # A database provisioned before accounts recorded their host was made for '%'.
        hosts = [names["host"]] if "host" in resource else [self.tenant_host, "%"]
        await self._admin(self._drop, names, sorted(set(hosts)))

    def _drop(self, conn: sa.Connection, names: Dict[str, str], hosts: List[str]) -> None:
        user = names["user"]
        for host in hosts:
            conn.exec_driver_sql("DROP USER IF EXISTS %s@%s", (user, host))
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
        if not self._limits_applied:  # once, at start: check() is also the readiness probe
            await self._admin(self._limit_unlimited_accounts)
            self._limits_applied = True

    def _limit_unlimited_accounts(self, conn: sa.Connection) -> None:
        """Tenant accounts made before accounts had a limit (0: none) get this one; an
        account that has a limit keeps it (another replica may have set it)."""
        if self.max_user_connections <= 0:
            return
        accounts = conn.exec_driver_sql(
            "SELECT user, host FROM mysql.user WHERE user LIKE %s AND max_user_connections = 0",
            ("sfp\\_%",)).fetchall()
        for user, host in accounts:
            conn.exec_driver_sql("ALTER USER %s@%s WITH MAX_USER_CONNECTIONS "
                                 f"{int(self.max_user_connections)}", (user, host))
        if accounts:
            log.info("MySQL provisioner: set MAX_USER_CONNECTIONS %d on %d existing tenant "
                     "account(s) that had none", self.max_user_connections, len(accounts))

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
