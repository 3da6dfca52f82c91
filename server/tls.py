"""TLS for the gRPC port: certificate and key (TLS_CERT, TLS_KEY), optionally a CA that client
certificates must chain to (TLS_CLIENT_CA: mutual TLS). The files are read again on SIGHUP and
used from the next handshake on, so certificates can be rotated without a restart."""
from __future__ import annotations

import ipaddress
import logging
import ssl
import threading

import grpc

log = logging.getLogger("service_registry")


class TLSError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (only those are safe for plaintext)."""
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TLSError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise TLSError(f"{what} {path}: not a PEM file")
    return data


def _check(cert: str, key: str, client_ca: str) -> None:
    """Fails early, naming the file, on what would otherwise only fail at the first handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(f"TLS_CERT {cert} / TLS_KEY {key}: not a certificate and its private "
                       f"key ({exc})") from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(f"TLS_CLIENT_CA {client_ca}: not a CA certificate bundle "
                           f"({exc})") from None


class ServerTLS:
    def __init__(self, cert: str, key: str, client_ca: str = ""):
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._pending = None
        self._initial = self._configuration()

    @classmethod
    def from_settings(cls, settings) -> "ServerTLS | None":
        if not (settings.tls_cert and settings.tls_key):
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def describe(self) -> str:
        if self.mutual:
            return f"TLS with client certificates (mTLS) checked against {self.client_ca}"
        return "TLS"

    def _configuration(self):
        _check(self.cert, self.key, self.client_ca)
        pair = (_read(self.key, "TLS_KEY"), _read(self.cert, "TLS_CERT"))
        roots = _read(self.client_ca, "TLS_CLIENT_CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.mutual)

    def _fetch(self):
        """Called by gRPC before each handshake: a new configuration after reload()."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Reads the files again (SIGHUP); on error the current certificates stay in use."""
        try:
            configuration = self._configuration()
        except TLSError as exc:
            log.error("tls: certificates NOT reloaded, keeping the current ones: %s", exc)
            return False
        with self._lock:
            self._pending = configuration
        log.info("tls: reloaded certificate %s%s", self.cert,
                 f" and client CA {self.client_ca}" if self.client_ca else "")
        return True


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Client side (health check): trust `ca` (system roots when empty), present cert/key."""
    roots = _read(ca, "CA") if ca else None
    chain = _read(cert, "client certificate") if cert else None
    private = _read(key, "client key") if key else None
    return grpc.ssl_channel_credentials(roots, private, chain)


def first_dns_name(cert: str) -> str:
    """The first DNS subjectAltName of a PEM certificate ("" if none or unreadable)."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert)  # noqa: SLF001 - stdlib, no dependency
    except Exception:  # noqa: BLE001
        return ""
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS" and "*" not in value:
            return value
    return ""
