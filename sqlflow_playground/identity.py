"""Who is calling, and whom they may act for (DESIGN §4)."""
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .errors import BadRequest, Forbidden

USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
LEGACY_CN_PREFIX = "sqlflow-playground-"
FRONTEND_OU = "frontend"


@dataclass(frozen=True)
class Identity:
    """The caller as its client certificate names it."""

    name: str
    is_frontend: bool = False

    def act_for(self, user_id: Optional[str]) -> str:
        """The user this request acts for: ``user_id`` if allowed, the caller if omitted."""
        if user_id is None:
            return validate_user_id(self.name)
        user_id = validate_user_id(user_id)
        if user_id != self.name and not self.is_frontend:
            raise Forbidden(f"certificate {self.name!r} may not act for user {user_id!r}")
        return user_id

    def require_frontend(self) -> None:
        if not self.is_frontend:
            raise Forbidden("this route is for frontend certificates only")


def validate_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
        raise BadRequest(
            "user_id must be 1-63 characters: a letter or digit, then letters, digits, _ . @ -")
    return user_id


def identity_from_cert(cert: dict, frontend_names: Iterable[str] = ()) -> Identity:
    """Identity from a certificate in ``ssl.SSLSocket.getpeercert()`` form.

    The CN is the identity; the seed's old script issued ``CN=sqlflow-playground-NAME``,
    which maps to ``NAME``. ``OU=frontend`` or a CN listed in ``--frontend_certs`` may act
    for any user.
    """
    cn, units = None, []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationalUnitName":
                units.append(value)
    if not cn:
        raise Forbidden("client certificate has no common name")
    name = cn[len(LEGACY_CN_PREFIX):] if cn.startswith(LEGACY_CN_PREFIX) else cn
    frontend_names = set(frontend_names)
    is_frontend = FRONTEND_OU in units or cn in frontend_names or name in frontend_names
    return Identity(name=name, is_frontend=is_frontend)
