"""Third-party task types: discovered by entry point, served through both doors, and
runnable without a server. The example plugin in examples/hello_plugin is installed into
the test environment as its own package by the README's test command."""
import time

import pytest
from sqlflow_playground_hello import HelloPlugin

from conftest import fetch_until_eof
from sqlflow_playground.blocking import BlockingRunner
from sqlflow_playground.plugins import SUCCEEDED, TaskPlugin, TaskState, run_local
from sqlflow_playground.plugins.registry import PluginRegistry, discovered_plugins


def test_installed_example_plugin_is_discovered_by_entry_point():
    assert any(isinstance(p, HelloPlugin) for p in discovered_plugins())


def test_example_plugin_is_listed_with_its_schema(fetch_as):
    listed = {(p["task_type"], p["version"]): p
              for p in fetch_as("alice")("GET", "/plugins/v1").body["plugins"]}
    assert listed[("hello", "v1")]["spec_schema"]["required"] == ["name"]


def test_example_plugin_runs_through_the_jobs_door(fetch_as):
    alice = fetch_as("alice")
    created = alice("POST", "/api/jobs", {"task_type": "hello",
                                          "spec": {"name": "Ada", "times": 3, "interval_s": 0.05}})
    assert created.status == 201
    body, responses, _ = fetch_until_eof(alice, created.body["token"])
    assert body["status"] == SUCCEEDED and body["outputs"] == {"greetings": 3}
    assert [r["message"] for r in responses] == [f"hello, Ada ({i}/3)" for i in (1, 2, 3)]


def test_example_plugin_runs_through_the_plugin_door(fetch_as):
    alice = fetch_as("alice")
    created = alice("POST", "/plugins/v1/hello/v1", {"spec": {"name": "Bo", "times": 2,
                                                              "interval_s": 0.05}})
    assert created.status == 201
    job_id = created.body["job_id"]
    for _ in range(100):
        state = alice("GET", f"/plugins/v1/hello/v1/{job_id}").body
        if state["job_state"] == SUCCEEDED:
            break
        time.sleep(0.05)
    assert state == {"job_id": job_id, "job_state": SUCCEEDED, "message": "greeted Bo 2 time(s)",
                     "outputs": {"greetings": 2}, "log_links": []}
    bad = alice("POST", "/plugins/v1/hello/v1", {"spec": {"name": "Bo", "times": 0}})
    assert bad.status == 422 and "spec['times']" in bad.body["error"]["message"]


def test_a_plugin_runs_in_process_without_a_server():
    seen = []
    state = run_local(HelloPlugin(), {"name": "Cy", "times": 2, "interval_s": 0},
                      on_response=seen.append)
    assert state.status == SUCCEEDED
    assert state.responses == seen == [{"message": "hello, Cy (1/2)"},
                                       {"message": "hello, Cy (2/2)"}]


class SyncPlugin(TaskPlugin):
    """A plugin written with plain methods; the registry runs them in the executor."""
    task_type, version = "sync", "v1"

    def create(self, ctx, spec):
        import threading
        return {"thread": threading.current_thread().name}

    def get(self, ctx, meta, cursor):
        return TaskState(status=SUCCEEDED, outputs=meta)

    def delete(self, ctx, meta):
        pass


@pytest.mark.gen_test
async def test_sync_plugin_methods_run_off_the_event_loop(tmp_path):
    from sqlflow_playground.plugins import TaskContext
    registry = PluginRegistry(BlockingRunner(2), [SyncPlugin()])
    ctx = TaskContext(token="t", user_id="u", workdir=str(tmp_path))
    meta = await registry.call(registry.get("sync", "v1").create, ctx, {})
    assert meta["thread"].startswith("blocking")


def test_registry_refuses_a_second_plugin_for_the_same_type_and_version():
    registry = PluginRegistry(BlockingRunner(1), [HelloPlugin()])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(HelloPlugin())
    registry.register(HelloPlugin(), override=True)


def test_registry_refuses_an_invalid_spec_schema():
    class Broken(SyncPlugin):
        task_type, spec_schema = "broken", {"type": "no-such-type"}
    with pytest.raises(Exception, match="no-such-type"):
        PluginRegistry(BlockingRunner(1), [Broken()])


# -- polls of a job whose state the gateway knows (issue 15) ---------------------------------

class CountingCalls:
    """Wraps a store method and counts the calls that reach it."""

    def __init__(self, store, name):
        self.calls, self._real = 0, getattr(store, name)
        setattr(store, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._real(*args, **kwargs)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


SLOW_HELLO = {"spec": {"name": "Di", "times": 1000, "interval_s": 60}}  # RUNNING for hours


def test_polling_a_running_job_reads_no_row_and_sees_its_own_replicas_changes_at_once(
        make_server, fetch_as):
    from sqlflow_playground import jobs as jobs_module
    server = make_server()
    jobs = server.gateway.jobs
    jobs.row_clock = FakeClock()  # the cached row never gets old here
    alice = fetch_as("alice", server.port)
    job_id = alice("POST", "/plugins/v1/hello/v1", SLOW_HELLO).body["job_id"]
    reads = CountingCalls(jobs.store, "get_job")
    runs = CountingCalls(jobs.runner, "run")
    for _ in range(20):
        state = alice("GET", f"/plugins/v1/hello/v1/{job_id}").body
        assert state["job_state"] == "RUNNING" and state["message"] == "greeted Di 0 time(s)"
    assert reads.calls == 0 and runs.calls == 0  # no store read, no executor trip
    assert fetch_as("bob", server.port)("GET", f"/plugins/v1/hello/v1/{job_id}").status == 404
    # The plugin's own news (it is asked at every poll) is answered and recorded at once.
    meta = jobs._rows[job_id][0]["meta"]
    meta["started"] -= 3 * 60  # three greetings' time has passed
    assert alice("GET", f"/plugins/v1/hello/v1/{job_id}").body["message"] == \
        "greeted Di 3 time(s)"
    assert jobs.store.get_job(job_id)["message"] == "greeted Di 3 time(s)"
    # A change made through this replica replaces the row at once.
    assert alice("DELETE", f"/plugins/v1/hello/v1/{job_id}").body["job_state"] == "CANCELLED"
    assert alice("GET", f"/plugins/v1/hello/v1/{job_id}").body["job_state"] == "CANCELLED"
    assert job_id not in jobs._rows and jobs_module.ROW_CACHE_S > 0


def test_a_cancel_through_another_replica_is_seen_within_the_row_cache_bound(
        make_server, fetch_as, tmp_path):
    from sqlflow_playground.jobs import ROW_CACHE_S
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = (make_server(db_url=db_url, state_dir=str(tmp_path / name), replica=name)
            for name in ("a", "b"))
    clock = FakeClock()
    a.gateway.jobs.row_clock = clock
    on_a, on_b = fetch_as("alice", a.port), fetch_as("alice", b.port)
    job_id = on_b("POST", "/plugins/v1/hello/v1", SLOW_HELLO).body["job_id"]
    path = f"/plugins/v1/hello/v1/{job_id}"
    assert on_a("GET", path).body["job_state"] == "RUNNING"  # read from the store, kept
    reads = CountingCalls(a.gateway.jobs.store, "get_job")
    assert on_b("DELETE", path).body["job_state"] == "CANCELLED"
    # Replica a may answer from the row it read for up to ROW_CACHE_S (the bound)...
    assert on_a("GET", path).body["job_state"] == "RUNNING" and reads.calls == 0
    clock.now += ROW_CACHE_S * 0.99
    assert on_a("GET", path).body["job_state"] == "RUNNING" and reads.calls == 0
    # ...and no longer: then it reads the store again and answers the other's verdict.
    clock.now += ROW_CACHE_S * 0.02
    state = on_a("GET", path).body
    assert state["job_state"] == "CANCELLED" and state["message"] == "cancelled by the user"
    assert reads.calls == 1
    assert on_a("GET", "/api/jobs/" + job_id).body["status"] == "CANCELLED"


def test_a_job_ended_by_its_plugin_is_seen_ended_by_both_replicas(make_server, fetch_as,
                                                                    tmp_path):
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = (make_server(db_url=db_url, state_dir=str(tmp_path / name), replica=name)
            for name in ("a", "b"))
    for server in (a, b):
        server.gateway.jobs.row_clock = FakeClock()  # rows never get old: only news counts
    on_a, on_b = fetch_as("alice", a.port), fetch_as("alice", b.port)
    job_id = on_a("POST", "/plugins/v1/hello/v1", {"spec": {
        "name": "Ed", "times": 2, "interval_s": 1.5}}).body["job_id"]
    created = time.monotonic()
    path = f"/plugins/v1/hello/v1/{job_id}"
    assert on_b("GET", path).body["job_state"] == "RUNNING"
    assert on_a("GET", path).body["job_state"] == "RUNNING"
    time.sleep(max(0.0, created + 3.1 - time.monotonic()))  # both greetings are due now
    for poll in (on_a, on_b, on_a):
        assert poll("GET", path).body == {
            "job_id": job_id, "job_state": SUCCEEDED, "message": "greeted Ed 2 time(s)",
            "outputs": {"greetings": 2}, "log_links": []}
    assert a.gateway.jobs.store.get_job(job_id)["status"] == SUCCEEDED
