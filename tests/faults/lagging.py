"""A TCP proxy in front of nats-server that delays what its clients send: the server reads
those connections late, as a loaded server may. What the server sends passes at once.

``lag`` is 0 until a test sets it, so a client connects and starts at full speed; bytes keep
their order whatever the lag (each is due ``lag`` seconds after it was read).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from types import TracebackType
from typing import Any


class LaggingProxy:
    """``async with LaggingProxy(server_port) as proxy:`` connect to ``proxy.url``; set ``lag``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lag = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def __aenter__(self) -> LaggingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()

    async def cut(self) -> None:
        """Cut every connection through the proxy, dropping what it still held for the server
        (a network cut); clients reconnect through it, at the ``lag`` of then."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the server is down: so is the proxy, to its client
            client_writer.close()
            return
        self._writers += [client_writer, server_writer]
        loop = asyncio.get_running_loop()
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_client() -> None:
            while data := await client_reader.read(65536):
                due.put_nowait((loop.time() + self.lag, data))
            due.put_nowait((loop.time() + self.lag, b""))  # the client hung up: so does the server side

        async def write_server() -> None:
            while True:
                at, data = await due.get()
                await asyncio.sleep(max(0.0, at - loop.time()))
                if not data:
                    server_writer.close()
                    return
                server_writer.write(data)
                await server_writer.drain()

        async def pass_back() -> None:
            while data := await server_reader.read(65536):
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        for work in (read_client(), write_server(), pass_back()):
            task = asyncio.create_task(_quietly(work))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _quietly(work: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(OSError):  # either side went away: its peer sees the hang-up
        await work
