"""Bearer-token authentication and authorization (scopes per namespace).

Off unless TOKENS_FILE is set. The tokens file is JSON, holds no plaintext token, and is read
again on SIGHUP (a bad file is logged and the tokens already loaded stay in force):

    {"tokens": [
      {"name": "guards",    "scope": "agent",    "namespace": "guards", "sha256": "<64 hex>"},
      {"name": "dashboard", "scope": "reader",   "namespace": "*",      "sha256": "<64 hex>"},
      {"name": "oncall",    "scope": "operator", "namespace": "*",      "sha256": "<64 hex>"}
    ]}

- agent: register, heartbeat and deregister the agents it registered, and read, in exactly one
  namespace. Agents are bound to the token's *name* (so a token may be rotated under the same
  name without orphaning its agents).
- reader: get, list, discover, watch and stats in one namespace or "*" (all).
- operator: everything in one namespace or "*", including evict, notify, and acting on any agent.

Clients send `authorization: Bearer <token>`. A missing or unknown token is UNAUTHENTICATED
(nothing says which tokens exist); a known token outside its scope or namespace is
PERMISSION_DENIED. Both are counted in service_registry_auth_failures_total{reason}.

Operator commands (`python -m server.auth` for the list):
    python -m server.auth add tokens.json guards agent guards   # prints the new token
    python -m server.auth hash < token.txt       # the sha256 field for a token of your own
    python -m server.auth rotate|remove tokens.json NAME; check tokens.json
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import grpc

from . import metrics, validation
from .errors import RpcError

log = logging.getLogger("service_registry")

ALL_NAMESPACES = "*"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
FAILURE_LOG_INTERVAL = 10.0  # seconds between two log lines about refused calls


class Scope(enum.Enum):
    """What an RPC needs (service.py passes one to Auth.check)."""
    READ = "read"          # get, list, discover, watch, stats
    AGENT = "agent"        # register, heartbeat, deregister (own agents) and read
    OPERATOR = "operator"  # everything, including evict and notify


class Role(enum.Enum):
    """What a token may do (the `scope` field of a tokens-file entry)."""
    AGENT = "agent"
    READER = "reader"
    OPERATOR = "operator"


_ALLOWED = {  # Scope -> roles that have it
    Scope.READ: {Role.AGENT, Role.READER, Role.OPERATOR},
    Scope.AGENT: {Role.AGENT, Role.OPERATOR},
    Scope.OPERATOR: {Role.OPERATOR},
}
_ACTION = {
    Scope.READ: "read",
    Scope.AGENT: "register, heartbeat or deregister agents",
    Scope.OPERATOR: "evict or notify agents",
}


class TokensFileError(ValueError):
    """The tokens file cannot be read or is not valid; the message names the entry."""


@dataclass(frozen=True)
class Token:
    name: str
    role: Role
    namespace: str   # a namespace, or "*" (reader and operator only)
    digest: bytes    # sha256 of the token

    def covers(self, namespace: str) -> bool:
        return self.namespace == ALL_NAMESPACES or self.namespace == namespace


def hash_token(token: str) -> str:
    """The hex sha256 the tokens file stores for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, source: str = "tokens file") -> tuple[Token, ...]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise TokensFileError(f"{source}: not valid JSON ({exc})") from None
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise TokensFileError(f'{source}: expected an object {{"tokens": [...]}}')
    tokens, names, digests = [], set(), set()
    for i, entry in enumerate(entries):
        where = f"{source}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise TokensFileError(f"{where}: not an object")
        unknown = set(entry) - {"name", "scope", "namespace", "sha256", "comment"}
        if unknown:
            raise TokensFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}"
                                  + (" (store the sha256 of the token, never the token)"
                                     if unknown & {"token", "secret", "value"} else ""))
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TokensFileError(f"{where}: name {name!r} must be 1-128 letters, digits, "
                                  "'.', '_', ':', '@', '-'")
        where = f"{source}: token {name!r}"
        if name in names:
            raise TokensFileError(f"{where}: the name is used twice")
        try:
            role = Role(entry.get("scope"))
        except ValueError:
            raise TokensFileError(f"{where}: scope {entry.get('scope')!r} is not agent, reader "
                                  "or operator") from None
        namespace = entry.get("namespace")
        if not isinstance(namespace, str) or not namespace:
            raise TokensFileError(f"{where}: namespace is required")
        if namespace == ALL_NAMESPACES:
            if role is Role.AGENT:
                raise TokensFileError(f'{where}: an agent token needs one namespace, not "*"')
        else:
            try:
                validation.namespace(namespace)
            except validation.InvalidArgument as exc:
                raise TokensFileError(f"{where}: {exc}") from None
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise TokensFileError(f"{where}: sha256 must be 64 hex digits (python -m server.auth "
                                  "hash)")
        raw = bytes.fromhex(digest)
        if raw in digests:
            raise TokensFileError(f"{where}: the same token is listed twice")
        names.add(name)
        digests.add(raw)
        tokens.append(Token(name, role, namespace, raw))
    return tuple(tokens)


def load_tokens(path: str) -> tuple[Token, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise TokensFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_tokens(text, path)


def bearer_token(metadata) -> str:
    """The token of the first `authorization: Bearer ...` entry, "" when there is none."""
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class _FailureLog:
    """One warning line per FAILURE_LOG_INTERVAL about refused calls, so a flood of bad calls
    cannot flood the log. Never logs a token, only its name when it is known."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last = 0.0
        self._suppressed = 0

    def note(self, reason: str, peer: str, name: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < FAILURE_LOG_INTERVAL:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        where = f" from {peer}" if peer else ""
        who = f" with token {name!r}" if name else ""
        more = f"; {suppressed} more refused since the previous report" if suppressed else ""
        log.warning("auth: refused a call%s%s: %s%s", where, who, reason, more)


class Auth:
    """check() returns the caller's owner id to bind agents to ("" when auth is off, and for
    operators, who may act on any agent)."""

    def __init__(self, tokens_file: str = ""):
        self.path = tokens_file
        self.tokens: tuple[Token, ...] = load_tokens(tokens_file) if tokens_file else ()
        self._failures = _FailureLog()

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def describe(self) -> str:
        counts = {role: sum(t.role is role for t in self.tokens) for role in Role}
        return (f"{len(self.tokens)} token(s) from {self.path} ("
                + ", ".join(f"{role.value}: {n}" for role, n in counts.items()) + ")")

    def reload(self) -> bool:
        """Reads the tokens file again (SIGHUP). On error the current tokens stay in force."""
        if not self.enabled:
            log.info("auth: SIGHUP ignored, authentication is off (no TOKENS_FILE)")
            return False
        try:
            tokens = load_tokens(self.path)
        except TokensFileError as exc:
            log.error("auth: tokens file NOT reloaded, keeping the %d token(s) in force: %s",
                      len(self.tokens), exc)
            return False
        self.tokens = tokens
        log.info("auth: reloaded %s", self.describe())
        return True

    # -- per call ---------------------------------------------------------------------------
    def _refuse(self, code: grpc.StatusCode, reason: str, message: str, peer: str,
                name: str = "") -> RpcError:
        metrics.AUTH_FAILURES.labels(reason).inc()
        self._failures.note(reason, peer, name)
        return RpcError(code, message)

    def identify(self, metadata, peer: str = "") -> Token:
        """The token presented in `metadata`; raises RpcError(UNAUTHENTICATED) otherwise."""
        presented = bearer_token(metadata)
        if not presented:
            raise self._refuse(grpc.StatusCode.UNAUTHENTICATED, "missing_token",
                               "authentication required: send 'authorization: Bearer <token>'",
                               peer)
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for token in self.tokens:  # constant time: every entry is compared
            if hmac.compare_digest(digest, token.digest):
                found = token
        if found is None:
            raise self._refuse(grpc.StatusCode.UNAUTHENTICATED, "invalid_token",
                               "invalid bearer token", peer)
        return found

    def check(self, context, scope: Scope, namespace: str) -> str:
        if not self.enabled:
            return ""
        peer = _peer(context)
        token = self.identify(context.invocation_metadata(), peer)
        if token.role not in _ALLOWED[scope]:
            raise self._refuse(grpc.StatusCode.PERMISSION_DENIED, "scope",
                               f"permission denied: this {token.role.value} token may not "
                               f"{_ACTION[scope]}", peer, token.name)
        if not token.covers(namespace):
            raise self._refuse(grpc.StatusCode.PERMISSION_DENIED, "namespace",
                               f"permission denied: this token may not act in namespace "
                               f"{namespace!r}", peer, token.name)
        return token.name if token.role is Role.AGENT else ""


    def readable(self, context, namespaces) -> list[str]:
        """Those of `namespaces` the caller may read (all of them when auth is off), for calls
        over every namespace (Discover or GetStats without one) that should skip namespaces a
        token does not cover instead of failing. UNAUTHENTICATED without a valid token."""
        if not self.enabled:
            return list(namespaces)
        token = self.identify(context.invocation_metadata(), _peer(context))
        return [ns for ns in namespaces if token.covers(ns)]


def _peer(context) -> str:
    try:
        return context.peer()
    except Exception:  # noqa: BLE001 - only for the log line
        return ""


def refusing_handler(handler, exc: RpcError):
    """A method handler of the same kind as `handler` that only ends the call with `exc`'s
    status, for an interceptor to return instead of `handler`."""
    async def refuse(request_or_iterator, context):
        await context.abort(exc.code, str(exc))

    serializer = handler.response_serializer
    # No request deserializer: a refused call's request is never parsed.
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, response_serializer=serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, response_serializer=serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, response_serializer=serializer)


# -- operator commands ----------------------------------------------------------------------
USAGE = """usage: python -m server.auth COMMAND

  hash                              sha256 of the token read on stdin (one line)
  new NAME SCOPE NAMESPACE          a fresh token (stderr) and its entry (stdout, JSON)
  add FILE NAME SCOPE NAMESPACE     add a fresh token to FILE (created if missing); prints it
  rotate FILE NAME                  replace NAME's token in FILE; prints the new one
  remove FILE NAME                  remove NAME from FILE
  check FILE                        validate FILE

SCOPE is agent, reader or operator; NAMESPACE a namespace, or * for reader and operator.
A token is printed once and stored nowhere: only its sha256 goes into the file. After changing
the file, send the server SIGHUP (kill -HUP <pid>) to load it."""


def _entry(name: str, scope: str, namespace: str) -> tuple[str, dict]:
    token = secrets.token_urlsafe(32)
    return token, {"name": name, "scope": scope, "namespace": namespace,
                   "sha256": hash_token(token)}


def _read_entries(path: str, missing_ok: bool = False) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise TokensFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise TokensFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    parse_tokens(text, path)
    return json.loads(text)["tokens"]


def _write_entries(path: str, entries: list[dict]) -> None:
    """Validates, then replaces the file atomically (a reload never sees half a file)."""
    text = json.dumps({"tokens": entries}, indent=2) + "\n"
    parse_tokens(text, path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".tokens-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.chmod(temporary, os.stat(path).st_mode & 0o777)
        except FileNotFoundError:
            os.chmod(temporary, 0o640)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "hash" and not args:
            token = sys.stdin.readline().rstrip("\r\n")
            if not token:
                print("error: no token on stdin", file=sys.stderr)
                return 2
            print(hash_token(token))
        elif command == "new" and len(args) == 3:
            token, entry = _entry(*args)
            parse_tokens(json.dumps({"tokens": [entry]}), "new token")
            print(f"token (give it to the client, it is not stored anywhere): {token}",
                  file=sys.stderr)
            print(json.dumps(entry))
        elif command == "add" and len(args) == 4:
            path, name, scope, namespace = args
            entries = _read_entries(path, missing_ok=True)
            if any(e.get("name") == name for e in entries):
                print(f"error: {path}: {name!r} exists (rotate or remove it)", file=sys.stderr)
                return 1
            token, entry = _entry(name, scope, namespace)
            _write_entries(path, entries + [entry])
            print(token)
        elif command == "rotate" and len(args) == 2:
            path, name = args
            entries = _read_entries(path)
            found = [e for e in entries if e.get("name") == name]
            if not found:
                print(f"error: {path}: no token named {name!r}", file=sys.stderr)
                return 1
            token = secrets.token_urlsafe(32)
            found[0]["sha256"] = hash_token(token)
            _write_entries(path, entries)
            print(token)
        elif command == "remove" and len(args) == 2:
            path, name = args
            entries = _read_entries(path)
            kept = [e for e in entries if e.get("name") != name]
            if len(kept) == len(entries):
                print(f"error: {path}: no token named {name!r}", file=sys.stderr)
                return 1
            _write_entries(path, kept)
        elif command == "check" and len(args) == 1:
            print(f"ok: {len(load_tokens(args[0]))} token(s)")
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except TokensFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if command in ("check", "rotate", "remove") else 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
