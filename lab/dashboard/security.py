"""Who may use the dashboard (pure): the Host it must be asked by, and the token actions need.

A page on another site in the same browser can make the browser send requests to
127.0.0.1:8090. Two rules stop it:
- DNS rebinding: a name the attacker controls is made to resolve to 127.0.0.1, so the page's
  own origin reaches the dashboard and can read answers. The browser still sends that name as
  Host, so only the address the dashboard serves (or `localhost` for a loopback one) passes.
- Cross-site requests: a foreign page can still POST blind. Every action needs a token made at
  start and written only into the dashboard's own page, sent as a header (which also makes the
  browser ask first, a pre-flight the dashboard never approves).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

TOKEN_HEADER = "x-lab-token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_ok(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), token.encode())


def split_host(header: str) -> tuple[str, int | None] | None:
    """`host[:port]` (IPv6 in brackets) as (host, port); None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        host, rest = header[1:end], header[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = header.partition(":")
    if not host:
        return None
    if not port_text:
        return host, None
    if not port_text.isdigit():
        return None
    return host, int(port_text)


def host_allowed(header: str | None, bind: str, port: int) -> bool:
    """Does a Host header name the address the dashboard serves (bind:port)?

    Accepted: the bind address itself; `localhost` when it is a loopback address; and, when it
    listens on every address (0.0.0.0 or ::), any IP address, but still no other name: names
    are what DNS rebinding uses.
    """
    if not header:
        return False
    parsed = split_host(header)
    if parsed is None:
        return False
    host, given_port = parsed
    if (given_port if given_port is not None else 80) != port:
        return False
    served = ipaddress.ip_address(bind)
    if host == "localhost":
        return served.is_loopback or served.is_unspecified
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address == served or served.is_unspecified


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """A browser's Origin, when sent, must be the dashboard itself (same scheme, host and port)."""
    if origin is None:
        return True  # not a browser (curl, tests): the token is what counts
    return bool(host_header) and origin.strip().lower() == f"http://{str(host_header).strip().lower()}"
