"""A local relay in front of the fake Twilio, for tests of what the send path's HTTP client
puts on the wire: as an HTTP proxy (``HTTP_PROXY`` pointing at it: requests in absolute
form) or as the Twilio host itself, plain or behind TLS. It records the request line and
the headers of every request it receives, then passes the request on to the fake (one per
connection, ``Connection: close`` both ways) and the answer back."""

from __future__ import annotations

import socket
import ssl
import threading
from urllib.parse import urlsplit


class LocalRelay:
    """Parameters:
        target: the fake Twilio's base URL, where every request is passed on.
        tls: a server-side TLS context, to answer on https; None: plain HTTP.
    """

    def __init__(self, *, target: str, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname, parts.port)
        self._tls = tls
        self._lock = threading.Lock()
        self._seen: list[tuple[str, dict[str, str]]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def seen(self) -> list[tuple[str, dict[str, str]]]:
        """(request line, headers with lower-case names) of each request received."""
        with self._lock:
            return list(self._seen)

    def close(self) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            with conn, conn.makefile("rb") as incoming:
                line = incoming.readline().decode("latin-1").rstrip("\r\n")
                headers: dict[str, str] = {}
                while header := incoming.readline().decode("latin-1").rstrip("\r\n"):
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = incoming.read(int(headers.get("content-length") or 0))
                with self._lock:
                    self._seen.append((line, headers))
                conn.sendall(self._pass_on(line, headers, body))
        except (OSError, ValueError):  # a client that gave up, a TLS handshake refused
            conn.close()

    def _pass_on(self, line: str, headers: dict[str, str], body: bytes) -> bytes:
        method, target, _ = line.split(" ")
        parts = urlsplit(target)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                       if not k.startswith("proxy-") and k != "connection")
        with socket.create_connection(self._target) as upstream:
            upstream.sendall(f"{method} {path} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n".encode("latin-1") + body)
            answer = b"".join(iter(lambda: upstream.recv(65536), b""))
        status, _, rest = answer.partition(b"\r\n")
        return status + b"\r\nConnection: close\r\n" + rest
