"""The embedded default: one sqlite file per user under ``--state_dir``."""
import os
import sqlite3
from typing import Any, Dict

from .base import Provisioned, Provisioner, safe_name


class SqliteProvisioner(Provisioner):
    """Gives each user a sqlite file; the data source is a SQLAlchemy URL to it."""

    name = "sqlite"

    def __init__(self, runner, state_dir: str):
        super().__init__(runner)
        self.directory = os.path.abspath(os.path.join(state_dir, "databases"))

    def path_for(self, user_id: str) -> str:
        return os.path.join(self.directory, safe_name(user_id, "", 80) + ".db")

    async def provision(self, user_id: str) -> Provisioned:
        path = await self.runner.run(self._create, user_id)
        return Provisioned(data_source="sqlite:///" + path, resource={"path": path})

    def _create(self, user_id: str) -> str:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self.path_for(user_id)
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        os.chmod(path, 0o600)
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
        await self.runner.run(os.makedirs, self.directory, 0o700, True)
