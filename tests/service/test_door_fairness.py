"""Issue 25, item 1: the connection cap is shared fairly. Shares go to address groups (/24 for
IPv4, /64 for IPv6) and shrink as more groups are active; at the cap the connection that has
stalled longest, in the heaviest group, makes room for the newcomer; a slice of the cap is kept
for requests with a valid credential; and output that makes no progress is cut off.

Attackers come from 127.1.0.x, 127.2.0.x... (one /24 each: all of 127/8 is loopback), the
honest client from 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from router_service import Service, ServiceLimits
from router_service._fair import group_of
from tests.fakes.stream_backend import StreamBackend
from tests.support.raw_client import connect, head, read_until_closed, status_of
from tests.support.service import serve_main
from tests.support.streams import service_env, stream_backends

API_KEY = "fair-key-0c4e7a2d"
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def _limits(cap: int, reserved: int, per_address: int) -> ServiceLimits:
    # Long phase limits: the attackers' idle sockets stay open unless the door makes room.
    return ServiceLimits(header_timeout_ms=60_000, keep_alive_timeout_ms=60_000,
                         max_connections=cap, reserved_connections=reserved,
                         max_connections_per_address=per_address)


def _service(make_main: Callable[[dict[str, str]], Any], env: dict[str, str],
             limits: ServiceLimits) -> Service:
    return serve_main(make_main({**env, "API_KEYS": API_KEY}), namespace="fair", port=0,
                      limits=limits)


@pytest.fixture
def sockets() -> Iterator[Callable[[Service, str, int], list[socket.socket]]]:
    """`open_from(service, address, n)`: n idle connections from `address`, closed at the end."""
    with ExitStack() as stack:
        def open_from(service: Service, address: str, count: int) -> list[socket.socket]:
            return [stack.enter_context(connect(service.port, source=address))
                    for _ in range(count)]
        yield open_from


def _is_open(sock: socket.socket) -> bool:
    """Whether the service still holds this idle connection (no FIN or RST came)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    finally:
        sock.setblocking(True)


def _keyed_chat(service: Service) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(service.function_url + "/v1/chat/completions", json=CHAT,
                           headers={"x-api-key": API_KEY})


def _chat_bytes(service: Service) -> bytes:
    body = json.dumps(CHAT).encode()
    return head("POST", service.app.prefix + "/v1/chat/completions", {
        "x-api-key": API_KEY, "content-type": "application/json",
        "content-length": str(len(body))}) + body


def _served_and_made_room(service: Service, newcomer: socket.socket, evicted: socket.socket
                          ) -> None:
    """The newcomer's request is answered, and `evicted` was closed without a byte."""
    newcomer.sendall(head("GET", service.app.prefix + "/health", {}))
    newcomer.settimeout(10)
    assert status_of(newcomer.recv(65_536)) == 200
    answer, closed = read_until_closed(evicted, within_s=5)
    assert closed and answer == b"", answer[:200]


def test_a_flood_from_several_groups_leaves_the_keyed_client_served(make_main, env, sockets):
    """GIVEN a cap of 12 connections WHEN three /24 groups each open 8 idle connections
    (24 in all, each group inside the per-address ceiling) THEN a keyed client on a fourth
    address gets 5 answers out of 5 (before: uvicorn's 503 for every request past the cap),
    and the door never holds more than its cap."""
    service = _service(make_main, env, _limits(12, 3, 8))
    try:
        for group in ("127.1.0", "127.2.0", "127.3.0"):
            for host in range(1, 9):
                sockets(service, f"{group}.{host}", 1)
        answers = [_keyed_chat(service).status_code for _ in range(5)]
        assert answers == [200] * 5
        assert service.door.open_connections() <= 12
    finally:
        service.stop()


def test_a_groups_share_shrinks_as_more_groups_are_active(make_main, env, sockets):
    """GIVEN a cap of 12 and a per-address ceiling of 8 WHEN group A holds 8 and groups C and
    B arrive THEN the share is 12 / 3 = 4 per group: B's 5th connection and A's next get 503
    `too_many_connections` at once (before: 8 each)."""
    service = _service(make_main, env, _limits(12, 3, 8))
    try:
        sockets(service, "127.1.0.1", 8)
        sockets(service, "127.3.0.1", 1)
        sockets(service, "127.2.0.1", 4)
        for address in ("127.2.0.1", "127.1.0.1"):
            [extra] = sockets(service, address, 1)
            answer, closed = read_until_closed(extra, within_s=5)
            assert status_of(answer) == 503 and closed, address
            assert b"too_many_connections" in answer
    finally:
        service.stop()


def test_at_the_cap_the_longest_stalled_connection_of_the_heaviest_group_makes_room(
        make_main, env, sockets):
    """GIVEN a cap of 10, all held: group A 6 idle connections, B 3, C 1 WHEN a keyed client
    arrives THEN it is served, and A's first connection (the heaviest group's longest
    stalled) is closed without a byte, while every other connection stays open."""
    service = _service(make_main, env, _limits(10, 0, 8))
    try:
        group_a = sockets(service, "127.1.0.1", 6)
        others = sockets(service, "127.2.0.1", 3) + sockets(service, "127.3.0.1", 1)
        assert _keyed_chat(service).status_code == 200
        answer, closed = read_until_closed(group_a[0], within_s=5)
        assert closed and answer == b""
        assert all(_is_open(sock) for sock in group_a[1:] + others)
    finally:
        service.stop()


def test_connections_being_answered_are_never_evicted(make_main, env, worker, sockets):
    """GIVEN a cap of 10: a keyed client's 4 chats held by the worker (the heaviest group, all
    busy), groups A and B with 3 idle connections each WHEN a newcomer from C arrives THEN A's
    first idle connection makes room (the heaviest group that has a stalled one), and once the
    worker answers, all 4 chats get their 200."""
    worker.mode, worker.delay_s = "slow", 30
    service = _service(make_main, env, _limits(10, 0, 8))
    try:
        chats = sockets(service, "127.0.0.1", 4)
        for sock in chats:
            sock.sendall(_chat_bytes(service))
        group_a = sockets(service, "127.1.0.1", 3)
        group_b = sockets(service, "127.2.0.1", 3)
        _served_and_made_room(service, sockets(service, "127.3.0.1", 1)[0], group_a[0])
        assert all(_is_open(sock) for sock in group_a[1:] + group_b)
        worker.release()
        for sock in chats:
            sock.settimeout(10)
            assert status_of(sock.recv(65_536)) == 200
    finally:
        worker.release()
        service.stop()


def test_the_reserved_slice_spares_keyed_connections(make_main, env, sockets):
    """GIVEN a cap of 6 with 2 reserved for requests with a valid credential: a keyed client's
    2 idle kept-alive connections (opened first, so the longest stalled), groups A (2) and B (1)
    and C (1) idle WHEN a newcomer from D arrives THEN an anonymous connection (A's first)
    makes room, not the keyed client's, whose connections still serve its next requests."""
    service = _service(make_main, env, _limits(6, 2, 6))
    try:
        keyed = sockets(service, "127.0.0.1", 2)
        models = head("GET", service.app.prefix + "/v1/models", {"x-api-key": API_KEY})
        for sock in keyed:
            sock.sendall(models)
            sock.settimeout(10)
            assert status_of(sock.recv(65_536)) == 200
        group_a = sockets(service, "127.1.0.1", 2)
        sockets(service, "127.2.0.1", 1)
        sockets(service, "127.3.0.1", 1)
        _served_and_made_room(service, sockets(service, "127.4.0.1", 1)[0], group_a[0])
        for sock in keyed:
            sock.sendall(models)
            assert status_of(sock.recv(65_536)) == 200
    finally:
        service.stop()


def test_an_answer_its_reader_never_takes_is_cut_off_with_its_backend_stream(make_main):
    """GIVEN a 300 ms write timeout WHEN a client pipelines three 1.8 MB streams (each within
    a backend's answer cap; together past what the sockets' buffers hold) and never reads
    THEN, once the buffers are full and stay full, the service drops the connection and the
    stream in flight, whose backend sees it hang up (before: the relay waited on the client
    for ever, the backend connection open, past the stream deadline)."""
    with stream_backends() as fakes:
        worker: StreamBackend = fakes["worker"]
        worker.text, worker.every_s = " ".join(["w" * 8_000] * 230), 0.005
        main = make_main(service_env(worker.url, fakes["space"].url, "http://127.0.0.1:9"))
        service = serve_main(main, namespace="fair", port=0, limits=ServiceLimits(
            write_timeout_ms=300))
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
            sock.connect(("127.0.0.1", service.port))
            with sock:
                body = json.dumps({**CHAT, "stream": True, "max_tokens": 2_000}).encode()
                request = head("POST", service.app.prefix + "/v1/chat/completions", {
                    "content-type": "application/json", "content-length": str(len(body))})
                sock.sendall((request + body) * 3)
                assert worker.dropped.wait(30), "the backend stream was never closed"
            assert service.door.write_timeouts == 1
        finally:
            service.stop()


@pytest.mark.parametrize(("one", "other", "same"), [
    ("203.0.113.7", "203.0.113.200", True),
    ("203.0.113.7", "203.0.114.7", False),
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),
    ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
    ("::ffff:203.0.113.7", "203.0.113.9", True),  # a dual-stack socket's view of IPv4
])
def test_addresses_count_together_by_24_and_64(one: str, other: str, same: bool):
    """GIVEN two client addresses WHEN the door groups them THEN IPv4 addresses in one /24,
    and IPv6 addresses in one /64, share a group; others do not."""
    assert (group_of(one) == group_of(other)) is same


def test_an_ipv6_client_is_served_and_counted_in_its_64(make_main, env):
    """GIVEN the service listening on ::1 WHEN a keyed client connects over IPv6 THEN it is
    answered, and while its connection is open the door counts it in ::/64."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    try:
        service = serve_main(make_main({**env, "API_KEYS": API_KEY}), namespace="fair",
                             host="::1", port=0, limits=_limits(10, 2, 8))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc.strerror}")
    try:
        with socket.create_connection(("::1", service.port)) as sock:
            sock.sendall(head("GET", service.app.prefix + "/health", {}))
            sock.settimeout(10)
            assert status_of(sock.recv(65_536)) == 200
            assert set(service.door.members) == {"::/64"}
    finally:
        service.stop()
