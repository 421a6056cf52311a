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
