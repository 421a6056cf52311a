"""Routes of a user's database: create_db, heart_beat, delete_db (DESIGN §2, §5)."""
from .base import APIHandler


class PlaygroundHandler(APIHandler):
    @property
    def playground(self):
        return self.settings["playground"]

    @property
    def idle_timeout_s(self) -> float:
        return self.playground.idle_timeout_s


class CreateDBHandler(PlaygroundHandler):
    async def post(self) -> None:
        user_id = self.identity.act_for(self.json_body(allowed=("user_id",)).get("user_id"))
        user, created = await self.playground.create_db(user_id)
        self.write_json({"data_source": user["data_source"], "user_id": user_id,
                         "created": created, "idle_timeout_s": self.idle_timeout_s})


class HeartBeatHandler(PlaygroundHandler):
    def get(self) -> None:
        user_id = self.identity.act_for(self.query("user_id"))
        status = self.playground.heart_beat(user_id)
        body = {"user_id": user_id, "status": status, "idle_timeout_s": self.idle_timeout_s}
        if status != "ok":  # 200 still: the deployed magic only GETs, and reads no body
            body["message"] = ("the database is lost (its pod is gone or failed); "
                               "POST /api/create_db for a new one")
        self.write_json(body)


class DeleteDBHandler(PlaygroundHandler):
    async def post(self) -> None:
        user_id = self.identity.act_for(self.json_body(allowed=("user_id",)).get("user_id"))
        released = await self.playground.delete_db(user_id)
        self.write_json({"user_id": user_id, "released": released})


default_handlers = [
    (r"/api/create_db", CreateDBHandler),
    (r"/api/heart_beat", HeartBeatHandler),
    (r"/api/delete_db", DeleteDBHandler),
]
