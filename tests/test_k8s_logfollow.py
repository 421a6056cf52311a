"""Pod logs followed with one stream per running pod (``k8s/logfollow.py``), against the
in-test API server: output exact through any cursor, API requests that do not grow with
fetches, broken streams resumed, buffers outgrown, and no follower left running."""
import random
import sys
import threading
import time

import pytest

from conftest import client_context, fetch_until_eof, request, wait_until
from sqlflow_playground.k8s import core_v1

PY = sys.executable
NS = "default"


@pytest.fixture
def coarse_sim(tmp_path):
    """A simulator whose node clock ticks every 10 ms: lines written together share a
    timestamp, as on a real node."""
    from k8s_sim import running_simulator
    from sqlflow_playground.k8s.clients import close_shared_clients
    with running_simulator(log_clock_resolution_ns=10_000_000) as simulator:
        simulator.kubeconfig = str(simulator.write_kubeconfig(tmp_path / "kubeconfig"))
        yield simulator
    close_shared_clients()


@pytest.fixture
def server(coarse_sim, make_server):  # overrides conftest's: fetch_as talks to this one
    return make_server(enable_pod_jobs=True, kubeconfig=coarse_sim.kubeconfig, namespace=NS,
                       fetch_page_bytes=300)


@pytest.fixture
def alice(fetch_as, server):
    return fetch_as("alice")


@pytest.fixture
def followers(server):
    return server.gateway.cluster.logs.followers


def submit(fetch, script, task_type="pod"):
    spec = {"image": "python:3.11", "command": [PY, "-c", script]}
    resp = fetch("POST", "/api/jobs", {"task_type": task_type, "spec": spec})
    assert resp.status == 201, resp.body
    return resp.body["token"]


def only_pod(sim):
    [pod] = [p["metadata"]["name"] for p in sim.list_objects("", "v1", "pods", NS)]
    return pod


def running(fetch, token):
    assert wait_until(lambda: fetch("GET", f"/plugins/v1/pod/v1/{token}").body["job_state"]
                      == "RUNNING")


def log_requests(sim, pod):
    return sim.counts[("get", "pods/log", pod)]


def follower_threads():
    return [t for t in threading.enumerate() if t.name.startswith("logfollow")]


BURSTS = 40
BURST_SCRIPT = (
    "import sys, time\n"
    f"for i in range({BURSTS}):\n"
    "    sys.stdout.write(''.join(f'burst {i} line {j} ' + 'x' * (i * j % 11) + '\\n'"
    " for j in range(6)))\n"
    "    sys.stdout.flush()\n"
    "    time.sleep(0.03)\n"
    "sys.stdout.write('the end, no newline')\n")
BURST_OUTPUT = [f"burst {i} line {j} " + "x" * (i * j % 11)
                for i in range(BURSTS) for j in range(6)] + ["the end, no newline"]


def test_output_through_random_cursors_is_exact_and_read_from_memory(alice, coarse_sim,
                                                                    followers):
    token = submit(alice, BURST_SCRIPT)
    body, responses, marks = fetch_until_eof(alice, token, wait=1)
    assert body["status"] == "SUCCEEDED", body
    assert [r["message"] for r in responses] == BURST_OUTPUT
    assert len(marks) > 15  # 300-byte pages
    # Lines of one burst share a timestamp: cursors count past the first of them.
    assert max(int(cursor.rpartition("|")[2]) for cursor, _ in marks if cursor) > 1

    pod = only_pod(coarse_sim)
    follower = followers.get(NS, pod)
    assert follower is not None and follower.streams >= 1
    assert wait_until(lambda: follower.final, 5)
    assert not follower.thread.is_alive()  # the stream ended with the container
    assert wait_until(lambda: coarse_sim.open_log_streams(pod) == 0, 5)
    # A fallback read and a stream to start, a few while the end settles; not one a page.
    assert log_requests(coarse_sim, pod) <= 8

    before = log_requests(coarse_sim, pod)
    for cursor, count in random.Random(7).sample(marks, 15):
        _, rest, _ = fetch_until_eof(alice, token, cursor=cursor, wait=0)
        assert [r["message"] for r in rest] == BURST_OUTPUT[count:], cursor
    assert log_requests(coarse_sim, pod) == before  # all of it from the final buffer


def test_fetches_of_a_running_pod_cost_a_constant_number_of_log_requests(alice, coarse_sim,
                                                                         followers):
    # Prints until cancelled, so however slow this machine is the pod is still running
    # (and printing) for every fetch below.
    token = submit(alice, "import itertools, time\nfor i in itertools.count():\n"
                          "    print(i, flush=True); time.sleep(0.02)")
    running(alice, token)
    pod = only_pod(coarse_sim)
    cursor, seen = "", []

    def fetch_once():
        nonlocal cursor
        body = alice("GET", f"/api/jobs/{token}?since={cursor}").body
        assert body["status"] == "RUNNING", body
        seen.extend(r["message"] for r in body["responses"])
        cursor = body["next"]

    for _ in range(20):
        fetch_once()
    assert wait_until(lambda: followers.get(NS, pod) is not None
                      and followers.get(NS, pod).connected, 5)
    for _ in range(5):
        fetch_once()
    settled = log_requests(coarse_sim, pod)
    assert settled <= 4
    for _ in range(200):
        fetch_once()
    # Output keeps arriving through the follower: however many lines this machine's speed
    # let the pod print meanwhile, fetch until 50 more have come (bounded), still at no cost.
    target = len(seen) + 50
    assert wait_until(lambda: fetch_once() or len(seen) >= target, 60)
    assert log_requests(coarse_sim, pod) == settled  # 200+ more fetches, not one more read
    assert seen == [str(i) for i in range(len(seen))]
    assert coarse_sim.open_log_streams(pod) == 1

    # Cancelling the job ends its follower and its stream.
    follower = followers.get(NS, pod)
    assert alice("DELETE", f"/api/jobs/{token}").body["status"] == "CANCELLED"
    assert wait_until(lambda: not follower.thread.is_alive(), 5)
    assert followers.get(NS, pod) is None
    assert wait_until(lambda: coarse_sim.open_log_streams(pod) == 0, 5)


def test_a_broken_stream_resumes_and_loses_or_repeats_nothing(alice, coarse_sim, followers,
                                                             tmp_path):
    # The pod writes its last line only once the test has cut its stream twice, however
    # fast this machine runs the pod and the fetches.
    gate = tmp_path / "cut-twice"
    script = BURST_SCRIPT.replace("0.03", "0.06").replace(
        "sys.stdout.write('the end", f"while not __import__('os').path.exists({str(gate)!r}):"
                                     f" time.sleep(0.05)\nsys.stdout.write('the end")
    token = submit(alice, script)
    running(alice, token)
    pod = only_pod(coarse_sim)
    cursor, seen, cuts, fetches = "", [], 0, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = alice("GET", f"/api/jobs/{token}?since={cursor}").body
        seen.extend(r["message"] for r in body["responses"])
        cursor, fetches = body["next"], fetches + 1
        if body["eof"]:
            break
        if fetches % 40 == 0 and cuts < 2:
            cuts += coarse_sim.cut_log_streams(pod)
        if cuts >= 2:
            gate.touch()
        time.sleep(0.005)
    assert body["eof"], "the job did not end"
    assert seen == BURST_OUTPUT
    assert cuts >= 2
    follower = followers.get(NS, pod)
    assert wait_until(lambda: follower.final, 5)
    assert follower.streams >= cuts + 1  # reopened after every cut
    # The buffer itself holds each line once, in order: the reopened streams' repeats of
    # their first second were dropped.
    whole = follower.read(None, 1 << 20)
    assert whole.lines == BURST_OUTPUT and whole.done


def test_a_cursor_older_than_the_buffer_is_read_from_the_api(alice, coarse_sim, followers):
    followers.per_pod_bytes = 4000  # far less than the log below
    lines = [f"early line {i} " + "y" * 30 for i in range(300)]
    token = submit(alice, "import time\n"
                          "for i in range(300): print(f'early line {i} ' + 'y' * 30)\n"
                          "print('marker', flush=True); time.sleep(60)")
    running(alice, token)
    pod = only_pod(coarse_sim)
    first = alice("GET", f"/api/jobs/{token}").body  # starts the follower
    follower = followers.get(NS, pod)
    assert follower is not None
    # The stream delivered the whole log, and the buffer kept only its tail.
    assert wait_until(lambda: follower.connected and last_line(follower) == "marker", 10)
    assert follower.read(None, 1 << 20) is None  # the start is older than the buffer
    assert follower.bytes <= 4000

    before = log_requests(coarse_sim, pod)
    out = [r["message"] for r in first["responses"]]
    cursor = first["next"]
    while not out or out[-1] != "marker":
        body = alice("GET", f"/api/jobs/{token}?since={cursor}").body
        out += [r["message"] for r in body["responses"]]
        cursor = body["next"]
    assert out == lines + ["marker"]
    assert log_requests(coarse_sim, pod) > before  # the old part came from the API
    at_end = log_requests(coarse_sim, pod)
    for _ in range(20):  # at the end, inside the buffer: from memory
        body = alice("GET", f"/api/jobs/{token}?since={cursor}").body
        assert body["responses"] == [] and body["next"] == cursor
    assert log_requests(coarse_sim, pod) == at_end
    alice("DELETE", f"/api/jobs/{token}")


def test_a_follow_started_behind_a_long_backlog_does_not_pull_it(alice, coarse_sim,
                                                                 followers):
    # More than one page read holds (66 KB here), spread over seconds: read_page leaves room
    # for about that much of one second's lines before a cursor.
    lines = [f"backlog {i} " + "z" * 30 for i in range(1200)]
    token = submit(alice, "import time\n"
                          "for i in range(1200):\n"
                          "    print(f'backlog {i} ' + 'z' * 30, flush=True); time.sleep(0.002)\n"
                          "print('marker', flush=True); time.sleep(2)\n"
                          "print('later', flush=True); time.sleep(60)")
    running(alice, token)
    pod = only_pod(coarse_sim)
    assert wait_until(lambda: b"marker\n" in coarse_sim.call(
        lambda: [line for _, line in coarse_sim.kubelet.runtime(NS, pod).log.lines]), 20)
    time.sleep(1.05)  # the whole backlog is a second old or more when the log is first read
    assert alice("GET", f"/api/jobs/{token}?since=").body["responses"]
    follower = followers.get(NS, pod)
    assert follower is not None and follower.since is not None  # from "now", not the start
    assert wait_until(lambda: last_line(follower) == "later", 10)
    with follower._lock:
        assert len(follower._lines) == 1  # the backlog was not streamed again
    _, out, _ = fetch_until_eof_or(alice, token, "later")
    assert out == lines + ["marker", "later"]
    alice("DELETE", f"/api/jobs/{token}")


def fetch_until_eof_or(fetch, token, last, timeout=30):
    """Fetch from the start until the line ``last``: (cursor, lines, fetches)."""
    cursor, out, n, deadline = "", [], 0, time.monotonic() + timeout
    while (not out or out[-1] != last) and time.monotonic() < deadline:
        body = fetch("GET", f"/api/jobs/{token}?since={cursor}").body
        out += [r["message"] for r in body["responses"]]
        cursor, n = body["next"], n + 1
    return cursor, out, n


def last_line(follower):
    with follower._lock:
        return follower._lines[-1][1] if follower._lines else None


def test_followers_end_when_idle_when_the_pod_goes_and_when_the_server_stops(
        alice, coarse_sim, server, followers):
    followers.idle_s, followers.tick_s = 0.5, 0.1
    script = "import time; print('up', flush=True); time.sleep(60)"
    tokens = [submit(alice, script) for _ in range(3)]
    for token in tokens:
        running(alice, token)
    pods = sorted(p["metadata"]["name"] for p in coarse_sim.list_objects("", "v1", "pods", NS))

    def fetch_all():
        for token in tokens:
            assert alice("GET", f"/api/jobs/{token}").body["status"] == "RUNNING"

    # Not fetched for idle_s: stopped, stream closed, and the janitor ends with the last.
    fetch_all()
    assert wait_until(lambda: coarse_sim.open_log_streams() == 3, 5)
    assert wait_until(lambda: not follower_threads(), 5), follower_threads()
    assert coarse_sim.open_log_streams() == 0
    # Fetched again: followed again.
    fetch_all()
    assert wait_until(lambda: coarse_sim.open_log_streams() == 3, 5)

    # A pod deleted behind the server's back: its follower goes with it.
    followers.idle_s = 60
    fetch_all()
    gone = followers.get(NS, pods[0])
    core_v1(coarse_sim.kubeconfig).delete_namespaced_pod(pods[0], NS, grace_period_seconds=0)
    assert wait_until(lambda: followers.get(NS, pods[0]) is None, 10)
    assert wait_until(lambda: not gone.thread.is_alive(), 5)
    assert len(follower_threads()) == 3  # the other two and the janitor

    # The server stops: every follower thread ends and every stream closes.
    server.stop()
    assert not follower_threads()
    assert wait_until(lambda: coarse_sim.open_log_streams() == 0, 5)


def test_workload_pods_are_followed_and_prefixed(alice, coarse_sim, followers):
    container = {"name": "main", "image": "python:3.11", "command": [
        PY, "-c", "import time\nfor i in range(120):\n    print('n', i, flush=True);"
                  " time.sleep(0.02)"]}
    manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "two"},
                "spec": {"backoffLimit": 0, "completions": 2, "parallelism": 2, "template": {
                    "spec": {"restartPolicy": "Never", "containers": [container]}}}}
    resp = alice("POST", "/api/jobs", {"task_type": "k8s_job", "spec": {"manifest": manifest}})
    assert resp.status == 201, resp.body
    body, responses, marks = fetch_until_eof(alice, resp.body["token"], wait=0)
    assert body["status"] == "SUCCEEDED", body
    pods = sorted(p["metadata"]["name"] for p in coarse_sim.list_objects("", "v1", "pods", NS))
    assert len(pods) == 2 and len(responses) == 240
    for pod in pods:
        assert [r["message"] for r in responses if r["message"].startswith(f"[{pod}] ")] == \
            [f"[{pod}] n {i}" for i in range(120)]
        assert followers.get(NS, pod) is not None
        # followed: a handful of requests for the pod, however many fetches there were
        assert log_requests(coarse_sim, pod) <= 8, (pod, len(marks))
    assert len(marks) > 50


# -- a second denser than a page read: the fallback path grows its read ---------------------

DENSE = [f"dense {i} " + "d" * (i % 50) for i in range(8000)]  # ~530 KB of log in a burst
DENSE_SCRIPT = ("import sys\n"
                "sys.stdout.write(''.join(f'dense {i} ' + 'd' * (i % 50) + '\\n'"
                " for i in range(8000)))\n")
DENSE_PAGE = 8000  # fetch_page_bytes: read_page starts at 2 * 8000 + 65536 bytes


def dense_server(make_server, certs, simulator, **config):
    """A server on ``simulator`` with small pages, and ``fetch`` as alice against it."""
    srv = make_server(enable_pod_jobs=True, kubeconfig=simulator.kubeconfig, namespace=NS,
                      fetch_page_bytes=DENSE_PAGE, **config)
    ctx = client_context(certs.dir, "alice")
    return srv, lambda *args, **kw: request(srv.port, ctx, *args, **kw)


def fetch_advancing(fetch, token, until=None):
    """Fetch from the start until eof (or the line ``until``), asserting that every fetch
    before the end brings lines and a new cursor: (lines, last response), stopping at an
    error answer too."""
    cursor, out = "", []
    for _ in range(1000):
        resp = fetch("GET", f"/api/jobs/{token}?since={cursor}")
        body = resp.body
        if resp.status != 200:
            return out, resp
        lines = [r["message"] for r in body["responses"]]
        out += lines
        if body["eof"] or (until is not None and out and out[-1] == until):
            return out, resp
        assert lines and body["next"] != cursor, (cursor, len(out))  # stuck
        cursor = body["next"]
    raise AssertionError("too many fetches")


def ended(fetch, token):
    assert wait_until(lambda: fetch("GET", f"/plugins/v1/pod/v1/{token}").body["job_state"]
                      == "SUCCEEDED", 30)


def test_an_ended_pods_second_denser_than_a_page_read_is_read_whole(sim, make_server, certs):
    # Read only through LogReader: the pod has ended before the first fetch, so it is
    # never followed; the burst's second holds far more than one page read.
    srv, fetch = dense_server(make_server, certs, sim)
    token = submit(fetch, DENSE_SCRIPT)
    ended(fetch, token)
    out, resp = fetch_advancing(fetch, token)
    assert resp.body["status"] == "SUCCEEDED", resp.body
    assert out == DENSE  # not cut short where the second outgrew the first read
    pod = only_pod(sim)
    assert srv.gateway.cluster.logs.followers.get(NS, pod) is None
    assert log_requests(sim, pod) <= 20  # a grown page is reused by the fetches it answers


def test_a_running_pods_old_dense_second_is_read_through_the_fallback(tmp_path, make_server,
                                                                      certs):
    # A node clock with one-second ticks: the burst's lines share one timestamp, ranked.
    from k8s_sim import running_simulator
    from sqlflow_playground.k8s.clients import close_shared_clients
    with running_simulator(log_clock_resolution_ns=1_000_000_000) as simulator:
        simulator.kubeconfig = str(simulator.write_kubeconfig(tmp_path / "kubeconfig"))
        srv, fetch = dense_server(make_server, certs, simulator)
        token = submit(fetch, DENSE_SCRIPT + "print('marker', flush=True)\n"
                                             "import time; time.sleep(60)\n")
        running(fetch, token)
        pod = only_pod(simulator)
        assert wait_until(lambda: b"marker\n" in simulator.call(
            lambda: [line for _, line in simulator.kubelet.runtime(NS, pod).log.lines]), 20)
        time.sleep(1.05)  # the follower starts a second later: the burst is older than it
        out, resp = fetch_advancing(fetch, token, until="marker")
        assert resp.body["status"] == "RUNNING", resp.body
        assert out == DENSE + ["marker"]
        follower = srv.gateway.cluster.logs.followers.get(NS, pod)
        assert follower is not None and follower.since is not None  # not from the start
        fetch("DELETE", f"/api/jobs/{token}")
        srv.stop()
    close_shared_clients()


def test_a_second_denser_than_the_cap_is_a_clear_error(sim, make_server, certs):
    srv, fetch = dense_server(make_server, certs, sim)
    srv.gateway.cluster.logs.reader.max_read_bytes = 200_000  # less than the burst
    token = submit(fetch, DENSE_SCRIPT)
    ended(fetch, token)
    out, resp = fetch_advancing(fetch, token)
    # Not output that stops short, nor a cursor that never moves: an error that says why.
    assert resp.status == 500 and resp.body["error"]["code"] == "log_too_dense", resp.body
    assert "more than 200000 bytes within that second" in resp.body["error"]["message"]
    assert out and out == DENSE[:len(out)]  # what came before is exact
