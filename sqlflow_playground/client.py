"""Python client of the playground: every route over mutual TLS, standard library only.

    client = PlaygroundClient.from_env()      # the variables the notebook magic reads
    client.create_db()["data_source"]
    result = client.run("sql", {"sql": "SELECT 1 AS one"})
    result["status"], result["responses"]

It uses ``http.client`` rather than an async client so that it works the same in a
script, a thread, and a notebook whose event loop is already running.
"""
import http.client
import json
import os
import re
import ssl
import threading
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

ENV_PATH = "SQLFLOW_JUPYTER_ENV_PATH"
SERVER_VARS = ("SQLFLOW_PLAYGROUND_SERVER", "SQLFLOW_PLAYGROUND_SERVRE")  # + the seed's spelling
CA_VAR, CERT_VAR, KEY_VAR = ("SQLFLOW_PLAYGROUND_SERVER_CA", "SQLFLOW_PLAYGROUND_CLIENT_CERT",
                             "SQLFLOW_PLAYGROUND_CLIENT_KEY")
USER_ID_ENV = "SQLFLOW_PLAYGROUND_USER_ID_ENV"
MAX_IDLE_CONNECTIONS = 4
# Errors of a keep-alive connection the server has closed meanwhile: worth one new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ssl.SSLEOFError, ssl.SSLZeroReturnError)

Body = Dict[str, Any]


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class PlaygroundClientError(Exception):
    """An error answer of the server (``status``, ``code`` and ``message`` of its JSON
    error), or ``status`` 0 when the server could not be reached at all."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


# -- configuration -----------------------------------------------------------------

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_DOUBLE = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*(?:#.*)?$')
_SINGLE = re.compile(r"^'([^']*)'\s*(?:#.*)?$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def read_env_file(path: str) -> Dict[str, str]:
    """``KEY=value`` lines of a dotenv-style file: comments, ``export``, single quotes
    (literal) and double quotes (backslash escapes); an unquoted value ends at `` #``."""
    values = {}
    with open(os.path.expanduser(path), encoding="utf-8") as fh:
        for line in fh:
            match = _LINE.match(line)
            if not match or line.lstrip().startswith("#"):
                continue
            key, raw = match.groups()
            quoted = _DOUBLE.match(raw)
            if quoted:
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)),
                               quoted.group(1))
            else:
                quoted = _SINGLE.match(raw)
                value = quoted.group(1) if quoted else re.split(r"\s+#", raw, 1)[0]
            values[key] = value
    return values


def environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``environ`` (default ``os.environ``) over the values of the file named by
    ``SQLFLOW_JUPYTER_ENV_PATH``: a variable already set is never overridden by the file."""
    env = dict(os.environ if environ is None else environ)
    path = env.get(ENV_PATH)
    if path:
        if not os.path.isfile(os.path.expanduser(path)):
            raise ValueError(f"{ENV_PATH}={path}: no such file")
        env = {**read_env_file(path), **env}
    return env


# -- the client ----------------------------------------------------------------------

class PlaygroundClient:
    """One object for every route. Thread-safe: idle keep-alive connections are kept in a
    small pool, so a long-poll in one thread never holds up a heart beat in another."""

    def __init__(self, server: str, ca: Optional[str] = None, cert: Optional[str] = None,
                 key: Optional[str] = None, user_id: Optional[str] = None,
                 timeout: float = 30.0):
        url = urllib.parse.urlsplit(server if "://" in server else "https://" + server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"server must look like https://HOST:PORT, not {server!r}")
        self.server, self.user_id, self.timeout = server, user_id, timeout
        self._host, self._prefix = url.hostname, url.path.rstrip("/")
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._context: Optional[ssl.SSLContext] = None
        if url.scheme == "https":
            if not (ca and cert and key):
                raise ValueError("https needs ca (the server's CA), cert and key (yours)")
            try:  # the deployed magic's TLS: CA pinned, our certificate, no hostname check
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                                 cafile=os.path.expanduser(ca))
                ctx.check_hostname = False
                ctx.load_cert_chain(os.path.expanduser(cert), os.path.expanduser(key))
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"cannot load the certificates ({ca}, {cert}, {key}): {e}")
            self._context = ctx
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None,
                 **overrides: Any) -> "PlaygroundClient":
        """Settings from ``environ`` and the ``SQLFLOW_JUPYTER_ENV_PATH`` file; ``overrides``
        (server, ca, cert, key, user_id, timeout) that are not None win. Without
        ``SQLFLOW_PLAYGROUND_USER_ID_ENV`` the user id is the certificate's own identity."""
        env = environment(environ)

        def setting(name: str, *variables: str) -> Optional[str]:
            if overrides.get(name) is not None:
                return overrides[name]
            found = [env[v] for v in variables if env.get(v)]
            if not found:
                raise ValueError(f"{variables[0]} is not set and no {name} was given")
            return found[0]

        server = setting("server", *SERVER_VARS)
        tls = {} if server.startswith("http://") else {
            "ca": setting("ca", CA_VAR), "cert": setting("cert", CERT_VAR),
            "key": setting("key", KEY_VAR)}
        user_id = overrides.get("user_id")
        if user_id is None and env.get(USER_ID_ENV):
            user_id = env.get(env[USER_ID_ENV])
            if not user_id:
                raise ValueError(f"{USER_ID_ENV} names {env[USER_ID_ENV]}, which is not set")
        return cls(server, user_id=user_id, timeout=overrides.get("timeout") or 30.0, **tls)

    # -- routes ---------------------------------------------------------------------

    def create_db(self, user_id: Optional[str] = None) -> Body:
        return self._request("POST", "/api/create_db", self._who(user_id))

    def heart_beat(self, user_id: Optional[str] = None) -> Body:
        return self._request("GET", "/api/heart_beat", query=self._who(user_id))

    def delete_db(self, user_id: Optional[str] = None) -> Body:
        return self._request("POST", "/api/delete_db", self._who(user_id))

    def user(self, user_id: Optional[str] = None) -> Body:
        user_id = user_id or self.user_id
        if not user_id:
            raise ValueError(f"a user id is needed (argument, or {USER_ID_ENV})")
        return self._request("GET", "/api/users/" + _quote(user_id))

    def users(self) -> Body:
        return self._request("GET", "/api/users")

    def submit(self, task_type: str, spec: Any, version: Optional[str] = None,
               user_id: Optional[str] = None, fetch_timeout_s: Optional[float] = None) -> Body:
        """``{"token", "status"}`` of the new job."""
        body = {"task_type": task_type, "spec": spec, "version": version,
                "fetch_timeout_s": fetch_timeout_s, **self._who(user_id)}
        return self._request("POST", "/api/jobs", {k: v for k, v in body.items()
                                                   if v is not None})

    def fetch(self, token: str, since: str = "", wait: float = 0) -> Body:
        query = {"since": since or None, "wait": wait or None}
        return self._request("GET", "/api/jobs/" + _quote(token), query=query, wait=wait)

    def iter_responses(self, token: str, wait: float = 10, since: str = "",
                       on_status: Optional[Callable[[Body], None]] = None
                       ) -> Iterator[Body]:
        """Yield each response from ``since`` until the job has finished, long-polling with
        ``wait``. ``on_status`` sees every fetch body; the last one is the generator's
        return value (``final = yield from client.iter_responses(token)``)."""
        while True:
            body = self.fetch(token, since, wait)
            if on_status is not None:
                on_status(body)
            yield from body["responses"]
            since = body["next"]
            if body["eof"]:
                return body

    def follow(self, token: str, wait: float = 10,
               on_response: Optional[Callable[[Body], None]] = None,
               on_status: Optional[Callable[[Body], None]] = None) -> Body:
        """Follow the job to its end: the last fetch body with ``responses`` replaced by all
        of them. Ctrl+C (KeyboardInterrupt) cancels the job on the server, then propagates."""
        responses: List[Body] = []
        last: Dict[str, Body] = {}

        def status(body: Body) -> None:
            last["body"] = body
            if on_status is not None:
                on_status(body)
        try:
            for response in self.iter_responses(token, wait, on_status=status):
                responses.append(response)
                if on_response is not None:
                    on_response(response)
        except KeyboardInterrupt:
            try:
                self.cancel(token)
            except PlaygroundClientError:
                pass  # nothing more to do on the way out; the fetch timeout will reap it
            raise
        return {**last["body"], "responses": responses}

    def run(self, task_type: str, spec: Any, version: Optional[str] = None,
            user_id: Optional[str] = None, fetch_timeout_s: Optional[float] = None,
            wait: float = 10, on_response: Optional[Callable[[Body], None]] = None,
            on_status: Optional[Callable[[Body], None]] = None) -> Body:
        """Submit and ``follow``: the final body (``status``, ``message``, …, ``token``)
        with every response of the job in ``responses``. A failed job is not an error here."""
        token = self.submit(task_type, spec, version, user_id, fetch_timeout_s)["token"]
        return self.follow(token, wait, on_response, on_status)

    def cancel(self, token: str) -> Body:
        return self._request("DELETE", "/api/jobs/" + _quote(token))

    def jobs(self, user_id: Optional[str] = None, status: Optional[str] = None) -> Body:
        return self._request("GET", "/api/jobs", query={**self._who(user_id), "status": status})

    def plugins(self) -> Body:
        return self._request("GET", "/plugins/v1")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- HTTP -----------------------------------------------------------------------

    def _who(self, user_id: Optional[str]) -> Dict[str, str]:
        user_id = user_id or self.user_id
        return {"user_id": user_id} if user_id else {}

    def _request(self, method: str, path: str, body: Any = None,
                 query: Optional[Mapping[str, Any]] = None, wait: float = 0) -> Body:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        path = self._prefix + path + ("?" + urllib.parse.urlencode(query) if query else "")
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if payload is None else {"Content-Type": "application/json"}
        while True:
            conn, reused = self._acquire()
            try:
                conn.timeout = self.timeout + wait
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE as e:
                conn.close()
                if reused:  # closed while idle, before our request: try a new connection
                    continue
                raise self._unreachable(e) from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise self._unreachable(e) from e
            except BaseException:  # e.g. Ctrl+C halfway through an answer: unusable now
                conn.close()
                raise
            self._release(conn, resp.will_close)
            return self._decode(resp, raw)

    def _acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._context is None:
            return http.client.HTTPConnection(self._host, self._port, self.timeout), False
        return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                           context=self._context), False

    def _release(self, conn: http.client.HTTPConnection, will_close: bool) -> None:
        with self._lock:
            if not will_close and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def _unreachable(self, error: Exception) -> PlaygroundClientError:
        if isinstance(error, TimeoutError):
            return PlaygroundClientError(0, "timeout", f"no answer from {self.server}")
        return PlaygroundClientError(0, "unreachable", f"cannot reach {self.server}: {error}")

    @staticmethod
    def _decode(resp: http.client.HTTPResponse, raw: bytes) -> Body:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if 200 <= resp.status < 300 and body is not None:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            raise PlaygroundClientError(resp.status, str(error.get("code", "error")),
                                        str(error.get("message", "")))
        code = (resp.reason or "error").lower().replace(" ", "_")
        text = raw.decode("utf-8", "replace").strip()[:200]
        raise PlaygroundClientError(resp.status, code, text or resp.reason or "no body")
