"""Routes of asynchronous jobs: submit, fetch with a cursor, cancel, list (DESIGN §5)."""
from ..errors import BadRequest
from .base import APIHandler

TOKEN_PATTERN = r"([A-Za-z0-9_-]{1,64})"


class JobsHandlerBase(APIHandler):
    @property
    def jobs(self):
        return self.settings["jobs"]

    def write_encoded(self, body: bytes, status: int = 200) -> None:
        """``write_json`` for a body the service already encoded (off the IOLoop)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(body)


class JobsHandler(JobsHandlerBase):
    async def post(self) -> None:
        body = self.json_body(allowed=("user_id", "task_type", "version", "spec",
                                       "fetch_timeout_s"))
        user_id = self.identity.act_for(body.get("user_id"))
        task_type, version = body.get("task_type"), body.get("version")
        if not isinstance(task_type, str) or not task_type:
            raise BadRequest("task_type is required, e.g. \"sql\" or \"process\"")
        if version is not None and not isinstance(version, str):
            raise BadRequest("version must be a string such as \"v1\"")
        if "spec" not in body:
            raise BadRequest("spec is required: the task type's parameters")
        job = await self.jobs.submit(user_id, task_type, version, body["spec"],
                                     body.get("fetch_timeout_s"))
        self.write_json(job, status=201)

    async def get(self) -> None:
        user_id = self.query("user_id")
        if user_id is not None or not self.identity.is_frontend:
            user_id = self.identity.act_for(user_id)
        jobs = await self.jobs.list(user_id, self.query("status"))
        self.write_json({"jobs": jobs})


class JobHandler(JobsHandlerBase):
    async def get(self, token: str) -> None:
        wait = self.query("wait") or "0"
        try:
            wait_s = float(wait)
        except ValueError:
            raise BadRequest("wait must be a number of seconds") from None
        body = await self.jobs.fetch_body(self.identity, token, self.query("since") or "",
                                          wait_s)
        # A long poll that brought nothing (no response, not the end) is one of the many
        # a follower makes while a job is quiet: its access line is DEBUG (accesslog.py).
        self.empty_wait = wait_s > 0 and body.endswith(b',"responses":[]}') \
            and b'"eof":false' in body
        self.write_encoded(body)

    async def delete(self, token: str) -> None:
        self.write_json(await self.jobs.cancel(self.identity, token))


default_handlers = [
    (r"/api/jobs", JobsHandler),
    (rf"/api/jobs/{TOKEN_PATTERN}", JobHandler),
]
