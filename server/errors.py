"""Maps failures to gRPC status codes (rpc_calls.py records outcomes and latency)."""
from __future__ import annotations

import logging

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import AskError, BusyLoadingError, ClusterError, ReadOnlyError
from redis.exceptions import RedisClusterException, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .validation import InvalidArgument

log = logging.getLogger("service_registry")

# Scripts signal failures with an error reply whose first word names the status.
_SCRIPT_STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# ReadOnlyError: the node took writes until a failover demoted it; the connection classes
# (store.py, redis-py's Sentinel pool) drop such a connection and look for the primary again.
# Redis Cluster: a shard failing over (CLUSTERDOWN, slots not covered, TRYAGAIN, redirects
# past redis-py's limit) is an outage of that shard, as unreachable as a dead Redis.
CLUSTER_DOWN = (ClusterError, RedisClusterException, TryAgainError)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, OSError,
              *CLUSTER_DOWN)


class RpcError(Exception):
    """Raised by handlers for a definite status; message goes to the client as is."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class NotReplicated(RpcError):
    """MIN_REPLICA_ACKS: the write was made on the primary, but fewer replicas than asked
    acknowledged it in time: it may be lost if the primary fails before they catch up."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int):
        super().__init__(grpc.StatusCode.UNAVAILABLE,
                         f"written on the redis primary, but only {acked} of {wanted} "
                         f"replica(s) acknowledged it within {timeout_ms} ms (MIN_REPLICA_ACKS): "
                         "it may be lost if the primary fails now; the call is safe to retry")
        self.acked, self.wanted = acked, wanted


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RpcError):
        return exc.code, str(exc)
    if isinstance(exc, ReadOnlyError):
        return grpc.StatusCode.UNAVAILABLE, (f"redis is read-only (a replica now: failover in "
                                             f"progress?): {exc}")
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, AskError):  # MOVED/ASK that no retry followed
        return grpc.StatusCode.UNAVAILABLE, ("redis answered MOVED or ASK: the namespace's slot "
                                             "is moving (retry), or REDIS_URL names one node of "
                                             "a Redis Cluster (use redis+cluster://)")
    if isinstance(exc, ResponseError) and not isinstance(exc, CLUSTER_DOWN):
        word, _, rest = str(exc).partition(" ")
        code = _SCRIPT_STATUS.get(word)
        if code is not None:
            return code, rest
        if str(exc).startswith(("BUSY", "LOADING", "MASTERDOWN", "READONLY")):
            return grpc.StatusCode.UNAVAILABLE, f"redis is not available: {exc}"
    if isinstance(exc, REDIS_DOWN):
        return grpc.StatusCode.UNAVAILABLE, f"redis is not reachable: {exc}"
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def outcome_of(code: grpc.StatusCode) -> str:
    return "ok" if code == grpc.StatusCode.OK else code.name.lower()
