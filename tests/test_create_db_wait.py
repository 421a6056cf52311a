"""Issue 13 item 1: a slow create_db is not a failure. New clients poll (POST with "wait",
202 with progress) up to the provision timeout the server states, showing progress; the
deployed magic's single POST still gets its data source, however long it takes."""
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from IPython.utils.capture import capture_output

from conftest import client_context, request
from sqlflow_playground.client import PlaygroundClient, PlaygroundClientError
from sqlflow_playground.errors import Unavailable
from sqlflow_playground.provisioners.base import Provisioned, Provisioner


class SlowProvisioner(Provisioner):
    """A database that takes ``delay`` seconds to provision (or then fails)."""

    name = "slow"

    def __init__(self, runner, delay, fail=False):
        super().__init__(runner)
        self.delay, self.fail = delay, fail

    async def provision(self, user_id):
        await asyncio.sleep(self.delay)
        if self.fail:
            raise Unavailable("the slow backend gave up")
        return Provisioned(data_source=f"sqlite:///slow/{user_id}.db?secret=s3cret")

    async def release(self, user_id, resource):
        pass


def tls(certs, name):
    return {"ca": certs.ca, "cert": str(certs.dir / name / f"{name}.crt"),
            "key": str(certs.dir / name / f"{name}.key")}


def slow_server(make_server, delay, fail=False):
    return make_server(provisioner_factory=lambda runner: SlowProvisioner(runner, delay, fail))


def deployed_magic_create_db(port, ctx, user_id):
    """Exactly the deployed magic's request: one POST, body {"user_id"}, no Content-Type."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=300)
    try:
        conn.request("POST", "/api/create_db", body=json.dumps({"user_id": user_id}))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# -- fast: the protocol and the client ------------------------------------------------

def test_a_poll_answers_202_with_progress_then_the_database(make_server, certs):
    server = slow_server(make_server, 3)
    alice = client_context(certs.dir, "alice")
    first = request(server.port, alice, "POST", "/api/create_db", {"wait": 0.2})
    assert first.status == 202, first.body
    assert first.body["status"] == "provisioning" and first.body["user_id"] == "alice"
    assert first.body["phase"] is None  # this backend cannot tell
    assert first.body["provision_timeout_s"] == 180 and first.body["elapsed_s"] >= 0
    assert "data_source" not in first.body
    done = None
    for _ in range(60):
        done = request(server.port, alice, "POST", "/api/create_db", {"wait": 1})
        if done.status == 200:
            break
        assert done.status == 202
    assert done.status == 200
    assert done.body["created"] is True  # the same provisioning, picked up again
    assert done.body["data_source"] == "sqlite:///slow/alice.db?secret=s3cret"
    assert request(server.port, alice, "POST", "/api/create_db", {"wait": "x"}).status == 400


def test_client_reports_progress_and_returns_the_database(make_server, certs):
    server = slow_server(make_server, 5)
    client = PlaygroundClient(f"https://127.0.0.1:{server.port}", **tls(certs, "alice"))
    seen = []
    created = client.create_db(on_progress=seen.append)
    assert created["created"] is True and created["data_source"].startswith("sqlite:///slow/")
    assert seen and all(b["status"] == "provisioning" for b in seen)
    assert [b["elapsed_s"] for b in seen] == sorted(b["elapsed_s"] for b in seen)
    client.close()


def test_giving_up_is_not_a_failure_and_the_server_carries_on(make_server, certs):
    server = slow_server(make_server, 4)
    client = PlaygroundClient(f"https://127.0.0.1:{server.port}", **tls(certs, "alice"))
    with pytest.raises(PlaygroundClientError) as gave_up:
        client.create_db(timeout=0.5)
    assert gave_up.value.code == "still_provisioning"
    assert "run create-db again" in gave_up.value.message
    assert client.create_db()["created"] is True  # the first provisioning, finished
    client.close()


def test_a_failed_provisioning_reaches_the_polling_client(make_server, certs):
    server = slow_server(make_server, 1, fail=True)
    client = PlaygroundClient(f"https://127.0.0.1:{server.port}", **tls(certs, "alice"))
    with pytest.raises(PlaygroundClientError) as failed:
        client.create_db()
    assert failed.value.status == 503 and "the slow backend gave up" in failed.value.message
    client.close()


def test_kubernetes_phases_are_reported(make_server, certs, tmp_path):
    from k8s_sim import running_simulator
    from sqlflow_playground.k8s.clients import close_shared_clients
    with running_simulator(startup_delay=2, mysql_ready_delay=2) as sim:
        kubeconfig = str(sim.write_kubeconfig(tmp_path / "kubeconfig"))
        server = make_server(provisioner="kubernetes", kubeconfig=kubeconfig,
                             namespace="default", provision_timeout_s=60)
        front = PlaygroundClient(f"https://127.0.0.1:{server.port}", user_id="erin",
                                 **tls(certs, "front"))
        seen = []
        assert front.create_db(on_progress=lambda b: seen.append(b["phase"]))["created"]
        front.close()
        server.stop()
    close_shared_clients()
    assert "pulling the image" in seen and "starting MySQL" in seen, seen


# -- slow: a provisioning of 45 s -----------------------------------------------------

def test_45_s_provisioning_cli_magic_and_the_deployed_single_post_all_succeed(
        make_server, certs, notebook, monkeypatch):
    server = slow_server(make_server, 45)
    url = f"https://127.0.0.1:{server.port}"
    # The deployed magic (carol's legacy certificate), at the same time as the others.
    deployed = {}
    thread = threading.Thread(target=lambda: deployed.update(answer=deployed_magic_create_db(
        server.port, client_context(certs.dir, "legacy"), "carol")))
    thread.start()
    # The CLI, for bob.
    bob = tls(certs, "bob")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLOW_")}
    cli = subprocess.Popen([sys.executable, "-m", "sqlflow_playground", "client",
                            f"--server={url}", f"--ca={bob['ca']}", f"--cert={bob['cert']}",
                            f"--key={bob['key']}", "create-db"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The magic, for alice: its first cell creates the database, then runs.
    alice = tls(certs, "alice")
    for var, value in (("SERVER", url), ("SERVER_CA", alice["ca"]),
                       ("CLIENT_CERT", alice["cert"]), ("CLIENT_KEY", alice["key"])):
        monkeypatch.setenv(f"SQLFLOW_PLAYGROUND_{var}", value)
    with capture_output() as out:
        notebook.magics_manager.registry["SQLFlowMagics"].connect()  # what a first cell does
    assert os.environ["SQLFLOW_DATASOURCE"] == "sqlite:///slow/alice.db?secret=s3cret"
    shown = [o.data["text/plain"] for o in out.outputs]
    assert any("provisioning your database… " in s for s in shown), shown
    assert shown[-1] == "your database is ready"
    # one display, updated in place: a first publish, then updates of it
    assert [o.update for o in out.outputs] == [False] + [True] * (len(shown) - 1)
    stdout, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    assert re.search(r"^data_source: +sqlite:///slow/bob\.db\?secret=s3cret$", stdout, re.M)
    assert re.search(r"^created: +True$", stdout, re.M), stdout
    progress = [line for line in stderr.splitlines() if "provisioning your database…" in line]
    assert len(progress) >= 3, stderr  # a line every 10 s of the 45
    thread.join(300)
    status, body = deployed["answer"]
    assert status == 200 and body["data_source"] == "sqlite:///slow/carol.db?secret=s3cret"
    assert body["user_id"] == "carol" and body["created"] is True
