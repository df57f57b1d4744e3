"""The `rediss://` form docs/security.md gives for Redis over TLS works as written, against a real Redis with TLS
and a password (Debian's redis-server is built with TLS): the certificate is verified against the CA named in the
URL, and a server certificate from another CA is refused. Every Nudge process opens Redis with
`redis.asyncio.Redis.from_url(settings.redis_url)`, as here."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from engine.config import redact_url
from engine.devstack import free_port, wait_for_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "0123456789abcdef0123456789abcdef"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """(port, the server's CA, another CA) for a redis-server with TLS only, requirepass, on loopback."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("redis-server or openssl not installed")
    tmp = tmp_path_factory.mktemp("redis-tls")
    ca_key, ca = make_ca(tmp, "nudge-test-ca")
    _, other_ca = make_ca(tmp, "someone-else")
    (tmp / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(tmp / "server.key"),
            "-out", str(tmp / "server.csr"))  # fmt: skip
    openssl("x509", "-req", "-in", str(tmp / "server.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "1", "-extfile", str(tmp / "san.cnf"),
            "-out", str(tmp / "server.pem"))  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--tls-cert-file", str(tmp / "server.pem"), "--tls-key-file", str(tmp / "server.key"),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if not wait_for_port(port):
            pytest.skip("this redis-server has no TLS support")
        yield port, ca, other_ca
    finally:
        server.terminate()
        server.wait(timeout=10)


def documented_url() -> str:
    """The example URL of docs/security.md, so the test breaks if the page changes its advice."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    match = re.search(r"NUDGE_REDIS_URL=(rediss://\S+)", text)
    assert match, "docs/security.md no longer shows a rediss:// NUDGE_REDIS_URL"
    return match[1]


def url_for(port: int, ca: Path) -> str:
    url = documented_url()
    url = url.replace("PASSWORD", PASSWORD).replace("redis.internal:6380", f"127.0.0.1:{port}")
    return re.sub(r"ssl_ca_certs=[^&]+", f"ssl_ca_certs={ca}", url)


async def test_the_documented_rediss_url_connects_and_verifies(tls_redis: tuple[int, Path, Path]) -> None:
    port, ca, _ = tls_redis
    client = aioredis.Redis.from_url(url_for(port, ca))
    try:
        assert await client.ping()
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
    assert PASSWORD not in redact_url(url_for(port, ca))


async def test_a_certificate_from_another_ca_is_refused(tls_redis: tuple[int, Path, Path]) -> None:
    port, _, other_ca = tls_redis
    client = aioredis.Redis.from_url(url_for(port, other_ca))
    try:
        with pytest.raises(redis_errors.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()


async def test_the_wrong_password_is_refused_over_tls(tls_redis: tuple[int, Path, Path]) -> None:
    port, ca, _ = tls_redis
    client = aioredis.Redis.from_url(url_for(port, ca).replace(PASSWORD, "wrong"))
    try:
        with pytest.raises(redis_errors.AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()
