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
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

ENV_PATH = "SQLFLOW_JUPYTER_ENV_PATH"
SERVER_VARS = ("SQLFLOW_PLAYGROUND_SERVER", "SQLFLOW_PLAYGROUND_SERVRE")  # + the seed's spelling
CA_VAR, CERT_VAR, KEY_VAR = ("SQLFLOW_PLAYGROUND_SERVER_CA", "SQLFLOW_PLAYGROUND_CLIENT_CERT",
                             "SQLFLOW_PLAYGROUND_CLIENT_KEY")
USER_ID_ENV = "SQLFLOW_PLAYGROUND_USER_ID_ENV"
CHECK_HOSTNAME_ENV = "SQLFLOW_PLAYGROUND_CHECK_HOSTNAME"
MAX_IDLE_CONNECTIONS = 4
# Errors of a keep-alive connection the server has closed meanwhile: worth one new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          ssl.SSLEOFError, ssl.SSLZeroReturnError)

# create_db: each POST waits this long for the database before the server reports progress;
# the client waits for the server's provision timeout plus this margin (its claim's).
CREATE_POLL_S, CREATE_MARGIN_S = 2.0, 30.0
PROBE_S = 3.0  # a diagnosing connection waits this long for the server's TLS alert
# The server's TLS alert -> (code, cause and fix); {cert} is the client's certificate.
ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": (
        "unknown_ca", "the server does not know the CA that signed your certificate {cert}: "
                      "use a certificate issued by this playground's maintainer"),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "certificate_expired", "your certificate {cert} has expired: "
                               "ask the maintainer for a new one"),
    "SSLV3_ALERT_CERTIFICATE_REVOKED": (
        "certificate_revoked", "your certificate {cert} has been revoked: "
                               "ask the maintainer for a new one"),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "certificate_unsuitable", "your certificate {cert} is not a client certificate: "
                                  "ask the maintainer for a client certificate"),
}
HOST_MISMATCH = {62: "DNS", 64: "IP"}  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH

Body = Dict[str, Any]


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class PlaygroundClientError(Exception):
    """An error answer of the server (``status``, ``code`` and ``message`` of its JSON
    error), or ``status`` 0 when the server could not be reached at all."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def _render_traceback_(self) -> List[str]:  # IPython: this line instead of a traceback
        return [f"{type(self).__name__}: {self.message}"]


class CertificateProblem(PlaygroundClientError, ValueError):
    """Our own certificate cannot work (expired, key not matching): found before connecting."""

    def __init__(self, code: str, message: str):
        super().__init__(0, code, message)


def provisioning_line(body: Body) -> str:
    """'provisioning your database… 12 s (pulling the image)' of a create_db progress body."""
    phase = f" ({body['phase']})" if body.get("phase") else ""
    return f"provisioning your database… {body.get('elapsed_s', 0):.0f} s{phase}"


def _load_certificates(ca: str, cert: str, key: str,
                       check_hostname: bool) -> Tuple[ssl.SSLContext, str]:
    """The deployed magic's TLS (CA pinned, our certificate, no hostname check unless asked)
    and how to name our certificate in messages; a certificate that cannot work is a
    CertificateProblem saying what to do."""
    for what, path in (("CA certificate", ca), ("certificate", cert), ("key", key)):
        if not os.path.isfile(path):
            raise CertificateProblem("no_such_file", f"your {what} file {path} does not exist")
    info = _decode_certificate(cert)
    named = f"({info.get('subject', '?')}, {cert})"
    now = time.time()
    if info.get("notAfter") and ssl.cert_time_to_seconds(info["notAfter"]) < now:
        raise CertificateProblem("certificate_expired", f"your certificate {named} expired on "
                                 f"{info['notAfter']}: ask the maintainer for a new one")
    if info.get("notBefore") and ssl.cert_time_to_seconds(info["notBefore"]) > now:
        raise CertificateProblem("certificate_not_yet_valid", f"your certificate {named} is "
                                 f"valid only from {info['notBefore']}: check this computer's "
                                 "clock")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise CertificateProblem("bad_ca_file", f"cannot read the CA certificate {ca} ({e}): "
                                 "ask the maintainer for the playground's ca.crt") from None
    ctx.check_hostname = check_hostname
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise CertificateProblem(
                "key_mismatch", f"your key {key} does not belong to your certificate {named}: "
                "use the key issued with it (NAME.key next to NAME.crt)") from None
        raise CertificateProblem("bad_certificate", f"cannot load your certificate {cert} and "
                                 f"key {key} ({e}): they must be PEM files") from None
    return ctx, named


def _decode_certificate(path: str) -> Dict[str, str]:
    """``subject`` ("CN=alice"), ``notBefore`` and ``notAfter`` of a PEM certificate; {} if
    it cannot be read here (the TLS library then says why)."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ssl.SSLError, ValueError):
        return {}
    names = {k: v for rdn in decoded.get("subject", ()) for k, v in rdn}
    subject = f"CN={names['commonName']}" if "commonName" in names else "no common name"
    return {"subject": subject, "notBefore": decoded.get("notBefore", ""),
            "notAfter": decoded.get("notAfter", "")}


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


class _PlainToTLS(Exception):
    """Plain HTTP was sent to a port that speaks TLS."""


# -- the client ----------------------------------------------------------------------

class PlaygroundClient:
    """One object for every route. Thread-safe: idle keep-alive connections are kept in a
    small pool, so a long-poll in one thread never holds up a heart beat in another."""

    def __init__(self, server: str, ca: Optional[str] = None, cert: Optional[str] = None,
                 key: Optional[str] = None, user_id: Optional[str] = None,
                 timeout: float = 30.0, check_hostname: bool = False):
        url = urllib.parse.urlsplit(server if "://" in server else "https://" + server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"server must look like https://HOST:PORT, not {server!r}")
        self.server, self.user_id, self.timeout = server, user_id, timeout
        self._host, self._prefix = url.hostname, url.path.rstrip("/")
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._context: Optional[ssl.SSLContext] = None
        self._named = ""  # our certificate, as messages name it
        if url.scheme == "https":
            if not (ca and cert and key):
                raise ValueError("https needs ca (the server's CA), cert and key (yours)")
            self._context, self._named = _load_certificates(
                *map(os.path.expanduser, (ca, cert, key)), check_hostname)
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None,
                 **overrides: Any) -> "PlaygroundClient":
        """Settings from ``environ`` and the ``SQLFLOW_JUPYTER_ENV_PATH`` file; ``overrides``
        (server, ca, cert, key, user_id, timeout) that are not None win. Without
        ``SQLFLOW_PLAYGROUND_USER_ID_ENV`` the user id is the certificate's own identity.
        ``SQLFLOW_PLAYGROUND_CHECK_HOSTNAME=1`` makes the server's certificate name its host."""
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
        check = overrides.get("check_hostname")
        if check is None:
            check = env.get(CHECK_HOSTNAME_ENV, "").lower() in ("1", "true", "yes")
        return cls(server, user_id=user_id, timeout=overrides.get("timeout") or 30.0,
                   check_hostname=check, **tls)

    # -- routes ---------------------------------------------------------------------

    def create_db(self, user_id: Optional[str] = None, timeout: Optional[float] = None,
                  on_progress: Optional[Callable[[Body], None]] = None) -> Body:
        """The user's database (``data_source``, ``created``, …), waited for while it is
        provisioned: up to ``timeout`` seconds, by default the provision timeout the server
        states plus a margin. ``on_progress`` sees each progress body meanwhile (``phase``,
        None if the backend cannot tell, ``elapsed_s``, ``provision_timeout_s``; see
        ``provisioning_line``). Running out of time is a "still_provisioning" error: the
        server carries on, and a later create_db returns the database."""
        started = time.monotonic()
        wait = CREATE_POLL_S if timeout is None else max(0.0, min(CREATE_POLL_S, timeout))
        body = {**self._who(user_id), "wait": wait}
        while True:
            try:
                answer = self._request("POST", "/api/create_db", body, wait=wait)
            except PlaygroundClientError as e:
                if not (e.status == 400 and "unknown field(s): wait" in e.message):
                    raise
                # A server from before progress reports: one POST, answered when it is ready.
                return self._request("POST", "/api/create_db", self._who(user_id),
                                     wait=CREATE_MARGIN_S + (timeout or 180.0))
            if "data_source" in answer:
                return answer
            if on_progress is not None:
                on_progress(answer)
            limit = answer["provision_timeout_s"] + CREATE_MARGIN_S if timeout is None \
                else timeout
            waited = time.monotonic() - started
            if waited >= limit:
                phase = f", {answer['phase']}" if answer.get("phase") else ""
                raise PlaygroundClientError(
                    0, "still_provisioning", f"your database is still being provisioned after "
                    f"{waited:.0f} s (server-side {answer.get('elapsed_s', 0):.0f} s{phase}); "
                    "the server carries on: run create-db again in a minute")

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
                if conn.sock is None:
                    conn.connect()
            except OSError as e:
                conn.close()
                raise self._cannot_connect(e) from None
            try:
                conn.timeout = self.timeout + wait
                conn.sock.settimeout(conn.timeout)
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE as e:
                conn.close()
                if reused:  # closed while idle, before our request: try a new connection
                    continue
                raise self._unreachable(e, fresh=True) from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise self._unreachable(e, fresh=not reused) from None
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

    # -- why a connection failed: one line with the cause and the fix --------------------

    def _cannot_connect(self, error: OSError) -> PlaygroundClientError:
        """An error of connecting (TCP, then the TLS handshake)."""
        where = f"{self._host}:{self._port}"
        if isinstance(error, ConnectionRefusedError):
            return PlaygroundClientError(0, "server_down", f"nothing listens on {where} "
                                         "(connection refused): the server is down, or the "
                                         "address is wrong")
        if isinstance(error, TimeoutError):
            return PlaygroundClientError(0, "server_down", f"no answer from {where} within "
                                         f"{self.timeout:g} s: the server is down, or a "
                                         "firewall is in the way")
        if isinstance(error, socket.gaierror):
            return PlaygroundClientError(0, "unknown_host", f"cannot resolve {self._host} "
                                         f"({error.strerror}): check the server's address")
        return self._unreachable(error, fresh=True)

    def _unreachable(self, error: BaseException, fresh: bool = False) -> PlaygroundClientError:
        """An error after connecting. The server's TLS alert may arrive only at the first
        read, or be lost to a reset after our request was sent: a fresh connection that
        broke that way is diagnosed with one that sends nothing."""
        broken = (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError,
                  http.client.RemoteDisconnected)
        if fresh and isinstance(error, broken):
            error = self._probe() or error
        known = self._explain(error)
        if known:
            return PlaygroundClientError(0, *known)
        if isinstance(error, TimeoutError):
            return PlaygroundClientError(0, "timeout", f"no answer from {self.server}")
        return PlaygroundClientError(0, "unreachable", f"cannot reach {self.server}: {error}")

    def _explain(self, error: BaseException) -> Optional[Tuple[str, str]]:
        """(code, cause and fix) of a TLS failure, None if it is not one we know."""
        reason = getattr(error, "reason", None)
        named = self._named
        if self._context is None:
            if isinstance(error, _PlainToTLS):
                return ("tls_port", f"{self._host}:{self._port} speaks HTTPS: write "
                        f"https://{self._host}:{self._port} and give your CA, certificate "
                        "and key (SQLFLOW_PLAYGROUND_SERVER_CA, _CLIENT_CERT, _CLIENT_KEY)")
            return None
        if reason in ALERTS:
            code, text = ALERTS[reason]
            return code, text.format(cert=named)
        if isinstance(error, ssl.SSLCertVerificationError):
            if error.verify_code in HOST_MISMATCH:
                san = f"{HOST_MISMATCH[error.verify_code]}:{self._host}"
                return ("wrong_host", f"the server's certificate does not name {self._host}: "
                        "connect with a name it was issued for, or ask the maintainer to "
                        f"re-issue it with --san {san}")
            return ("server_not_trusted", f"the server at {self._host}:{self._port} is not "
                    f"one your CA file vouches for ({error.verify_message}): check the "
                    "address, or ask the maintainer for the playground's ca.crt")
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"):
            return ("not_tls", f"{self._host}:{self._port} does not speak TLS: check the "
                    "port, or write http:// if the server runs with --insecure")
        if isinstance(error, ssl.SSLError) and "ALERT" in str(reason):
            return ("certificate_refused", f"the server refused your certificate {named} "
                    f"({reason}): ask the maintainer for a new one")
        return None

    def _probe(self) -> Optional[BaseException]:
        """Why the server refuses us, seen on a new connection that sends nothing, so the
        server's alert is not lost to a reset; None if it then looks fine."""
        if self._context is None:  # plain HTTP: is it a TLS port?
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        else:
            ctx = self._context
        try:
            with socket.create_connection((self._host, self._port), PROBE_S) as raw, \
                    ctx.wrap_socket(raw, server_hostname=self._host) as tls:
                if self._context is None:
                    return _PlainToTLS()  # it completed a TLS handshake
                tls.recv(1)  # a server that accepted us waits for a request: a timeout
        except ssl.SSLError as e:
            if self._context is None:  # an alert is TLS too (e.g. "certificate required")
                return _PlainToTLS() if "ALERT" in str(e.reason) else None
            return e
        except OSError:
            return None
        return None

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
