"""Who may write through the web app, and from where.

- ``check_bind``: any host but the loopback needs a token (refused at start-up otherwise).
- ``Guard.check_host``: on a loopback bind every request's ``Host`` must name this server
  (``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``): a page on another site that
  rebinds its DNS name to 127.0.0.1 gets 403, never the record.
- ``Guard.check_write``: a write (review, activate, rollback, sign-in) must come from the
  app's own origin (its ``Origin``, when the browser sends one, equals ``http://<Host>``; a
  ``Sec-Fetch-Site: cross-site`` is refused): 403. With a token, it must carry the token, as
  ``X-Defectwatch-Token`` / ``Authorization: Bearer`` (API clients) or as the session cookie
  the sign-in page sets (``HttpOnly``, ``SameSite=Strict``): else 401.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

from defectwatch.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
COOKIE = "defectwatch_session"
TOKEN_HEADER = "x-defectwatch-token"


class Forbidden(Exception):
    """A request the app refuses: ``status`` 401 or 403, ``message`` says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) is this machine's loopback interface."""
    return host.strip("[]") in LOOPBACK or host.startswith("127.")


def check_bind(host: str, token: str | None) -> None:
    """ConfigError when the app would listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host}: serving beyond this machine needs a token; pass "
            "--token TOKEN (or set DEFECTWATCH_TOKEN), or keep the default "
            "--host 127.0.0.1"
        )


def loopback_hosts(port: int) -> frozenset[str]:
    """The ``Host`` values a browser on this machine sends to a loopback server."""
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})


@dataclass(frozen=True)
class Guard:
    """The app's protection; ``allowed_hosts`` None: any ``Host`` (a non-loopback bind, which
    has a token)."""

    token: str | None
    read_only: bool
    allowed_hosts: frozenset[str] | None

    def session_value(self) -> str:
        """The session cookie's value: an HMAC of the token (the token itself is never
        stored in the browser)."""
        assert self.token
        return hmac.new(self.token.encode(), b"defectwatch-web-session", hashlib.sha256).hexdigest()

    def check_host(self, request: Request) -> None:
        host = request.headers.get("host", "")
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            raise Forbidden(
                403, f"Host {host!r} is not this server (open it as {min(self.allowed_hosts)})"
            )

    def signed_in(self, request: Request) -> bool:
        """Whether the request carries the token (header or session cookie); always True
        without a token."""
        if not self.token:
            return True
        given = request.headers.get(TOKEN_HEADER)
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return False
        return hmac.compare_digest(cookie.encode(), self.session_value().encode())

    def check_origin(self, request: Request) -> None:
        """403 unless the request comes from the app's own pages (or from no browser page)."""
        self.check_host(request)
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{host}":
            raise Forbidden(
                403, f"a write from {origin!r} is refused: only this app's own pages may write"
            )
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise Forbidden(
                403, "a cross-site write is refused: only this app's own pages may write"
            )

    def check_write(self, request: Request) -> None:
        """What every write passes: the read-only switch, the origin, then the token."""
        if self.read_only:
            raise Forbidden(403, "this server was started with --read-only: it writes nothing")
        self.check_origin(request)
        if not self.signed_in(request):
            raise Forbidden(
                401,
                "this write needs the server's token: send it as the "
                "X-Defectwatch-Token header, or sign in at /login",
            )
