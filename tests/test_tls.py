"""TLS and mutual TLS on the gRPC port, with certificates made here (`cryptography`); a wrong CA
is refused both ways; certificates rotate on reload; the health-check script speaks TLS."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from neural_hive_integration.clients import AgentInfo, ServiceRegistryClient
from neural_hive_integration.clients.service_registry_client import RegistryError
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from neural_hive_integration.proto_stubs import service_registry_pb2_grpc as pb_grpc

from conftest import ROOT, running_registry

SERVER_AUTH, CLIENT_AUTH = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


# -- a small PKI ------------------------------------------------------------------------------
@dataclass
class Issued:
    cert: Path
    key: Path

    @property
    def pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


class CA:
    def __init__(self, directory: Path, name: str):
        self.directory, self.name = directory, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def pem(self) -> bytes:
        return self.path.read_bytes()

    def issue(self, name: str, usages, dns=(), ips=(), into: Path | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage(list(usages)), False))
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i))
                                                  for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = into or Issued(self.directory / f"{self.name}-{name}.pem",
                                self.directory / f"{self.name}-{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued

    def server(self, into: Issued | None = None) -> Issued:
        # Both usages, as certificate managers commonly issue: the health check can present it.
        return self.issue("server", [SERVER_AUTH, CLIENT_AUTH], dns=["localhost"],
                          ips=["127.0.0.1"], into=into)

    def client(self, name: str = "client") -> Issued:
        return self.issue(name, [CLIENT_AUTH])


@pytest.fixture
def pki(tmp_path):
    trusted, rogue = CA(tmp_path, "trusted"), CA(tmp_path, "rogue")
    return trusted, rogue


async def call_ok(address: str, credentials) -> bool:
    """True when a call over a fresh channel succeeds; False when the handshake is refused."""
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            await pb_grpc.ServiceRegistryStub(channel).GetStats(pb.StatsRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return True


# -- TLS --------------------------------------------------------------------------------------
async def test_tls_handshake_and_calls(redis_proc, pki):
    ca, _ = pki
    server = ca.server()
    async with running_registry("redis", redis_proc, tls_cert=str(server.cert),
                                tls_key=str(server.key)) as reg:
        async with ServiceRegistryClient("localhost", reg.server.port,
                                         root_certificates=ca.pem) as client:
            agent_id = await client.register_agent(AgentInfo(agent_type="scout",
                                                             capabilities=["tls"]))
            assert (await client.get_agent(agent_id)).capabilities == ["tls"]
        # Plaintext clients do not get in.
        async with ServiceRegistryClient("127.0.0.1", reg.server.port, retries=0) as plain:
            with pytest.raises(RegistryError) as err:
                await plain.get_stats()
            assert err.value.code == grpc.StatusCode.UNAVAILABLE


async def test_client_trusting_another_ca_is_refused(redis_proc, pki):
    ca, rogue = pki
    server = ca.server()
    async with running_registry("redis", redis_proc, tls_cert=str(server.cert),
                                tls_key=str(server.key)) as reg:
        address = f"localhost:{reg.server.port}"
        assert await call_ok(address, grpc.ssl_channel_credentials(ca.pem))
        assert not await call_ok(address, grpc.ssl_channel_credentials(rogue.pem))


# -- mutual TLS -------------------------------------------------------------------------------
async def test_mutual_tls(redis_proc, pki):
    ca, rogue = pki
    server, good, bad = ca.server(), ca.client("agent"), rogue.client("intruder")
    async with running_registry("redis", redis_proc, tls_cert=str(server.cert),
                                tls_key=str(server.key), tls_client_ca=str(ca.path)) as reg:
        address = f"localhost:{reg.server.port}"
        assert await call_ok(address, grpc.ssl_channel_credentials(ca.pem, good.key_pem,
                                                                   good.pem))
        # No client certificate, or one from a CA the server does not trust: refused.
        assert not await call_ok(address, grpc.ssl_channel_credentials(ca.pem))
        assert not await call_ok(address, grpc.ssl_channel_credentials(ca.pem, bad.key_pem,
                                                                       bad.pem))
        async with ServiceRegistryClient("localhost", reg.server.port, root_certificates=ca.pem,
                                         private_key=good.key_pem,
                                         certificate_chain=good.pem) as client:
            await client.register_agent(AgentInfo(agent_type="guard", capabilities=["mtls"]))
            assert [a.capabilities for a in await client.discover_agents(["mtls"])] == [["mtls"]]


async def test_certificates_rotate_on_reload(redis_proc, pki, tmp_path):
    """SIGHUP calls Server.reload(): new handshakes use the new files, nothing restarts."""
    ca, rogue = pki
    live = Issued(tmp_path / "live.pem", tmp_path / "live.key")
    ca.server(into=live)
    async with running_registry("redis", redis_proc, tls_cert=str(live.cert),
                                tls_key=str(live.key)) as reg:
        address = f"localhost:{reg.server.port}"
        assert await call_ok(address, grpc.ssl_channel_credentials(ca.pem))
        rogue.server(into=live)  # the new certificate comes from another CA
        reg.server.reload()
        assert await call_ok(address, grpc.ssl_channel_credentials(rogue.pem))
        assert not await call_ok(address, grpc.ssl_channel_credentials(ca.pem))
        # A broken file is not taken: the current certificate stays in use.
        live.key.write_text("not a key")
        reg.server.reload()
        assert await call_ok(address, grpc.ssl_channel_credentials(rogue.pem))


# -- warnings and refusals at start -----------------------------------------------------------
async def test_plaintext_on_a_non_loopback_address_is_warned_about(redis_proc, pki, caplog):
    caplog.set_level("INFO", logger="service_registry")
    ca, _ = pki
    server = ca.server()

    def warned() -> bool:
        return any(r.levelname == "WARNING" and "PLAINTEXT" in r.getMessage()
                   for r in caplog.records)

    for settings, expected in (({"host": "127.0.0.1"}, False),
                               ({"host": "0.0.0.0", "tls_cert": str(server.cert),
                                 "tls_key": str(server.key)}, False),
                               ({"host": "0.0.0.0"}, True)):
        caplog.clear()
        async with running_registry("redis", redis_proc, **settings):
            pass
        assert warned() == expected, settings


def test_unusable_certificate_files_stop_the_server_at_start(pki):
    ca, rogue = pki
    server, other = ca.server(), rogue.server()
    env = {**os.environ, "TLS_CERT": str(server.cert), "TLS_KEY": str(other.key),
           "SERVICE_REGISTRY_HOST": "127.0.0.1", "SERVICE_REGISTRY_PORT": "1",
           "METRICS_PORT": "0", "REDIS_URL": ""}
    done = subprocess.run([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert str(server.cert) in done.stderr and "private key" in done.stderr


# -- the health-check script ------------------------------------------------------------------
async def healthcheck(port: int, **env) -> subprocess.CompletedProcess:
    """Runs `python -m server.healthcheck` as a container would (the server's environment);
    asynchronously, since the server answers from this test's event loop."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("TLS_", "HEALTHCHECK_", "SERVICE_REGISTRY_"))}
    environ.update(SERVICE_REGISTRY_HOST="0.0.0.0", SERVICE_REGISTRY_PORT=str(port),
                   **{k: str(v) for k, v in env.items()})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.healthcheck", env=environ, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess("healthcheck", proc.returncode, out.decode(),
                                       err.decode())


async def test_healthcheck_script_plaintext(redis_proc):
    async with running_registry("redis", redis_proc) as reg:
        done = await healthcheck(reg.server.port)
        assert done.returncode == 0 and "SERVING" in done.stdout, done
        port = reg.server.port
    done = await healthcheck(port)  # nothing listens any more
    assert done.returncode == 1 and "UNAVAILABLE" in done.stdout


async def test_healthcheck_script_with_tls_and_mtls(redis_proc, pki):
    ca, rogue = pki
    server, client = ca.server(), ca.client("probe")
    tls = {"tls_cert": str(server.cert), "tls_key": str(server.key)}
    env = {"TLS_CERT": server.cert, "TLS_KEY": server.key}

    async def exit_code(**extra) -> int:
        return (await healthcheck(reg.server.port, **env, **extra)).returncode

    async with running_registry("redis", redis_proc, **tls) as reg:
        # The server's own environment is enough, given the CA that vouches for its certificate.
        assert await exit_code(HEALTHCHECK_CA=ca.path) == 0
        assert await exit_code(HEALTHCHECK_CA=rogue.path) == 1
    async with running_registry("redis", redis_proc, tls_client_ca=str(ca.path), **tls) as reg:
        env.update(TLS_CLIENT_CA=ca.path, HEALTHCHECK_CA=ca.path)
        # Presents the server's own certificate (it has the clientAuth usage) ...
        assert await exit_code() == 0
        # ... or a dedicated client certificate; one from another CA is refused.
        assert await exit_code(HEALTHCHECK_CERT=client.cert, HEALTHCHECK_KEY=client.key) == 0
        intruder = rogue.client("intruder")
        assert await exit_code(HEALTHCHECK_CERT=intruder.cert, HEALTHCHECK_KEY=intruder.key) == 1


async def test_health_service_over_tls_reports_liveness_and_readiness(redis_proc, pki):
    ca, _ = pki
    server = ca.server()
    async with running_registry("redis", redis_proc, tls_cert=str(server.cert),
                                tls_key=str(server.key)) as reg:
        async with grpc.aio.secure_channel(f"localhost:{reg.server.port}",
                                           grpc.ssl_channel_credentials(ca.pem)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "service_registry.ServiceRegistry", "liveness"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
