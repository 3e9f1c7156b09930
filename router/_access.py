"""Who is calling: an API key, a signed client token (JWT HS256), or, when open, an address.

`Origin` is never a credential: anyone can forge it with curl. CORS only decides whether a
browser may read the answer. With `API_KEYS` or `CLIENT_TOKEN_SECRET` set, every request
except `/health`, preflights and warm-up pings needs a valid key or token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Literal

from router._config import Settings
from router._errors import Unauthorized
from router._http_types import HttpRequest

AuthMode = Literal["open", "required"]
# Subjects become counter keys (and log fields): long or odd ones are hashed to a fixed size.
MAX_SUBJECT_CHARS = 64


def key_id(key: str) -> str:
    """A stable, non-secret id for an API key: a prefix of its SHA-256, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _bounded(kind: str, value: str) -> str:
    if len(value) <= MAX_SUBJECT_CHARS and value.isprintable() and value.strip() == value:
        return f"{kind}:{value}"
    return f"{kind}#{hashlib.sha256(value.encode()).hexdigest()[:24]}"


Network = IPv4Network | IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return any(ip in network for network in proxies)


def client_address(request: HttpRequest, proxies: Sequence[Network] = ()) -> str:
    """The caller's address.

    In the function (no peer), the right-most `x-forwarded-for` entry: DigitalOcean's edge
    appends it (a client can prepend entries, not replace that one). In the service, the
    connection's own address, unless it is one of TRUSTED_PROXIES: then the right-most entry
    that no trusted proxy wrote (each proxy appends the address it saw).
    """
    forwarded = request.header("x-forwarded-for")
    entries = [item.strip() for item in forwarded.split(",") if item.strip()]
    if not request.peer:
        return entries[-1] if entries else "unknown"
    address = request.peer
    while entries and _trusted(address, proxies):
        address = entries.pop()
    return address


@dataclass(frozen=True, slots=True)
class Admission:
    """A request whose headers the router has checked (`ChatRouter.admit`) before its body was
    read: the route, CORS, and, where one is needed, the credential (`subject`, as `Access`
    named the caller) and the quota. `by` is the access layer that checked it: only that
    router takes it. No field of a request ever stands in for this."""

    request: HttpRequest
    subject: str | None
    by: Access


class Access:
    """The access rules, compiled once per container from the settings."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.keys = tuple(key.encode() for key in settings.api_keys)
        self.key_ids = tuple(key_id(key) for key in settings.api_keys)
        self.secret = settings.client_token_secret
        self.max_ttl_s = settings.client_token_max_ttl_s
        self.leeway_s = settings.client_token_leeway_s
        self.proxies = tuple(ip_network(item, strict=False) for item in settings.trusted_proxies)
        self.clock = clock

    @property
    def mode(self) -> AuthMode:
        """`open` when neither API_KEYS nor CLIENT_TOKEN_SECRET is set (shown by /health)."""
        return "required" if self.keys or self.secret else "open"

    def subject(self, request: HttpRequest) -> str:
        """Check the request's credential and name who sent it (raises Unauthorized)."""
        if self.mode == "open":
            return _bounded("ip", client_address(request, self.proxies))
        auth = request.header("authorization")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.header("x-api-key")
        matched = self._key_index(given)
        if matched is not None:
            return f"key:{self.key_ids[matched]}"
        if self.secret and (given.count(".") == 2 or not self.keys):
            return _bounded("user", self._token_subject(given))
        raise Unauthorized("missing or invalid API key")

    def may_see_details(self, request: HttpRequest) -> bool:
        """Whether /health may tell this caller which backend fails: a valid key or token, or
        an open function (where anyone may call the backends anyway). Never raises."""
        if self.mode == "open":
            return True
        try:
            self.subject(request)
        except Unauthorized:
            return False
        return True

    def _key_index(self, given: str) -> int | None:
        # Compare against every key, always, so timing says nothing about which one was close.
        matched: int | None = None
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(given.encode(), key) and matched is None:
                matched = index
        return matched

    def _token_subject(self, token: str) -> str:
        if not token:
            raise Unauthorized("a client token is required", code="invalid_token")
        import jwt  # only where tokens are configured: PyJWT costs the cold start ~15 ms

        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"],
                                options={"require": ["exp", "sub"]}, leeway=self.leeway_s)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the client token has expired", code="invalid_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the client token lacks the '{exc.claim}' claim",
                               code="invalid_token") from None
        except jwt.PyJWTError:
            # The library's message may quote the token's parts: give a fixed one instead.
            raise Unauthorized("the client token is not valid", code="invalid_token") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("the client token's 'sub' must be a non-empty string",
                               code="invalid_token")
        if float(claims["exp"]) - self.clock() > self.max_ttl_s + self.leeway_s:
            raise Unauthorized(f"the client token lives longer than {self.max_ttl_s} s",
                               code="invalid_token")
        return subject
