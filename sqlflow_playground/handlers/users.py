"""Routes describing users: one user (owner or frontend), all users (frontend only)."""
from typing import Any, Dict

from .db import PlaygroundHandler


def describe(user: Dict[str, Any], with_data_source: bool) -> Dict[str, Any]:
    view = {
        "user_id": user["user_id"],
        "provisioner": user["provisioner"],
        "status": user["status"],
        "created_at": user["created_at"],
        "last_seen_at": user["last_seen_at"],
    }
    if with_data_source:
        view["data_source"] = user["data_source"]
    return view


class UserHandler(PlaygroundHandler):
    async def get(self, user_id: str) -> None:
        user_id = self.identity.act_for(user_id)
        user = await self.playground.get_user(user_id)
        jobs = await self.settings["jobs"].list(user_id, None)
        self.write_json({**describe(user, with_data_source=True),
                         "idle_timeout_s": self.idle_timeout_s, "jobs": jobs})


class UsersHandler(PlaygroundHandler):
    async def get(self) -> None:
        self.identity.require_frontend()
        users = await self.playground.list_users()
        # A list is for overview; credentials only come with one user's own view.
        self.write_json({"users": [describe(u, with_data_source=False) for u in users],
                         "idle_timeout_s": self.idle_timeout_s})


default_handlers = [
    (r"/api/users", UsersHandler),
    (r"/api/users/([^/]+)", UserHandler),
]
