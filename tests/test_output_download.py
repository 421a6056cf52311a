"""Issue 15, output: ``GET /api/jobs/{token}/output`` downloads a job's output file as it is
(all of it, or from a Range), isolated as a fetch is, in buffers of at most a page; and the
allocator setting that gives a fetch's page buffers back when they are freed."""
import http.client
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import client_context, missing, wait_until
from sqlflow_playground import jobs
from sqlflow_playground.plugins.base import SUCCEEDED, TaskPlugin, TaskState

PAGE = 4096
# Bytes that are not text, a quote, a backslash, newlines, a final line without one:
# the download is the file's bytes, whatever they are.
WRITER = ("import sys; out = sys.stdout.buffer\n"
          "for i in range(300):\n"
          "    out.write(b'line %05d \\\"q\\\" \\\\ ' % i + bytes(range(256)) + b'\\n')\n"
          "out.write(b'no newline at the end')")


def download(certs, port, user, path, headers=None):
    """(status, headers, body bytes) of a GET over mutual TLS as ``user``."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                       context=client_context(certs.dir, user))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def process_server(make_server):
    return make_server(enable_process_jobs=True, fetch_page_bytes=PAGE)


@pytest.fixture
def finished_job(process_server, fetch_as):
    """(token, the output file's bytes) of alice's finished process job."""
    alice = fetch_as("alice", process_server.port)
    resp = alice("POST", "/api/jobs", {"task_type": "process", "spec": {
        "command": [sys.executable, "-c", WRITER], "timeout_s": 60}})
    assert resp.status == 201, resp.body
    token = resp.body["token"]
    assert wait_until(lambda: alice("GET", f"/api/jobs/{token}").body["status"] == SUCCEEDED,
                      30)
    path = os.path.join(process_server.config.state_dir, "jobs", token, "output.log")
    with open(path, "rb") as fh:
        data = fh.read()
    assert len(data) > 10 * PAGE and data.endswith(b"no newline at the end")
    return token, data


def test_the_download_is_the_output_file_as_it_is(certs, process_server, finished_job):
    token, data = finished_job
    status, headers, body = download(certs, process_server.port, "alice",
                                     f"/api/jobs/{token}/output")
    assert status == 200 and body == data
    assert headers["content-type"] == "application/octet-stream"
    assert int(headers["content-length"]) == len(data)
    assert headers["accept-ranges"] == "bytes" and "content-range" not in headers


@pytest.mark.parametrize("first,last", [(0, None), (1, None), (PAGE - 1, None), (PAGE, None),
                                        (3 * PAGE + 5, 7 * PAGE + 1), (10, 10), (-1, None),
                                        (5, 10 ** 12)])
def test_a_range_gives_those_bytes_with_206(certs, process_server, finished_job, first, last):
    token, data = finished_job
    first = len(data) - 1 if first == -1 else first
    spec = f"bytes={first}-" + ("" if last is None else str(last))
    status, headers, body = download(certs, process_server.port, "alice",
                                     f"/api/jobs/{token}/output", {"Range": spec})
    end = len(data) if last is None else min(last + 1, len(data))
    assert status == 206 and body == data[first:end]
    assert headers["content-range"] == f"bytes {first}-{end - 1}/{len(data)}"
    assert int(headers["content-length"]) == end - first


@pytest.mark.parametrize("spec", ["bytes=-5", "bytes=5", "items=0-", "bytes=0-1,5-6",
                                  "bytes=a-", "bytes=10-5", "bytes=" + "9" * 19 + "-", ""])
def test_a_malformed_range_is_a_json_400(certs, process_server, finished_job, spec):
    token, _ = finished_job
    status, headers, body = download(certs, process_server.port, "alice",
                                     f"/api/jobs/{token}/output", {"Range": spec})
    assert status == 400 and headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and "Range" in error["message"]


def test_a_range_past_the_end_is_a_json_416(certs, process_server, finished_job):
    token, data = finished_job
    for start in (len(data), len(data) + 1, 10 ** 15):
        status, headers, body = download(certs, process_server.port, "alice",
                                         f"/api/jobs/{token}/output",
                                         {"Range": f"bytes={start}-"})
        assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
        assert json.loads(body)["error"]["code"] == "range_not_satisfiable"


def test_another_users_job_is_404_as_a_fetch_is(certs, process_server, finished_job, fetch_as):
    token, _ = finished_job
    fetched = fetch_as("bob", process_server.port)("GET", f"/api/jobs/{token}")
    for path in (f"/api/jobs/{token}/output", "/api/jobs/nosuchtoken/output"):
        for headers in ({}, {"Range": "bytes=0-"}, {"Range": "bytes=-1"}):
            status, _, body = download(certs, process_server.port, "bob", path, headers)
            assert status == 404 == fetched.status
            assert json.loads(body)["error"]["code"] == fetched.body["error"]["code"]
            assert b"line 0" not in body


def test_a_frontend_certificate_downloads_anyones(certs, process_server, finished_job):
    token, data = finished_job
    status, _, body = download(certs, process_server.port, "front",
                               f"/api/jobs/{token}/output")
    assert status == 200 and body == data


def test_a_download_reads_half_a_page_at_a_time_into_two_buffers(certs, process_server,
                                                           finished_job, monkeypatch):
    token, data = finished_job
    seen = []
    read_into = jobs.Download.read_into

    def recording(self, view, offset):
        seen.append((id(view.obj), len(view), offset))
        return read_into(self, view, offset)
    monkeypatch.setattr(jobs.Download, "read_into", recording)
    status, _, body = download(certs, process_server.port, "alice",
                               f"/api/jobs/{token}/output")
    assert status == 200 and body == data
    half = PAGE // 2
    assert len(seen) == -(-len(data) // half)  # one read per half page: a page in all
    assert all(size == half for _, size, _ in seen)
    assert len({buffer for buffer, _, _ in seen}) == 2
    assert [offset for _, _, offset in seen] == list(range(0, len(data), half))


class NoFilePlugin(TaskPlugin):
    """A task type whose output is not one file (as pod jobs: the cluster holds it)."""

    task_type, version = "nofile", "v1"

    def create(self, ctx, spec):
        return {}

    def get(self, ctx, meta, cursor):
        return TaskState(SUCCEEDED, "ok", [], cursor=cursor)

    def delete(self, ctx, meta):
        pass


def test_a_task_type_without_an_output_file_is_409(certs, make_server, fetch_as):
    server = make_server()
    server.gateway.registry.register(NoFilePlugin())
    token = fetch_as("alice", server.port)("POST", "/api/jobs", {
        "task_type": "nofile", "spec": {}}).body["token"]
    status, _, body = download(certs, server.port, "alice", f"/api/jobs/{token}/output")
    assert status == 409 and json.loads(body)["error"]["code"] == "conflict"
    status, _, _ = download(certs, server.port, "bob", f"/api/jobs/{token}/output")
    assert status == 404  # (not visible comes first)


def test_an_output_not_begun_is_an_empty_download(certs, process_server, fetch_as):
    alice = fetch_as("alice", process_server.port)
    token = alice("POST", "/api/jobs", {"task_type": "process", "spec": {
        "command": [sys.executable, "-c", "import time; time.sleep(30)"],
        "timeout_s": 60}}).body["token"]
    try:
        status, headers, body = download(certs, process_server.port, "alice",
                                         f"/api/jobs/{token}/output")
        assert (status, body, headers["content-length"]) == (200, b"", "0")
        status, _, body = download(certs, process_server.port, "alice",
                                   f"/api/jobs/{token}/output", {"Range": "bytes=1-"})
        assert status == 416
    finally:
        alice("DELETE", f"/api/jobs/{token}")


# -- the allocator: page buffers go back to the system when freed ------------------------

PROBE = textwrap.dedent("""
    import sys
    from sqlflow_playground import jobs
    def rss():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) << 10 for l in fh if l.startswith("VmRSS:"))
    print(jobs.release_large_buffers())
    base = rss()
    for _ in range(8):  # freed at once: glibc would raise its threshold past this size
        page = bytearray(8 << 20)
        page[::4096] = b"x" * len(page[::4096])  # touched: resident
        del page
    print(rss() - base)
""")


def test_freed_page_buffers_are_given_back_to_the_system(tmp_path):
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        glibc = None
    if not sys.platform.startswith("linux") or not glibc:
        missing("Linux with glibc (mallopt and /proc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) < 2 << 20  # not the 8 MiB a heap would keep


def test_the_operators_malloc_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert jobs.release_large_buffers() is False


def test_a_job_run_by_another_replica_downloads_from_what_it_shipped(certs, make_server,
                                                                     tmp_path, fetch_as):
    """Any replica answers (issue 10): the job runs in replica0; replica1 serves its
    output from the store, the same bytes, ranges included."""
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = [make_server(db_url=store, state_dir=str(tmp_path / f"replica{i}"),
                        replica=f"replica{i}", enable_process_jobs=True, fetch_page_bytes=PAGE)
            for i in range(2)]
    alice = fetch_as("alice", a.port)
    token = alice("POST", "/api/jobs", {"task_type": "process", "spec": {
        "command": [sys.executable, "-c", WRITER], "timeout_s": 60}}).body["token"]
    via_b = fetch_as("alice", b.port)
    # (a job ends in the store once all its output was shipped there)
    assert wait_until(lambda: via_b("GET", f"/api/jobs/{token}").body["status"] == SUCCEEDED,
                      30)
    with open(os.path.join(str(tmp_path / "replica0"), "jobs", token, "output.log"),
              "rb") as fh:
        data = fh.read()
    status, _, body = download(certs, b.port, "alice", f"/api/jobs/{token}/output")
    assert status == 200 and body == data
    status, headers, body = download(certs, b.port, "alice", f"/api/jobs/{token}/output",
                                     {"Range": f"bytes={PAGE + 3}-"})
    assert status == 206 and body == data[PAGE + 3:]
    assert headers["content-range"] == f"bytes {PAGE + 3}-{len(data) - 1}/{len(data)}"
    status, _, _ = download(certs, b.port, "bob", f"/api/jobs/{token}/output")
    assert status == 404


def test_a_download_asks_the_kernel_to_read_ahead_each_part_of_the_file_once(tmp_path,
                                                                              monkeypatch):
    """From disk, reads would wait for it while nothing is sent: a download asks for the
    next READ_AHEAD_BYTES ahead of its reads (POSIX_FADV_WILLNEED), each byte once, never
    past what it sends."""
    path = tmp_path / "output.log"
    size = 3 * jobs.READ_AHEAD_BYTES + 12345
    with open(path, "wb") as fh:
        fh.truncate(size)
    advised = []
    monkeypatch.setattr(jobs.os, "posix_fadvise",
                        lambda fd, start, length, advice: advised.append((start, length, advice)))
    start, stop = 1000, size - 500  # a Range
    download = jobs.Download(str(path), start, stop, size, True, None, "t")
    view, offset = memoryview(bytearray(512 << 10)), start
    try:
        while True:
            n = download.read_into(view, offset)
            if not n:
                break
            # what is read now was asked for before (or with) this read
            assert any(s <= offset and offset + n <= s + ln for s, ln, _ in advised)
            offset += n
    finally:
        download.close()
    assert offset == stop
    assert {advice for _, _, advice in advised} == {jobs.os.POSIX_FADV_WILLNEED}
    # contiguous, from the first byte to the last, nothing twice, nothing past stop
    assert advised[0][0] == start
    assert all(a[0] + a[1] == b[0] for a, b in zip(advised, advised[1:]))
    assert advised[-1][0] + advised[-1][1] == stop
    assert 4 <= len(advised) <= 2 * size // jobs.READ_AHEAD_BYTES + 2
