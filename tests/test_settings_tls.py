"""Issue 13, settings: a ``rediss://`` server's certificate is checked unless
``REDIS_TLS_VERIFY=off`` (Heroku's Redis presents a self-signed one). The handshakes are
real: a TLS server with a self-signed certificate that answers PING."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading

import pytest
import redis

from actors import build_broker
from settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class SelfSignedRedis:
    """Speaks just enough RESP over TLS: +PONG to PING, RESP3 to HELLO, +OK to anything else."""

    def __init__(self, tmp_path) -> None:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pings = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(raw,), daemon=True).start()

    def _client(self, raw) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn, conn.makefile("rb") as reader:
                while True:
                    line = reader.readline()
                    if not line.startswith(b"*"):
                        return
                    words = []
                    for _ in range(int(line[1:])):
                        size = int(reader.readline()[1:])
                        words.append(reader.read(size + 2)[:-2])
                    if words and words[0].upper() == b"PING":
                        self.pings += 1
                        conn.sendall(b"+PONG\r\n")
                    elif words and words[0].upper() == b"HELLO":  # redis-py speaks RESP3
                        conn.sendall(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                    else:
                        conn.sendall(b"+OK\r\n")
        except (OSError, ssl.SSLError, ValueError):
            return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def self_signed(tmp_path):
    server = SelfSignedRedis(tmp_path)
    yield server
    server.close()


def broker_for(server: SelfSignedRedis, **env: str):
    settings = Settings.from_env({"REDIS_URL": f"rediss://127.0.0.1:{server.port}/0", **env})
    return build_broker(settings)


def test_by_default_a_self_signed_certificate_is_refused(self_signed):
    broker = broker_for(self_signed)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        broker.redis_client.ping()
    assert self_signed.pings == 0


def test_redis_tls_verify_off_accepts_it(self_signed):
    broker = broker_for(self_signed, REDIS_TLS_VERIFY="off")
    assert broker.redis_client.ping() is True
    assert self_signed.pings >= 1  # (with a health check of its own)


def test_the_worker_start_check_says_how_to_accept_a_self_signed_certificate(self_signed):
    from errors import ServiceUnreachable
    from middleware import Probe, check_reachable

    broker = broker_for(self_signed)
    url = f"rediss://:pw@127.0.0.1:{self_signed.port}/0"
    with pytest.raises(ServiceUnreachable) as error:
        check_reachable([Probe("REDIS_URL", url, broker.redis_client.ping)], timeout_s=20)
    reason = error.value.reason
    assert reason.startswith(f"cannot reach REDIS_URL (rediss://:***@127.0.0.1:{self_signed.port}/0): ")
    assert "CERTIFICATE_VERIFY_FAILED" in reason and "set REDIS_TLS_VERIFY=off" in reason


def test_the_setting_is_on_or_off():
    assert Settings.from_env({}).redis_tls_verify == "on"
    assert Settings.from_env({"REDIS_TLS_VERIFY": "off"}).redis_tls_verify == "off"
