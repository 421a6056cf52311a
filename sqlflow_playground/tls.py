"""The server's mutual-TLS context: client certificate required, TLS >= 1.2, optional CRL."""
import ssl
from typing import Optional


DEFAULT_SESSION_TICKETS = 1


def make_server_context(ca_crt: str, server_crt: str, server_key: str,
                        crl: Optional[str] = None,
                        session_tickets: int = DEFAULT_SESSION_TICKETS) -> ssl.SSLContext:
    """An SSLContext that refuses any client without a valid, unrevoked client certificate.

    OpenSSL checks the client certificate's purpose (``clientAuth``) on its own when the
    server verifies a peer, so the server's own certificate cannot be used as a client one.
    Not X509-strict on purpose: the seed's CA is an X.509 v1 certificate, and the
    client certificates it issued must keep working.
    A CRL cannot be unloaded from a context, so reloading means building a new context.

    ``session_tickets``: TLS 1.3 tickets sent after each full handshake (OpenSSL sends 2
    by default; each is an encryption of the session, client certificate included, and a
    record written). A client that resumes with one skips the certificate signature and
    verification; the session carries the client certificate of its full handshake, so
    the identity is the same. Tickets are encrypted with a key of this context: a reload
    (SIGHUP, new CRL) builds a new context, and a ticket from before it is no longer
    accepted: the client makes a full handshake and the CRL is checked. 0: no tickets.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(server_crt, server_key)
    ctx.load_verify_locations(cafile=ca_crt)
    ctx.num_tickets = session_tickets
    if crl:
        ctx.load_verify_locations(cafile=crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def make_grpc_context(ca_crt: str, server_crt: str, server_key: str,
                      crl: Optional[str] = None) -> ssl.SSLContext:
    """The gRPC door's context (``tlsrelay.py``): the same certificates, CA, CRL and TLS
    floor, but a client certificate is asked for, not required (the deployed SQLFlow
    client has none); one that is presented must verify. ALPN ``h2``: gRPC needs it."""
    ctx = make_server_context(ca_crt, server_crt, server_key, crl)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2"])
    return ctx
