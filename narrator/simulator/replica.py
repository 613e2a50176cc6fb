"""One simulated VLM replica bound to one host:port, that can be stopped and started again.

Invariants: a replica listens on 127.0.0.1 unless told otherwise; port 0 picks a free port,
and :meth:`SimReplica.start` after :meth:`SimReplica.stop` reuses the replica's port, so
clients see the same URL die and come back. Stopping a replica drops its open connections
and in-flight requests like a crashed process (no connection is left unclosed, however
the stop meets the accepting: see :class:`SimReplica`); its counters and settings survive.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from narrator.common.logging import get_logger
from narrator.simulator.server import SimServer

log = get_logger("narrator.simulator.replica")

# How long a stopping replica lets in-flight requests finish before cutting them off.
STOP_GRACE_S = 0.2
# Connections the kernel queues for a replica before it accepts them (a fleet of workers
# opens hundreds at once; loop.create_server's default is 100).
LISTEN_BACKLOG = 1024
# How long the accept loop waits after a failed accept (EMFILE and the like) before retrying.
ACCEPT_RETRY_S = 0.1


class _TrackedConnection(asyncio.Protocol):
    """One accepted connection: aiohttp's request handler behind a thin layer that records
    the transport with its replica while it is open."""

    def __init__(self, replica: SimReplica, handler: web.RequestHandler) -> None:
        self._replica = replica
        self._handler = handler
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._replica.transports.add(transport)
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._replica.transports.discard(self._transport)
            self._transport = None
            self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._handler.data_received(data)

    def eof_received(self) -> None:  # aiohttp's handler lets the transport close itself
        if self._transport is not None:
            self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on host:port (port 0: a free one), SO_REUSEADDR set."""
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
    listener.setblocking(False)
    return listener


class SimReplica:
    """One :class:`SimServer` bound to one host:port; can be stopped and started again.

    It accepts connections in one task of its own (``accept`` then
    ``connect_accepted_socket``) instead of ``loop.create_server``, and records
    every transport it adopted, so that :meth:`stop` can account for each connection:

    * ``loop.create_server`` accepts a burst of connections in one callback and adopts each
      in a task of its own. When the server is closed before those tasks run (a stop in the
      same loop iteration), building their transports fails on the closed server, CPython
      swallows the error (it logs it in debug mode only) and the half-built transports are
      garbage-collected unclosed, a ``ResourceWarning`` (issue 14.4, seen on CI). Here the
      stop cancels the one accept task: a connection is then either not yet accepted (the
      kernel resets it when the listening socket closes) or adopted, or closed by the
      cancelled adoption.
    * aiohttp's shutdown closes the connections it knows, gracefully; the stop then aborts
      every recorded transport, like a crashed process.
    """

    def __init__(self, server: SimServer, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.transports: set[asyncio.Transport] = set()  # every open adopted connection
        self._runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def _connection(self, runner: web.AppRunner) -> asyncio.BaseProtocol:
        assert runner.server is not None, "connections are adopted only while running"
        return _TrackedConnection(self, runner.server())

    async def _accept(self, listener: socket.socket, runner: web.AppRunner) -> None:
        """Accept and adopt connections until cancelled. The accepting happens in this task
        only (a reader callback just wakes it), so a cancellation finds every accepted
        connection adopted or closed; ``loop.sock_accept`` can accept into a future already
        cancelled (CPython 3.11 runs its queued reader callback anyway) and lose the socket."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(listener.fileno(), readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                while True:  # drain the kernel's queue
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # out of file descriptors, say: retry soon
                        log.warning("simvlm_accept_failed", url=self.url, error=str(exc))
                        await asyncio.sleep(ACCEPT_RETRY_S)
                        break
                    await self._adopt(conn, runner)
        finally:
            loop.remove_reader(listener.fileno())

    async def _adopt(self, conn: socket.socket, runner: web.AppRunner) -> None:
        conn.setblocking(False)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self._connection(runner), conn
            )
        except asyncio.CancelledError:
            conn.close()  # the transport, if built, has closed it already: then a no-op
            raise
        except OSError as exc:  # the client went away before it was adopted
            conn.close()
            log.debug("simvlm_connection_not_adopted", url=self.url, error=str(exc))

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.server.make_app(),
            handler_cancellation=True,
            shutdown_timeout=STOP_GRACE_S,
            access_log=None,
        )
        await runner.setup()
        try:
            listener = _listening_socket(self.host, self.port)
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(listener.getsockname()[1])
        self._listener, self._runner = listener, runner
        self._acceptor = asyncio.get_running_loop().create_task(
            self._accept(listener, runner), name=f"simvlm-accept-{self.port}"
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        listener, self._listener = self._listener, None
        acceptor, self._acceptor = self._acceptor, None
        if runner is None:
            return
        if acceptor is not None:
            acceptor.cancel()
            await asyncio.wait([acceptor])  # no connection is adopted after this
        if listener is not None:
            listener.close()  # connections still queued in the kernel are reset
        await runner.cleanup()  # lets in-flight requests finish for STOP_GRACE_S, then cuts
        for transport in list(self.transports):
            transport.abort()  # closed or not by aiohttp, the socket goes now
        self.transports.clear()
