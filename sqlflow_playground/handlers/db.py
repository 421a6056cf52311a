"""Routes of a user's database: create_db, heart_beat, delete_db (DESIGN §2, §5)."""
from ..errors import BadRequest
from .base import APIHandler

# The longest a POST /api/create_db with "wait" is held before it answers 202.
MAX_CREATE_WAIT_S = 30.0


class PlaygroundHandler(APIHandler):
    @property
    def playground(self):
        return self.settings["playground"]

    @property
    def idle_timeout_s(self) -> float:
        return self.playground.idle_timeout_s


class CreateDBHandler(PlaygroundHandler):
    """Without "wait" (the deployed magic's single POST) the answer comes when the
    database is ready, however long that takes. With ``"wait": SECONDS`` (new clients)
    it comes within that time (at most MAX_CREATE_WAIT_S): the database, or 202 with
    the provisioning's progress; POSTing again picks the same provisioning up."""

    async def post(self) -> None:
        body = self.json_body(allowed=("user_id", "wait"))
        user_id = self.identity.act_for(body.get("user_id"))
        if "wait" not in body:
            user, created = await self.playground.create_db(user_id)
        else:
            wait = body["wait"]
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
                raise BadRequest("wait must be a number of seconds >= 0")
            done, progress = await self.playground.create_db_polled(
                user_id, min(wait, MAX_CREATE_WAIT_S))
            if done is None:
                self.write_json({"user_id": user_id, **progress}, status=202)
                return
            user, created = done
        self.write_json({"data_source": user["data_source"], "user_id": user_id,
                         "created": created, "idle_timeout_s": self.idle_timeout_s})


class HeartBeatHandler(PlaygroundHandler):
    """The plain case (GET, ``user_id`` alone, no body) is answered before routing, by
    fast_path.FastPath, with the same answer; this handler takes the rest."""

    def get(self) -> None:
        user_id = self.identity.act_for(self.query("user_id"))
        self.write_json(heart_beat(self.playground, user_id))


def heart_beat(playground, user_id: str) -> dict:
    """Record the beat; the answer (here and in fast_path)."""
    status = playground.heart_beat(user_id)
    body = {"user_id": user_id, "status": status, "idle_timeout_s": playground.idle_timeout_s}
    if status != "ok":  # 200 still: the deployed magic only GETs, and reads no body
        body["message"] = ("the database is lost (its pod is gone or failed); "
                           "POST /api/create_db for a new one")
    return body


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
