"""The embedded default: one sqlite file per user in ``--state_dir``/databases.

Where a user's file lives is a function of the state directory and the user id alone
(``database_path``), so the ``sql`` task type can check that the file a data source
names is its owner's, without trusting the data source (see ``plugins/sql.py``).
"""
import os
import secrets
import sqlite3
from typing import Any, Dict

from ..statedir import DIR_MODE, create_private_file
from .base import Provisioned, Provisioner, safe_name


def databases_directory(state_dir: str) -> str:
    """The directory holding every user's sqlite file."""
    return os.path.join(os.path.abspath(state_dir), "databases")


def database_path(directory: str, user_id: str) -> str:
    """The one file ``user_id``'s sqlite database may be, in ``directory``."""
    return os.path.join(directory, safe_name(user_id, "", 80) + ".db")


def data_source_path(data_source: str) -> str:
    """The file a ``sqlite:///PATH?secret=…`` data source names."""
    return data_source[len("sqlite:///"):].partition("?")[0]


class SqliteProvisioner(Provisioner):
    """Gives each user a sqlite file; the data source is a SQLAlchemy URL to it, with a
    random ``secret``: the file needs none (only the server opens it), but a data source
    is what proves a caller's identity at the gRPC door (grpcdoor.py), so it must hold
    something no one can guess, as a MySQL data source's password is."""

    name = "sqlite"

    def __init__(self, runner, state_dir: str):
        super().__init__(runner)
        self.directory = databases_directory(state_dir)

    def path_for(self, user_id: str) -> str:
        return database_path(self.directory, user_id)

    async def provision(self, user_id: str) -> Provisioned:
        path = await self.runner.run(self._create, user_id)
        return Provisioned(data_source=f"sqlite:///{path}?secret={secrets.token_urlsafe(24)}",
                           resource={"path": path})

    def _create(self, user_id: str) -> str:
        os.makedirs(self.directory, mode=DIR_MODE, exist_ok=True)
        path = self.path_for(user_id)
        create_private_file(path)  # 0600 before sqlite opens it; never through a symlink
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        return path

    async def release(self, user_id: str, resource: Dict[str, Any]) -> None:
        await self.runner.run(self._drop, resource.get("path") or self.path_for(user_id))

    def _drop(self, path: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass

    async def check(self) -> None:
        await self.runner.run(os.makedirs, self.directory, DIR_MODE, True)
