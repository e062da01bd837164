"""How django-axes keys login failures: by account (normalised email) and by client address.

Both callables are named in settings (`AXES_USERNAME_CALLABLE`, `AXES_CLIENT_IP_CALLABLE`) and read
`settings` on every call, so the proxy configuration is whatever the settings say now.
"""

from __future__ import annotations

from ipaddress import ip_address

from django.conf import settings
from django.http import HttpRequest


def normalised_login_email(request: HttpRequest, credentials: dict | None = None) -> str:
    """The account a login attempt targets, as the lower-cased, stripped email.

    Logins are case-insensitive (`UserManager.get_by_natural_key`), so the failure counter must
    be too: otherwise `ALICE@acme.test`, `Alice@acme.test`, ... would each get a fresh budget.
    """
    raw = (credentials or {}).get("username")
    if raw is None:
        raw = request.POST.get("username", "")
    return str(raw or "").strip().lower()


def _valid_ip(value: str) -> str | None:
    try:
        return str(ip_address(value.strip()))
    except ValueError:
        return None


def client_ip_behind_proxies(request: HttpRequest) -> str | None:
    """The address of the client that reached our outermost trusted proxy.

    With `KLAROS_TRUSTED_PROXY_COUNT = N` (N proxies in front of Klaros, each appending the
    address it received the connection from to `X-Forwarded-For`), the client is the N-th entry
    from the right; everything left of it was written by the client and is ignored, so rotating
    that part of the header changes nothing. With N = 0, or when the header holds fewer entries
    than there are proxies (a request that did not come through them), `REMOTE_ADDR` is used.

    Why not django-ipware's `AXES_IPWARE_PROXY_COUNT`: ipware counts proxy addresses *inside*
    the header, so with one proxy and the common header `X-Forwarded-For: <client>` it returns
    no address at all (every such client would share one counter), and its default
    `left-most` order trusts the entry the client controls.
    """
    remote_addr = request.META.get("REMOTE_ADDR", "")
    proxies = getattr(settings, "KLAROS_TRUSTED_PROXY_COUNT", 0)
    if proxies > 0:
        entries = [
            e.strip() for e in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if e.strip()
        ]
        if len(entries) >= proxies:
            return _valid_ip(entries[-proxies]) or _valid_ip(remote_addr)
    return _valid_ip(remote_addr)
