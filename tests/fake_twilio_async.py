"""A selector-based (asyncio) HTTP/1.1 front for ``FakeTwilio``: the same API behaviour
(``FakeTwilio._handle``), one event loop instead of a thread per connection, so that the
fake answers thousands of requests a second with its latency and stays out of the way of
the benches' throughput figures (``FakeTwilio(server="async")``).

Keep-alive, Content-Length and chunked bodies, and the "drop" fault (a reset instead of an
answer) behave as in the threaded server; the latency is an ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from http import HTTPStatus


class _Headers(dict):
    """Request headers, looked up case-insensitively (as ``http.client`` headers are)."""

    def get(self, key, default=None):
        return super().get(key.lower(), default)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class AsyncServer:
    """Serves ``fake`` on ``127.0.0.1`` (an ephemeral port) from an event loop in a daemon
    thread.

    Parameters:
      fake: The ``FakeTwilio`` whose ``_handle`` decides every answer.
    """

    def __init__(self, fake) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-twilio-async", daemon=True)
        self.port = 0

    def start(self) -> "AsyncServer":
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        self.port = future.result(10)
        return self

    async def _listen(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._serve, sock=sock, backlog=1024, limit=1 << 20)
        return sock.getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers = _Headers()
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await self._body(reader, headers)
                reply = self.fake._handle(method, path, headers, body)
                if reply.delay_s > 0:
                    await asyncio.sleep(reply.delay_s)
                if reply.drop:
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                data = json.dumps(reply.payload).encode()
                out = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}",
                       "Server: FakeTwilio/1.0", "Content-Type: application/json; charset=utf-8",
                       f"Content-Length: {len(data)}"]
                out += [f"{k}: {v}" for k, v in reply.headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: _Headers) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readline()
        length = int(headers.get("content-length") or 0)
        return await reader.readexactly(length) if length else b""
