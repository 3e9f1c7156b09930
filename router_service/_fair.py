"""The door's connection cap, shared fairly between address groups (issue 25).

Every connection of one server registers here (router_service/_door.py is the protocol):

- **Groups.** Addresses count together by /24 (IPv4) and /64 (IPv6): one host, or one office,
  cannot multiply itself by taking neighbouring addresses. A group may hold at most
  `min(MAX_CONNECTIONS_PER_ADDRESS, MAX_CONNECTIONS / active groups)`: the share shrinks as
  more groups hold connections. Past its share, a group's new connection is refused (503).
- **Stalled or busy.** A connection is busy while the app answers a request whose output
  flows; otherwise it is stalled, since the moment it became so: connected with nothing sent
  yet, a request still arriving, kept alive with nothing to do, or output the client does not
  read. Each group keeps its stalled connections in the order they stalled.
- **At the cap,** the newcomer is admitted and the connection that has stalled longest in the
  heaviest group (of those with a stalled one) is closed; only when none has stalled is the
  newcomer refused. A busy connection is never closed to make room.
- **The reserve.** `RESERVED_CONNECTIONS` of the cap are kept for requests that carry a valid
  credential: connections that have not shown one (including those that have sent nothing
  yet) hold at most `MAX_CONNECTIONS - RESERVED_CONNECTIONS`. A newcomer past that makes an
  anonymous stalled connection give way; a request without a credential past it, when none
  can, gets 503.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import IPv6Address, ip_address, ip_network
from typing import Protocol

from router_service._limits import ServiceLimits

# Whether a request's headers carry a valid credential; None while none is configured.
CredentialCheck = Callable[[Mapping[str, str]], bool | None]


class Member(Protocol):
    """What the door needs of a connection."""

    group: str
    credentialed: bool

    def evict(self) -> None:
        """Close this connection to make room (the door has already let it go)."""


def group_of(address: str) -> str:
    """The address group a client address counts in: its /24 (IPv4) or /64 (IPv6)."""
    try:
        ip = ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket's peer): a group of its own
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return str(ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


class Door:
    """What every connection of one server shares: the limits, and who holds the cap."""

    def __init__(self, limits: ServiceLimits, credential: CredentialCheck | None = None
                 ) -> None:
        self.limits = limits
        self.credential = credential
        # Per group: every member, and the stalled ones in the order they stalled.
        self.members: dict[str, dict[Member, None]] = {}
        self.stalled: dict[str, dict[Member, None]] = {}
        self.total = 0
        self.anonymous = 0
        # Totals since start, for tests and the hostile bench.
        self.refused = 0  # 503 too_many_connections
        self.evicted = 0
        self.timed_out = 0  # 408: headers or body too slow
        self.write_timeouts = 0
        self.headers_too_large = 0
        self.upgrades_refused = 0

    def share(self, group: str) -> int:
        """The most connections `group` may hold now."""
        active = len(self.members) + (group not in self.members)
        return max(1, min(self.limits.max_connections_per_address,
                          self.limits.max_connections // active))

    def enter(self, member: Member) -> bool:
        """Count a new connection (stalled, anonymous), making room if needed; False when it
        is refused (its group has its share, or the cap is held by busy connections)."""
        group = member.group
        if len(self.members.get(group, ())) >= self.share(group):
            self.refused += 1
            return False
        if self.anonymous >= self.limits.max_connections - self.limits.reserved:
            self._evict(anonymous_only=True)  # keep the reserve free, if anyone can give way
        if self.total >= self.limits.max_connections and not self._evict(anonymous_only=False):
            self.refused += 1
            return False
        self.members.setdefault(group, {})[member] = None
        self.stalled.setdefault(group, {})[member] = None
        self.total += 1
        self.anonymous += 1
        return True

    def leave(self, member: Member) -> None:
        """Forget a connection."""
        group = member.group
        members = self.members.get(group)
        if members is None or member not in members:
            return
        del members[member]
        self.stalled[group].pop(member, None)
        if not members:
            del self.members[group], self.stalled[group]
        self.total -= 1
        self.anonymous -= not member.credentialed

    def mark(self, member: Member, stalled: bool) -> None:
        """Note that a connection became stalled (to the end of its group's line) or busy."""
        line = self.stalled.get(member.group)
        if line is None or member not in self.members[member.group]:
            return
        line.pop(member, None)
        if stalled:
            line[member] = None

    def identified(self, member: Member, headers: Mapping[str, str]) -> bool:
        """A request's headers arrived: note whether they carry a credential. False when the
        request must be refused (it has none, and only the reserve is left)."""
        if self.credential is None:
            return True
        # Open access (no credential configured): every request counts as keyed.
        credentialed = self.credential(headers) is not False
        if credentialed != member.credentialed and member in self.members.get(member.group, ()):
            self.anonymous += -1 if credentialed else 1
        member.credentialed = credentialed
        if credentialed or self.anonymous <= self.limits.max_connections - self.limits.reserved:
            return True
        if self._evict(anonymous_only=True, sparing=member):
            return True
        self.refused += 1
        return False

    def _evict(self, *, anonymous_only: bool, sparing: Member | None = None) -> bool:
        """Close the longest-stalled connection of the heaviest group that has one."""
        victim: Member | None = None
        weight = 0
        for group, line in self.stalled.items():
            size = len(self.members[group])
            if size <= weight:
                continue
            found = next((m for m in line if m is not sparing
                          and not (anonymous_only and m.credentialed)), None)
            if found is not None:
                victim, weight = found, size
        if victim is None:
            return False
        self.leave(victim)
        self.evicted += 1
        victim.evict()
        return True

    def open_connections(self) -> int:
        """Connections counted now, over all groups."""
        return self.total
