"""REDIS_URL, parsed: which Redis deployment the registry talks to.

    (unset)                                    the embedded in-process store
    redis://[user:pw@]host:port/db             one Redis node (rediss:// for TLS, unix:///path)
    redis+cluster://[user:pw@]h1:p1,h2:p2      Redis Cluster: seed nodes, any of its primaries
    redis+sentinel://[user:pw@]s1:p1,s2:p2/NAME[/db]
                                               Sentinel: the sentinels and the primary's name

`rediss+cluster://` and `rediss+sentinel://` use TLS to every node. Query options are redis-py's
own `from_url` options (`?ssl_ca_certs=...&ssl_cert_reqs=required`), applied to every node;
`sentinel_password` (and `sentinel_username`) authenticate to the sentinels when they differ from
the data nodes. The `+cluster`/`+sentinel` schemes follow the `redis+sentinel://` form of other
clients (Lettuce, Celery); redis-py itself parses only the single-node forms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.connection import parse_url

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_AUTH_OPTIONS = ("sentinel_password", "sentinel_username")


class TargetError(ValueError):
    """REDIS_URL is malformed; the message says what, never the password."""


@dataclass(frozen=True)
class RedisTarget:
    kind: str                                   # "single", "cluster" or "sentinel"
    url: str                                    # as given (kept for the single-node form)
    nodes: tuple[tuple[str, int], ...] = ()     # cluster seeds or sentinels
    primary_name: str = ""                      # sentinel only
    db: int = 0
    tls: bool = False
    # connection options for every data node: username, password, ssl_*, ... (redis-py names)
    options: dict = field(default_factory=dict)
    sentinel_options: dict = field(default_factory=dict)   # for the sentinels themselves

    def describe(self) -> str:
        """For the log: no password."""
        where = ",".join(f"{h}:{p}" for h, p in self.nodes)
        tls = " over TLS" if self.tls else ""
        if self.kind == "cluster":
            return f"redis cluster (seed nodes {where}){tls}"
        if self.kind == "sentinel":
            return f"redis primary {self.primary_name!r} via sentinels {where} (db {self.db}){tls}"
        return f"redis at {redact(self.url)}"


def parse(url: str) -> RedisTarget:
    """Raises TargetError (one line, no password) for anything the client could not use."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        try:
            parse_url(url)
        except ValueError as exc:
            raise TargetError(f"{redact(url)!r}: {exc}") from None
        return RedisTarget("single", url, tls=scheme == "rediss")
    if scheme in CLUSTER_SCHEMES:
        return _multi_node(url, "cluster", scheme.startswith("rediss"))
    if scheme in SENTINEL_SCHEMES:
        return _multi_node(url, "sentinel", scheme.startswith("rediss"))
    raise TargetError(f"{redact(url)!r} is not a redis://, rediss://, unix://, "
                      "redis+cluster:// or redis+sentinel:// URL")


def _multi_node(url: str, kind: str, tls: bool) -> RedisTarget:
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    nodes = tuple(_host_port(h, url, kind) for h in hostlist.split(",") if h.strip())
    if not nodes:
        raise TargetError(f"{redact(url)!r}: no {_what(kind)} listed")
    path = [p for p in parts.path.split("/") if p]
    name, db = "", 0
    if kind == "sentinel":
        if not path:
            raise TargetError(f"{redact(url)!r}: the primary's name is missing "
                              "(redis+sentinel://host:26379/NAME)")
        name, path = unquote(path[0]), path[1:]
    if len(path) > 1:
        raise TargetError(f"{redact(url)!r}: unexpected path {parts.path!r}")
    if path:
        try:
            db = int(path[0])
        except ValueError:
            raise TargetError(f"{redact(url)!r}: database {path[0]!r} is not a number") from None
        if kind == "cluster" and db != 0:
            raise TargetError(f"{redact(url)!r}: Redis Cluster has database 0 only")
    query = dict(parse_qsl(parts.query))
    sentinel_options = {k: query.pop(k) for k in SENTINEL_AUTH_OPTIONS if k in query}
    # redis-py turns the query into typed connection options: ask it, on a one-node URL
    one = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}h"
    try:
        options = parse_url(one + (f"/?{urlencode(query)}" if query else ""))
    except ValueError as exc:
        raise TargetError(f"{redact(url)!r}: {exc}") from None
    for key in ("host", "port", "db", "path", "connection_class"):
        options.pop(key, None)
    return RedisTarget(kind, url, nodes, name, db, tls, options, sentinel_options)


def _host_port(text: str, url: str, kind: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host:  # no port given
        return text.strip(), DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    try:
        number = int(port)
    except ValueError:
        raise TargetError(f"{redact(url)!r}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise TargetError(f"{redact(url)!r}: port {number} is out of range")
    return host.strip("[]"), number


def _what(kind: str) -> str:
    return "seed node" if kind == "cluster" else "sentinel"


def redact(url: str) -> str:
    """The URL without its credentials."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
