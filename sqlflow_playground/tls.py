"""The server's mutual-TLS context: client certificate required, TLS >= 1.2, optional CRL."""
import ssl
from typing import Optional


def make_server_context(ca_crt: str, server_crt: str, server_key: str,
                        crl: Optional[str] = None) -> ssl.SSLContext:
    """An SSLContext that refuses any client without a valid, unrevoked client certificate.

    OpenSSL checks the client certificate's purpose (``clientAuth``) on its own when the
    server verifies a peer, so the server's own certificate cannot be used as a client one.
    Not X509-strict on purpose: the seed's CA is an X.509 v1 certificate, and the
    client certificates it issued must keep working.
    A CRL cannot be unloaded from a context, so reloading means building a new context.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(server_crt, server_key)
    ctx.load_verify_locations(cafile=ca_crt)
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
