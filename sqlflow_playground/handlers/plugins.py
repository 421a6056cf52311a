"""The Flyte-style door to the job service: create / get / delete by task type and version."""
from ..errors import NotFound
from .base import APIHandler
from .jobs import TOKEN_PATTERN

NAME = r"([A-Za-z0-9_.-]{1,64})"


class PluginHandlerBase(APIHandler):
    @property
    def jobs(self):
        return self.settings["jobs"]

    async def job_state(self, task_type: str, version: str, job_id: str, cancel: bool = False):
        job = await (self.jobs.cancel(self.identity, job_id) if cancel
                     else self.jobs.status(self.identity, job_id))
        return job_state(job, task_type, version, job_id)


def job_state(job: dict, task_type: str, version: str, job_id: str) -> dict:
    """The door's answer for a job (here and in fast_path); NotFound for another type."""
    if (job["task_type"], job["version"]) != (task_type, version):
        raise NotFound("no such job")
    return {"job_id": job_id, "job_state": job["status"], "message": job["message"],
            "outputs": job["outputs"] or {}, "log_links": []}


class PluginsHandler(APIHandler):
    def get(self) -> None:
        self.write_json({"plugins": self.settings["registry"].describe()})


class PluginCreateHandler(PluginHandlerBase):
    async def post(self, task_type: str, version: str) -> None:
        body = self.json_body(allowed=("user_id", "spec", "fetch_timeout_s"))
        user_id = self.identity.act_for(body.get("user_id"))
        self.settings["registry"].get(task_type, version)  # 404 before anything else
        job = await self.jobs.submit(user_id, task_type, version, body.get("spec"),
                                     body.get("fetch_timeout_s"))
        self.write_json({"job_id": job["token"], "job_state": job["status"]}, status=201)


class PluginJobHandler(PluginHandlerBase):
    async def get(self, task_type: str, version: str, job_id: str) -> None:
        self.write_json(await self.job_state(task_type, version, job_id))

    async def delete(self, task_type: str, version: str, job_id: str) -> None:
        # Check the job's type before cancelling, so a wrong path cancels nothing.
        await self.job_state(task_type, version, job_id)
        self.write_json(await self.job_state(task_type, version, job_id, cancel=True))


default_handlers = [
    (r"/plugins/v1", PluginsHandler),
    (rf"/plugins/v1/{NAME}/{NAME}", PluginCreateHandler),
    (rf"/plugins/v1/{NAME}/{NAME}/{TOKEN_PATTERN}", PluginJobHandler),
]
