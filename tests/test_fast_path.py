"""Heart beats and plugin polls answered before routing (handlers/fast_path.py) say exactly
what their handlers say, and everything but the plain case still reaches the handlers."""
import asyncio
import io
import logging
import threading
import time

import pytest

from sqlflow_playground.cli import JsonFormatter, TurnBatchingStreamHandler
from sqlflow_playground.handlers.fast_path import FastPath
from sqlflow_playground_hello import HelloPlugin


@pytest.fixture
def fast_answers(monkeypatch):
    """The paths the fast path answered itself (the server runs in this process)."""
    answered = []
    respond = FastPath._respond

    def counting(self):
        answered.append(self.request.path)
        respond(self)
    monkeypatch.setattr(FastPath, "_respond", counting)
    return answered


def wait_for(found, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not found() and time.monotonic() < deadline:
        time.sleep(0.02)
    return found()


def comparable(response):
    """Status, body and headers, less the values that differ per request (Date, id)."""
    headers = {k: v for k, v in response.headers.items() if k not in ("Date", "X-Request-Id")}
    return response.status, response.body, headers, sorted(response.headers)


@pytest.mark.parametrize("who,fast,routed", [
    # the handler reads user_id alone: a second field or an escape sends it the same request
    ("alice", "/api/heart_beat", "/api/heart_beat?x=1"),
    ("alice", "/api/heart_beat?user_id=alice", "/api/heart_beat?user_id=%61lice"),
    ("front", "/api/heart_beat?user_id=zoe", "/api/heart_beat?user_id=zoe&x=1"),
    ("alice", "/api/heart_beat?user_id=a.b@c-d_e", "/api/heart_beat?user_id=a.b%40c-d_e"),
])
def test_the_fast_beat_is_the_handlers_beat(fetch_as, fast_answers, who, fast, routed):
    client = fetch_as(who)
    if who == "alice" and "a.b" in fast:
        client = fetch_as("front")  # acting for another user takes a frontend
    quick = client("GET", fast)
    assert fast_answers == [fast.split("?")[0]]
    slow = client("GET", routed)
    assert len(fast_answers) == 1, "the routed request must not be answered by the fast path"
    assert comparable(quick) == comparable(slow)
    assert quick.status == 200 and quick.body["status"] == "ok"
    assert quick.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert quick.headers["Date"] and quick.headers["X-Request-Id"]


@pytest.mark.parametrize("method,path,body,status", [
    ("GET", "/api/heart_beat?user_id=bob", None, 403),       # acting for another user
    ("GET", "/api/heart_beat?user_id=-bad", None, 400),      # not a user id
    ("GET", "/api/heart_beat?user_id=" + "a" * 64, None, 400),
    ("HEAD", "/api/heart_beat", None, 405),
    ("POST", "/api/heart_beat", b"{}", 405),
    ("GET", "/api/heart_beat", b"{}", 200),                   # a body: the handler's
    ("GET", "/api/heart_beat/", None, 404),
    ("GET", "/api/heart_beatx", None, 404),
])
def test_anything_but_the_plain_case_is_the_handlers(fetch_as, fast_answers, method, path,
                                                      body, status):
    response = fetch_as("alice")(method, path, body)
    assert response.status == status
    assert fast_answers == []
    if status >= 400 and method != "HEAD":
        assert set(response.body["error"]) == {"code", "message"}


def test_a_sane_request_id_is_kept_and_another_replaced(fetch_as, fast_answers):
    alice = fetch_as("alice")
    kept = alice("GET", "/api/heart_beat", headers={"X-Request-Id": "trace-42"})
    replaced = alice("GET", "/api/heart_beat", headers={"X-Request-Id": "<script>"})
    assert len(fast_answers) == 2
    assert kept.headers["X-Request-Id"] == "trace-42"
    assert replaced.headers["X-Request-Id"] not in ("<script>", "trace-42")


def test_a_fast_beat_keeps_the_user_alive_and_is_counted_and_logged(server, fetch_as,
                                                                    fast_answers, caplog):
    alice = fetch_as("alice")
    alice("POST", "/api/create_db")
    playground = server.gateway.playground
    before = playground._beats.get("alice")
    with caplog.at_level(logging.INFO, logger="sqlflow_playground.access"):
        alice("GET", "/api/heart_beat", headers={"X-Request-Id": "beat-1"})
        # the line follows the answer on the server's thread: wait for it
        lines = wait_for(lambda: [r for r in caplog.records
                                  if r.name == "sqlflow_playground.access"
                                  and r.msg.fields["request_id"] == "beat-1"])
    assert fast_answers == ["/api/heart_beat"]
    assert playground._beats["alice"] != before
    assert len(lines) == 1
    assert {k: lines[0].msg.fields[k] for k in ("identity", "method", "route", "path",
                                               "status")} == {
        "identity": "alice", "method": "GET", "route": "/api/heart_beat",
        "path": "/api/heart_beat", "status": 200}
    counted = [line for line in server.gateway.metrics.render().decode().splitlines()
               if line.startswith("sqlflow_playground_requests_total{")
               and 'route="/api/heart_beat"' in line and 'status="200"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1


# -- the stderr handler's one write per loop turn ---------------------------------------------

class CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def info(message, level=logging.INFO):
    return logging.LogRecord("t", level, __file__, 1, message, (), None)


def test_lines_logged_in_one_loop_turn_are_written_once_at_its_end_in_order():
    stream = CountingStream()
    handler = TurnBatchingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))

    async def turn():
        handler.attach(asyncio.get_running_loop())
        for n in range(3):
            handler.handle(info(f"line {n}"))
        assert stream.writes == []  # not yet: at the end of this turn
        await asyncio.sleep(0)
        assert stream.writes == ["line 0\nline 1\nline 2\n"]
        handler.handle(info("line 3"))
        handler.handle(info("trouble", logging.WARNING))  # at once, after what is pending
        assert stream.writes[1:] == ["line 3\ntrouble\n"]
        handler.handle(info("line 4"))
        elsewhere = threading.Thread(target=handler.handle, args=(info("from a thread"),))
        elsewhere.start()
        elsewhere.join()  # another thread's line is written at once, after line 4
        assert stream.writes[2:] == ["line 4\nfrom a thread\n"]
        handler.handle(info("line 5"))
        handler.detach()  # writes what is pending
        assert stream.writes[3:] == ["line 5\n"]
    asyncio.run(turn())
    handler.handle(info("after"))  # detached: at once
    assert stream.writes[4:] == ["after\n"]
    assert stream.getvalue().splitlines() == [
        "line 0", "line 1", "line 2", "line 3", "trouble", "line 4", "from a thread",
        "line 5", "after"]


def test_a_pending_line_is_written_when_logging_shuts_down():
    stream = CountingStream()
    handler = TurnBatchingStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loop = asyncio.new_event_loop()
    try:
        handler.attach(loop)
        handler.handle(info("pending"))  # the loop never turns again
        assert stream.writes == []
        handler.flush()  # what logging.shutdown() does at exit
        assert len(stream.writes) == 1 and '"msg": "pending"' in stream.writes[0]
    finally:
        loop.close()
    handler.attach(loop)
    handler.handle(info("closed loop"))  # a closed loop cannot defer: written at once
    assert '"msg": "closed loop"' in stream.writes[-1]


# -- the identity of a certificate, parsed once per certificate ---------------------------

class FakeTLS:
    def __init__(self, der, cn):
        self.der, self.cn, self.decoded = der, cn, 0

    def getpeercert(self, binary_form=False):
        if binary_form:
            return self.der
        self.decoded += 1
        return {"subject": ((("commonName", self.cn),),)}


def test_a_certificate_seen_before_is_not_decoded_again_and_the_frontend_list_counts():
    import types
    from sqlflow_playground.handlers.base import connection_identity

    def connect(tls):
        return types.SimpleNamespace(stream=types.SimpleNamespace(socket=tls))
    first = FakeTLS(b"der-of-carol-1", "carol")
    assert connection_identity(connect(first), {}).name == "carol"
    again = FakeTLS(b"der-of-carol-1", "carol")
    identity = connection_identity(connect(again), {})
    assert (identity.name, identity.is_frontend, again.decoded) == ("carol", False, 0)
    # the same bytes under another --frontend_certs: parsed anew, a frontend now
    listed = FakeTLS(b"der-of-carol-1", "carol")
    identity = connection_identity(connect(listed), {"frontend_certs": ("carol",)})
    assert (identity.is_frontend, listed.decoded) == (True, 1)
    other = FakeTLS(b"der-of-dave", "dave")
    assert connection_identity(connect(other), {}).name == "dave" and other.decoded == 1
    assert connection_identity(connect(FakeTLS(b"", "x")), {}) is None  # no certificate


# -- the plugin door's poll ---------------------------------------------------------------

SLOW_HELLO = {"spec": {"name": "Ann", "times": 1000, "interval_s": 60}}


def test_a_fast_poll_is_the_handlers_poll_and_anything_else_is_the_handlers(fetch_as,
                                                                           fast_answers):
    alice, bob = fetch_as("alice"), fetch_as("bob")
    job_id = alice("POST", "/plugins/v1/hello/v1", SLOW_HELLO).body["job_id"]
    path = f"/plugins/v1/hello/v1/{job_id}"
    quick = alice("GET", path)
    assert fast_answers == [path]
    routed = alice("GET", path + "?x=1")  # a query: the handler's, which ignores it
    assert comparable(quick) == comparable(routed)
    assert quick.body["job_id"] == job_id and quick.body["job_state"] == "RUNNING"
    assert set(quick.body) == {"job_id", "job_state", "message", "outputs", "log_links"}
    # refused ones go to the handler, which says why, and nothing is answered here
    for who, other_path, status in [
            (bob, path, 404),                                          # not bob's
            (alice, f"/plugins/v1/hello/v2/{job_id}", 404),            # another version
            (alice, f"/plugins/v1/process/v1/{job_id}", 404),          # another type
            (alice, "/plugins/v1/hello/v1/" + "A" * 32, 404)]:         # no such job
        response = who("GET", other_path)
        assert response.status == status, (other_path, response.body)
        assert response.body["error"]["code"] == "not_found"
        assert response.headers["X-Request-Id"]
    assert fast_answers == [path]
    cancelled = alice("DELETE", path)  # DELETE is the handler's
    assert cancelled.body["job_state"] == "CANCELLED" and fast_answers == [path]
    assert alice("GET", path).body["job_state"] == "CANCELLED"
    assert fast_answers == [path, path]


class TimedPlugin(HelloPlugin):
    """A hello whose get needs a task to belong to (asyncio.timeout) and waits once."""

    task_type = "timed"
    gets = 0

    async def get(self, ctx, meta, cursor):
        type(self).gets += 1
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
            return await super().get(ctx, meta, cursor)


def test_a_poll_whose_plugin_needs_a_task_is_answered_all_the_same(server, fetch_as,
                                                                    fast_answers):
    """The poll's first step runs outside any task (eager.start): asyncio.timeout raises
    there, and the handler answers, in a task, what the plugin says."""
    server.gateway.registry.register(TimedPlugin())
    alice = fetch_as("alice")
    job_id = alice("POST", "/plugins/v1/timed/v1", SLOW_HELLO).body["job_id"]
    TimedPlugin.gets = 0
    response = alice("GET", f"/plugins/v1/timed/v1/{job_id}")
    assert response.status == 200, response.body
    assert response.body["job_state"] == "RUNNING"
    assert response.body["message"] == "greeted Ann 0 time(s)"
    assert fast_answers == [] and TimedPlugin.gets == 2  # refused at once, then the handler's
