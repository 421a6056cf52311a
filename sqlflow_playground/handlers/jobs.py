"""Routes of asynchronous jobs: submit, fetch with a cursor, cancel, list (DESIGN §5),
and download a job's output file as it is."""
from tornado.iostream import StreamClosedError

from ..errors import BadRequest
from ..jobs import RangeNotSatisfiable
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

    def write_parts(self, parts) -> None:
        """``write_encoded`` of the body ``b"".join(parts)`` without joining them: a part
        may be a page (a bytearray, see plugins/output.py MessageLines), and Tornado would
        copy it twice (our join, then its own splice of the headers and the body), holding
        three copies of the page at once. Here the headers and the first part go out
        together, and each further part is queued as it is (Tornado's stream keeps a view
        of a large buffer, no copy) until it is sent."""
        if self._transforms:  # (none are configured; a transform needs the whole body)
            self.write_encoded(b"".join(parts))
            return
        self.set_status(200)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Content-Length", sum(len(part) for part in parts))
        first, *rest = parts
        self.write(bytes(first))
        self.flush()  # the headers and the first part, in one write
        for part in rest[:-1]:
            if part:
                self.request.connection.write(part)
        self.finish(bytes(rest[-1]) if rest else b"")


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
        parts = await self.jobs.fetch_parts(self.identity, token, self.query("since") or "",
                                            wait_s)
        # A long poll that brought nothing (no response, not the end) is one of the many
        # a follower makes while a job is quiet: its access line is DEBUG (accesslog.py).
        self.empty_wait = wait_s > 0 and parts[1] == b"[]" and b'"eof":false' in parts[0]
        self.write_parts(parts)

    async def delete(self, token: str) -> None:
        self.write_json(await self.jobs.cancel(self.identity, token))


class JobOutputHandler(JobsHandlerBase):
    """``GET /api/jobs/{token}/output``: the job's output file as it is (octet-stream),
    all of it or from a ``Range: bytes=N-`` (206), for a client that wants the bytes and
    not the pages of messages. Visible as a fetch is (another user's job: 404).

    Sent half a page (``--fetch_page_bytes``) at a time from two such buffers made for the
    request: the next is read (in the executor) while the last is sent, and a buffer is
    read into again only once it is sent; so a download holds one page whatever the
    output's size, and a slow client holds the reads back (nothing is queued past those
    two buffers)."""

    async def get(self, token: str) -> None:
        download = await self.jobs.open_output(self.identity, token,
                                               self.request.headers.get("Range"))
        try:
            await self._send(download)
        except StreamClosedError:
            pass  # the client went away; nothing more to do
        finally:
            download.close()

    async def _send(self, download) -> None:
        partial = download.partial and download.length > 0
        self.set_status(206 if partial else 200)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Length", download.length)
        if partial:
            self.set_header("Content-Range",
                            f"bytes {download.start}-{download.stop - 1}/{download.size}")
        await self.flush()  # the headers; from here on one write at a time (see below)
        size = min(max(self.jobs.settings.fetch_page_bytes // 2, 1), download.length)
        views = [memoryview(bytearray(size)), memoryview(bytearray(size))] if size else []
        offset, run = download.start, self.jobs.runner.run
        n = await run(download.read_into, views[0], offset) if size else 0
        while n:
            # Tornado resolves a write's future when the connection's last write is sent:
            # it stands for this one as long as no other write was made since.
            sent = self.request.connection.write(views[0][:n])
            offset += n
            n = await run(download.read_into, views[1], offset) if offset < download.stop \
                else 0
            await sent
            views.reverse()
        self.finish()  # (fewer bytes than announced, if the file shrank: Tornado closes)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, RangeNotSatisfiable):
            self.set_header("Content-Range", f"bytes */{exc.size}")
        super().write_error(status_code, **kwargs)


default_handlers = [
    (r"/api/jobs", JobsHandler),
    (rf"/api/jobs/{TOKEN_PATTERN}", JobHandler),
    (rf"/api/jobs/{TOKEN_PATTERN}/output", JobOutputHandler),
]
