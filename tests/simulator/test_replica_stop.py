"""Stopping a simulated replica closes every connection it accepted (issue 14.4: a server-side
connection that outlived its replica was garbage-collected unclosed, a ResourceWarning)."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import warnings
from typing import Any

import pytest

from narrator.simulator import SimConfig, start_fleet_async

CLIENTS = 20  # connections that reach the replica together

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)


async def read_to_eof(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails on a deadline)."""
    return await asyncio.wait_for(reader.read(), timeout_s)


def closed_by_server(client: socket.socket, timeout_s: float) -> bool:
    """Whether the server closed (FIN) or cut (RST) this connection; waits up to timeout_s."""
    client.settimeout(timeout_s)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


async def test_stop_closes_idle_busy_and_half_sent_connections() -> None:
    async with await start_fleet_async(1, SimConfig(slots=1)) as fleet:
        fleet.set_faults(0, hang_rate=1.0)
        port = fleet.replicas[0].port
        body = b'{"model": "narrator-sim-vlm", "messages": [{"role": "user", "content": "hi"}]}'
        idle = await asyncio.open_connection("127.0.0.1", port)
        busy = await asyncio.open_connection("127.0.0.1", port)
        busy[1].write(REQUEST % len(body) + body)  # hangs at the server
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(REQUEST % 10_000 + b"{")  # the body never completes
        for _, writer in (idle, busy, half):
            await writer.drain()
        deadline = time.monotonic() + 5
        while fleet.stats(0)["hung"] < 1:  # the busy request has reached its handler
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        await fleet.stop_replica(0)

        for reader, _ in (idle, busy, half):
            await read_to_eof(reader, 5.0)  # closed by the server, not left open
        for _, writer in (idle, busy, half):
            writer.close()
            await writer.wait_closed()
        # The replica comes back on the same port and serves again.
        await fleet.start_replica(0)
        fleet.clear_faults(0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST.replace(b"POST /v1/chat/completions", b"GET /health") % 0)
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()


async def test_connection_accepted_in_the_stopping_iteration_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection whose protocol is built just before the stop begins (the stop starts in
    the middle of its adoption) must be cut all the same, not left open and unread."""
    async with await start_fleet_async(1, SimConfig()) as fleet:
        replica = fleet.replicas[0]
        stopping: list[asyncio.Task[None]] = []
        build = replica._connection

        def build_then_stop(runner: Any) -> asyncio.BaseProtocol:
            protocol = build(runner)
            if not stopping:  # the stop's first step runs before this connection_made
                stopping.append(asyncio.get_running_loop().create_task(replica.stop()))
            return protocol

        monkeypatch.setattr(replica, "_connection", build_then_stop)
        reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
        deadline = time.monotonic() + 5
        while not stopping:
            assert time.monotonic() < deadline, "the replica never accepted the connection"
            await asyncio.sleep(0.01)
        await stopping[0]

        assert await read_to_eof(reader, 5.0) == b""  # cut by the stopped replica
        writer.close()
        await writer.wait_closed()


async def test_connections_accepted_in_the_iteration_the_replica_stops_are_closed() -> None:
    """The CI failure of issue 14.4, reproduced: connections that the event loop accepted in
    the same loop iteration as the replica's stop. With ``loop.create_server``, CPython hands
    each of them to a task that runs after the stop has closed the server; building the
    transport then fails (the closed server refuses to attach it), the error is swallowed,
    and the half-built transport is later garbage-collected unclosed: ``ResourceWarning:
    unclosed transport <_SelectorSocketTransport fd=.. read=idle write=<idle, bufsize=0>>``.

    The iteration is arranged exactly: the clients connect while the loop is blocked, so the
    next select reports the listener readable; the test's task is scheduled ahead of the
    accept callback in that iteration and again, ahead of the tasks the accept creates, in
    the next one, where it stops the replica."""
    async with await start_fleet_async(1, SimConfig()) as fleet:
        port = fleet.replicas[0].port
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
        try:
            await asyncio.sleep(0)  # this iteration's select sees the pending connections
            await asyncio.sleep(0)  # back here before the accepted connections are adopted
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                await fleet.stop_replica(0)
                gc.collect()
            unclosed = [str(w.message) for w in caught if "unclosed" in str(w.message)]
            assert unclosed == [], unclosed[:3]
            # Every connection was closed by the stopped replica (a timeout fails the test).
            assert all(closed_by_server(client, 5.0) for client in clients)
        finally:
            for client in clients:
                client.close()
