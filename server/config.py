"""Server settings: environment variables, overridden by command-line flags.

A bad value stops the server at start with a message naming the setting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from . import redis_target


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    host: str = "localhost"
    port: int = 50051
    redis_url: str = ""                  # empty: the embedded in-process store
    heartbeat_timeout: float = 60.0      # seconds without a heartbeat before an agent is gone
    metrics_port: int = 9464             # the HTTP port (metrics, health, API, dashboard); 0: off
    unhealthy_below: float = 0.5         # derived status: success_rate below this is UNHEALTHY
    degraded_below: float = 0.9          # ... below this DEGRADED, else HEALTHY
    log_max_events: int = 100_000        # change-log length kept per namespace (approximate)
    inbox_capacity: int = 100            # unacknowledged notifications per agent
    sweep_interval: float = 0.25         # seconds between sweeps for expired agents
    expiry_events: bool = True           # also reap on Redis `expired` keyspace events
    watch_buffer: int = 1000             # events a slow watcher may fall behind before it is cut
    progress_interval: float = 10.0      # seconds between PROGRESS events on an idle watch
    log_format: str = "text"             # text or json
    log_level: str = "INFO"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""              # set: clients must present a certificate signed by it
    tokens_file: str = ""                # empty: authentication off
    shutdown_grace: float = 10.0         # seconds in-flight calls get on SIGTERM
    share_port: bool = False             # let other processes listen on the same gRPC port
    grpc_reflection: bool = True         # gRPC server reflection (grpcurl list/describe)
    balance_warmup: float = 30.0         # BALANCED Discover: seconds a new agent has average weight
    outage_protection: bool = True       # no mass expiry after the registry itself was down
    min_replica_acks: int = 0            # writes answer once this many replicas have them

    @property
    def heartbeat_timeout_ms(self) -> int:
        return int(self.heartbeat_timeout * 1000)

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def redis_target(self) -> redis_target.RedisTarget:
        """The deployment REDIS_URL names (validate() has checked it parses)."""
        return redis_target.parse(self.redis_url)

    @property
    def address(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


# Setting -> environment variable (first the four the service contract README names).
ENVIRONMENT = {
    "host": "SERVICE_REGISTRY_HOST",
    "port": "SERVICE_REGISTRY_PORT",
    "redis_url": "REDIS_URL",
    "heartbeat_timeout": "HEARTBEAT_TIMEOUT",
    "metrics_port": "METRICS_PORT",
    "unhealthy_below": "UNHEALTHY_BELOW",
    "degraded_below": "DEGRADED_BELOW",
    "log_max_events": "LOG_MAX_EVENTS",
    "inbox_capacity": "INBOX_CAPACITY",
    "sweep_interval": "SWEEP_INTERVAL",
    "expiry_events": "EXPIRY_EVENTS",
    "watch_buffer": "WATCH_BUFFER",
    "progress_interval": "PROGRESS_INTERVAL",
    "log_format": "LOG_FORMAT",
    "log_level": "LOG_LEVEL",
    "tls_cert": "TLS_CERT",
    "tls_key": "TLS_KEY",
    "tls_client_ca": "TLS_CLIENT_CA",
    "tokens_file": "TOKENS_FILE",
    "shutdown_grace": "SHUTDOWN_GRACE",
    "share_port": "SHARE_PORT",
    "grpc_reflection": "GRPC_REFLECTION",
    "balance_warmup": "BALANCE_WARMUP",
    "outage_protection": "OUTAGE_PROTECTION",
    "min_replica_acks": "MIN_REPLICA_ACKS",
}

# Setting -> what `serve --help` says about it (with its variable and default).
HELP = {
    "host": "Address to listen on (0.0.0.0 in containers)",
    "port": "gRPC port",
    "redis_url": "redis://, rediss://, unix://, redis+cluster://SEEDS or "
                 "redis+sentinel://SENTINELS/NAME URL; unset: the embedded in-process store "
                 "(not persisted)",
    "heartbeat_timeout": "Seconds without a heartbeat before an agent is gone",
    "metrics_port": "HTTP port: /metrics, /healthz, /readyz, JSON API, dashboard; 0 disables",
    "unhealthy_below": "Derived status: success_rate below this is UNHEALTHY",
    "degraded_below": "Derived status: success_rate below this is DEGRADED, else HEALTHY",
    "log_max_events": "Change-log entries kept per namespace (approximate trim)",
    "inbox_capacity": "Unacknowledged notifications kept per agent",
    "sweep_interval": "Seconds between expiry sweeps",
    "expiry_events": "Also reap on Redis `expired` keyspace events (true/false)",
    "watch_buffer": "Events a watcher may lag behind before its stream is cut",
    "progress_interval": "Seconds between PROGRESS events on an idle watch",
    "log_format": "text, or json for one JSON object per line",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "tls_cert": "Server certificate (PEM); with TLS_KEY turns TLS on",
    "tls_key": "Server private key (PEM)",
    "tls_client_ca": "CA (PEM) client certificates must be signed by (mutual TLS)",
    "tokens_file": "Bearer tokens file (JSON); unset: authentication off",
    "shutdown_grace": "Seconds in-flight calls get on SIGTERM",
    "share_port": "Let other processes listen on the same gRPC port (SO_REUSEPORT; needs "
                  "REDIS_URL); `serve --workers N` sets it",
    "grpc_reflection": "gRPC server reflection for grpcurl list/describe (true/false)",
    "balance_warmup": "Seconds a new agent gets the average weight in BALANCED Discover",
    "outage_protection": "Move deadlines forward after a registry outage instead of reaping "
                         "the whole fleet (true/false)",
    "min_replica_acks": "Register, Deregister, EvictAgents and NotifyAgent answer once this many "
                        "replicas acknowledged the write (WAIT), else UNAVAILABLE; 0: no wait",
}


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


def _convert(name: str, kind: type, raw, source: str):
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        value = _BOOLEANS.get(str(raw).strip().lower())
        if value is None:
            raise ConfigError(f"{source}: {raw!r} is not a boolean (true/false)")
        return value
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {raw!r} is not a valid {kind.__name__}") from None
    return value


def load(overrides: dict | None = None, environ=os.environ) -> Settings:
    """Settings from `environ`, then non-None `overrides` (flags), validated."""
    values = {}
    types = {f.name: type(f.default) for f in fields(Settings)}
    for name, var in ENVIRONMENT.items():
        if environ.get(var, "") != "":
            values[name] = _convert(name, types[name], environ[var], var)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            flag = "--" + name.replace("_", "-")
            values[name] = _convert(name, types[name], raw, flag)
    settings = replace(Settings(), **values)
    validate(settings, given=set(values))
    return settings


def _where(name: str) -> str:
    return f"{ENVIRONMENT[name]} / --{name.replace('_', '-')}"


def validate(s: Settings, given=frozenset()) -> None:
    """`given`: the settings the user set, named first when two settings disagree."""
    def need(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{_where(name)}: {getattr(s, name)!r} {why}")

    need(0 < s.port < 65536, "port", "is not a TCP port (1..65535)")
    need(0 <= s.metrics_port < 65536, "metrics_port", "is not a TCP port (0 disables)")
    need(0.1 <= s.heartbeat_timeout <= 86400, "heartbeat_timeout", "must be 0.1..86400 seconds")
    need(0 <= s.unhealthy_below <= 1, "unhealthy_below", "must be within 0..1")
    need(s.degraded_below <= 1, "degraded_below", "must be within UNHEALTHY_BELOW..1")
    if "unhealthy_below" in given and "degraded_below" not in given:
        need(s.unhealthy_below <= s.degraded_below, "unhealthy_below",
             f"must not be above DEGRADED_BELOW ({s.degraded_below!r}); lower it or raise "
             "DEGRADED_BELOW too")
    need(s.unhealthy_below <= s.degraded_below, "degraded_below",
         f"must be within UNHEALTHY_BELOW ({s.unhealthy_below!r})..1")
    need(s.log_max_events >= 1000, "log_max_events", "must be at least 1000")
    need(1 <= s.inbox_capacity <= 10000, "inbox_capacity", "must be 1..10000")
    need(0.01 <= s.sweep_interval <= 10, "sweep_interval", "must be 0.01..10 seconds")
    need(10 <= s.watch_buffer <= 1_000_000, "watch_buffer", "must be 10..1000000")
    need(0.05 <= s.progress_interval <= 3600, "progress_interval", "must be 0.05..3600 seconds")
    need(s.log_format in ("text", "json"), "log_format", "must be text or json")
    need(s.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level",
         "must be DEBUG, INFO, WARNING or ERROR")
    need(0 <= s.shutdown_grace <= 600, "shutdown_grace", "must be 0..600 seconds")
    need(0 <= s.balance_warmup <= 86400, "balance_warmup", "must be 0..86400 seconds")
    need(bool(s.tls_cert) == bool(s.tls_key), "tls_cert", "and TLS_KEY must be given together")
    need(not s.tls_client_ca or bool(s.tls_cert), "tls_client_ca", "needs TLS_CERT and TLS_KEY")
    need(not s.share_port or bool(s.redis_url), "share_port",
         "needs REDIS_URL: processes on one port must share one store, and the embedded store "
         "lives in one process")
    need(0 <= s.min_replica_acks <= 16, "min_replica_acks", "must be 0..16 replicas")
    need(not s.min_replica_acks or bool(s.redis_url), "min_replica_acks",
         "needs REDIS_URL: the embedded store has no replicas")
    if s.redis_url:
        try:
            redis_target.parse(s.redis_url)
        except redis_target.TargetError as exc:
            raise ConfigError(f"{_where('redis_url')}: {exc}") from None
    for name in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file"):
        path = getattr(s, name)
        need(not path or os.path.isfile(path), name, "is not a readable file")
