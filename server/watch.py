"""WatchAgents: the namespace change log (a Redis Stream) fanned out to watchers.

Log readers follow the logs of the watched namespaces, up to STREAMS_PER_READER per XREAD
BLOCK on one connection, and hand each entry to every watcher of its namespace; a watcher has
a bounded buffer and is cut off with RESOURCE_EXHAUSTED when it overflows. A watcher resumes
from any revision still in the log: it joins the live feed first, then reads the log from its
revision up to where the feed stood, so nothing falls between the two.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging

import grpc
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb
from redis.exceptions import ResponseError

from . import convert, keys, metrics, validation
from .config import Settings
from .errors import REDIS_DOWN, RpcError
from .keys import EVENT_FIELDS as EF, FIELDS as F
from .registry_store import RegistryStore
from .store import Store

log = logging.getLogger("service_registry")

BLOCK_MS = 250          # a reader's XREAD BLOCK: also how soon it follows a newly added log
STREAMS_PER_READER = 256
READ_COUNT = 500
CATCH_UP_CHUNK = 1000
SNAPSHOT_PAGE = 500
NOTIFICATION = pb.NOTIFICATION
PROGRESS = pb.PROGRESS   # logged with a reason when a registry outage is recorded: for everyone
RESET_MESSAGE = "the store was reset (its data is gone); re-list"
# A failover to a replica that had not received the last entries, or a restore from an older
# copy: the revision is gone and changes the watcher saw may never have happened for the store.
LOST_MESSAGE = ("the store was reset to an older copy: it lacks revision {revision}, which this "
                "watch has seen (a failover to a replica that missed it, or a restore); re-list")
_EVENT_FIELD_NAMES = frozenset(EF.values())


def revision_key(revision: str) -> tuple[int, int]:
    ms, _, seq = revision.partition("-")
    return int(ms), int(seq or 0)


def parse_revision(value: str) -> str:
    return validation.stream_id(value, "since_revision", seq_required=False)


def matches(rec: dict[str, str], clauses) -> bool:
    """Python twin of `matches` in lua/includes/agent.lua (same clause format)."""
    for field, op, want in clauses:
        have = rec.get(field)
        if have is None:
            return False
        if op == "eq":
            if have != want:
                return False
        else:
            try:
                x = float(have)
            except ValueError:
                return False
            if (op == "ge" and x < float(want)) or (op == "le" and x > float(want)):
                return False
    return True


class Event:
    """One log entry, decoded once and shared by every watcher of the namespace."""
    __slots__ = ("revision", "type", "name", "record", "previous", "fields", "_message")

    def __init__(self, revision: str, fields: dict[str, str]):
        self.revision = revision
        self.type = int(fields[EF["type"]])
        self.name = fields[EF["agent"]]
        self.fields = fields
        record = {k: v for k, v in fields.items() if k not in _EVENT_FIELD_NAMES}
        self.record = record or None
        self.previous = None
        if EF["old"] in fields:
            self.previous = convert.record(json.loads(fields[EF["old"]]))
        elif EF["was"] in fields and self.record is not None:
            self.previous = dict(self.record, **{F["status"]: fields[EF["was"]]})
        self._message = None

    def message(self, namespace: str) -> pb.WatchEvent:
        if self._message is None:
            event = pb.WatchEvent(type=self.type, revision=self.revision,
                                  reason=self.fields.get(EF["reason"], ""))
            if self.record is not None:
                event.agent.CopyFrom(convert.agent_info(namespace, self.name, self.record))
            if self.type == NOTIFICATION:
                event.notification.CopyFrom(pb.Notification(
                    notification_id=self.fields[EF["notification"]],
                    agent_id=f"{namespace}/{self.name}", kind=self.fields.get(EF["kind"], ""),
                    payload=self.fields.get(EF["payload"], ""),
                    created_at_unix_ms=revision_key(self.fields[EF["notification"]])[0]))
            self._message = event
        return self._message


class Selector:
    """Which agents a watcher follows: by name, or by capability, type and filters."""

    def __init__(self, request: pb.WatchRequest, namespace: str):
        self.name = ""
        if request.agent_id:
            self.name = validation.agent_ref(request.agent_id, namespace).name
        caps = validation.capabilities([request.capability], "capability") \
            if request.capability else []
        self.capability = caps[0] if caps else ""
        self.agent_type = validation.agent_type(request.agent_type, required=False)
        filters = validation.filters(request.filters)
        if filters.namespace and filters.namespace != namespace:
            raise validation.InvalidArgument("filters['namespace']: differs from namespace")
        self.filters = filters
        self.clauses = list(filters.clauses)
        if self.agent_type:
            self.clauses.append((F["agent_type"], "eq", str(self.agent_type)))
        self.everything = not (self.name or self.capability or self.clauses)

    def admits(self, rec: dict[str, str] | None) -> bool:
        if rec is None:
            return False
        if self.capability and self.capability not in rec.get(F["capabilities"], "").split(","):
            return False
        return matches(rec, self.clauses)

    def wants(self, event: Event) -> bool:
        if event.type == PROGRESS:
            return True
        if self.name and event.name != self.name:
            return False
        if event.type == NOTIFICATION:
            return bool(self.name) or self.everything
        return bool(self.name) or self.admits(event.record) or self.admits(event.previous)


class Watcher:
    def __init__(self, selector: Selector, capacity: int):
        self.selector = selector
        self.capacity = capacity
        self.queue: collections.deque[Event] = collections.deque()
        self.wakeup = asyncio.Event()
        self.overflowed = False
        self.ended: RpcError | None = None

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.selector.wants(event):
            return
        if len(self.queue) >= self.capacity:
            self.overflowed = True  # the stream ends; the client resumes from its revision
        else:
            self.queue.append(event)
        self.wakeup.set()

    def end(self, error: RpcError) -> None:
        self.ended = error
        self.wakeup.set()


class Feed:
    """One namespace's log, for every watcher of it in this process; a LogReader follows it."""

    def __init__(self, store: Store, namespace: str):
        self.store = store
        self.namespace = namespace
        self.log_key = keys.namespace(namespace).log
        self.watchers: set[Watcher] = set()
        self.position = "0-0"   # last revision handed to watchers
        self.ready = asyncio.Event()
        self.closed = False     # set, without awaiting, once no reader follows it

    async def start(self) -> None:
        self.position = await last_revision(self.store.redis, self.log_key) or "0-0"
        self.ready.set()

    def deliver(self, entries) -> None:
        for revision, fields in entries:
            event = Event(revision, fields)
            self.position = revision
            for watcher in tuple(self.watchers):
                watcher.offer(event)

    def end(self, error: RpcError) -> None:
        self.closed = True
        for watcher in tuple(self.watchers):
            watcher.end(error)


class LogReader:
    """Follows up to STREAMS_PER_READER namespace logs with one XREAD BLOCK on one connection,
    so N watched namespaces hold N / STREAMS_PER_READER Redis connections, not N. A feed added
    while the XREAD blocks is read from its position on the next call (within BLOCK_MS), so
    nothing is missed. Redis Cluster refuses a multi-key command across hash slots (CROSSSLOT,
    even on one node): there a reader follows the logs of one slot (`slot`), wherever redis-py
    routes it, so it follows the slot when it moves to another shard."""

    def __init__(self, store: Store, slot: int | None = None):
        self.store = store
        self.slot = slot        # Redis Cluster: the hash slot of every log it follows
        self.feeds: dict[str, Feed] = {}
        self.task: asyncio.Task | None = None
        self.connections = 0    # (re)connections of this reader's client, to whichever node

    def _connected(self, _connection) -> None:
        self.connections += 1

    @property
    def full(self) -> bool:
        return len(self.feeds) >= STREAMS_PER_READER

    def add(self, feed: Feed) -> None:
        self.feeds[feed.log_key] = feed
        if self.task is None:
            self.task = asyncio.create_task(self._follow(), name="watch-log-reader")

    def stop(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None

    def _prune(self) -> None:
        for key, feed in tuple(self.feeds.items()):
            if feed.closed or not feed.watchers:
                feed.closed = True
                del self.feeds[key]

    async def _follow(self) -> None:
        client = self.store.reader_client(socket_timeout=BLOCK_MS / 1000 + 5,
                                          on_connect=self._connected)
        delay = 0.1
        reconnected = True   # check the node before the first read, like after a reconnection
        checked = 0          # self.connections when the node was last checked
        try:
            while True:
                self._prune()
                if not self.feeds:
                    self.task = None  # before any await: add() starts a new task
                    return
                try:
                    if reconnected or self.connections != checked:
                        reconnected = False
                        if await self.store.check_reset():
                            return  # the store's listener ended every feed
                        await end_lost_feeds(client, tuple(self.feeds.values()))
                        checked = self.connections  # connections made meanwhile: checked too
                        continue
                    reply = await self._xread(client, {k: f.position
                                                       for k, f in self.feeds.items()})
                    delay = 0.1
                    if self.connections != checked:
                        continue  # read from a node not checked yet (redis-py reconnected)
                except REDIS_DOWN as exc:
                    log.warning("watch log reader: redis unreachable (%s); retrying", exc)
                    reconnected = True
                    await asyncio.sleep(delay)  # back off while Redis is down
                    delay = min(delay * 2, 2.0)
                    continue
                for key, entries in reply or ():
                    feed = self.feeds.get(key)
                    if feed is not None:
                        feed.deliver(entries)
        except Exception as exc:
            log.exception("watch log reader failed")
            for feed in self.feeds.values():
                feed.end(RpcError(grpc.StatusCode.UNAVAILABLE, f"watch reader failed ({exc}); "
                                  "resume from your last revision"))
            self.feeds.clear()
            self.task = None
        finally:
            await self.store.release_reader(client)

    async def _xread(self, client, streams: dict[str, str]):
        if self.slot is None:
            return await client.xread(streams, count=READ_COUNT, block=BLOCK_MS)
        # Redis Cluster: to the node of the slot, as redis-py's slot cache says (routed by
        # redis-py, XREAD would cost a COMMAND GETKEYS round trip first: its keys "move")
        node = client.get_node_from_key(next(iter(streams)))
        return await client.execute_command(
            "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", *streams,
            *streams.values(), target_nodes=node)


async def end_lost_feeds(redis, feeds) -> None:
    """After a reader (re)connected, possibly to another node (a promoted replica) or to a
    restarted one: a feed whose position (the last revision its watchers got) is not in the log
    there ends with OUT_OF_RANGE. That node lacks changes the watchers saw, so carrying on from
    it would keep them forever (a replica that missed the last entries of a dead primary), or
    skip what was trimmed meanwhile. One pipelined round trip on the reader's own connection,
    so the node checked is the node read from."""
    feeds = [feed for feed in feeds if feed.position != "0-0" and not feed.closed]
    if not feeds:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for feed in feeds:
            pipe.xrange(feed.log_key, feed.position, feed.position, count=1)
        found = await pipe.execute()
    for feed, entries in zip(feeds, found):
        if not entries:
            log.warning("watch feed %s: revision %s is not in the log any more (failover to a "
                        "replica that missed it, or a restore); watchers must re-list",
                        feed.namespace, feed.position)
            feed.end(RpcError(grpc.StatusCode.OUT_OF_RANGE,
                              LOST_MESSAGE.format(revision=feed.position)))


async def last_revision(redis, log_key: str) -> str:
    last = await redis.xrevrange(log_key, count=1)
    return last[0][0] if last else ""


class Watches:
    def __init__(self, settings: Settings, store: Store, registry: RegistryStore):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.feeds: dict[str, Feed] = {}
        self.readers: list[LogReader] = []
        self.closing: RpcError | None = None
        store.on_reset(self._store_reset)

    def _store_reset(self) -> None:
        """Every open watch's view is wrong now: OUT_OF_RANGE, re-list (the client's watch()
        does that by itself)."""
        self._end_all(RpcError(grpc.StatusCode.OUT_OF_RANGE, RESET_MESSAGE))

    async def _join(self, namespace: str, watcher: Watcher) -> Feed:
        feed = self.feeds.get(namespace)
        if feed is None or feed.closed:
            feed = Feed(self.store, namespace)
            self.feeds[namespace] = feed
            feed.watchers.add(watcher)
            try:
                await feed.start()
            except BaseException:
                self.feeds.pop(namespace, None)
                raise
            self._reader(feed).add(feed)
        else:
            await feed.ready.wait()
            feed.watchers.add(watcher)
        metrics.WATCHERS.inc()
        return feed

    def _reader(self, feed: Feed) -> LogReader:
        """A reader with room for the feed (on Redis Cluster: one of the feed's slot)."""
        slot = self.store.slot_of(feed.log_key)
        self.readers = [r for r in self.readers if r.feeds or r.task is not None]
        for reader in self.readers:
            if not reader.full and reader.slot == slot:
                return reader
        reader = LogReader(self.store, slot)
        self.readers.append(reader)
        return reader

    def _leave(self, feed: Feed, watcher: Watcher) -> None:
        feed.watchers.discard(watcher)
        metrics.WATCHERS.dec()

    def close(self, message: str) -> None:
        """Ends every stream with UNAVAILABLE (clients resume from their revision elsewhere)
        and stops the log readers."""
        self.closing = RpcError(grpc.StatusCode.UNAVAILABLE, message)
        self._end_all(self.closing)

    def _end_all(self, error: RpcError) -> None:
        for feed in self.feeds.values():
            feed.end(error)
        for reader in self.readers:
            reader.stop()
        self.feeds.clear()
        self.readers.clear()

    async def watch(self, namespace: str, request: pb.WatchRequest, context):
        if self.closing:
            raise self.closing
        selector = Selector(request, namespace)
        since = parse_revision(request.since_revision) if request.since_revision else ""
        watcher = Watcher(selector, self.settings.watch_buffer)
        feed = await self._join(namespace, watcher)
        try:
            joined_at = feed.position  # every later entry reaches watcher.queue
            if since:
                await self._check_retained(feed.log_key, since)
                start = since
            else:
                start = joined_at
                if not request.skip_snapshot:
                    async for item in self._snapshot(namespace, selector):
                        yield item
                    yield pb.WatchEvent(type=pb.SNAPSHOT_END, revision=joined_at)
            delivered = start
            async for event in self._read_log(feed.log_key, start, joined_at):
                if selector.wants(event):
                    delivered = event.revision
                    yield event.message(namespace)
            if since:
                await self._check_retained(feed.log_key, since)
            async for item in self._live(namespace, feed, watcher, delivered):
                yield item
        finally:
            self._leave(feed, watcher)

    async def _live(self, namespace: str, feed: Feed, watcher: Watcher, delivered: str):
        progress_every = self.settings.progress_interval
        after = revision_key(delivered)
        while True:
            while watcher.queue:
                event = watcher.queue.popleft()
                if revision_key(event.revision) <= after:
                    continue  # already sent while catching up
                yield event.message(namespace)
            if watcher.ended:
                raise watcher.ended
            if watcher.overflowed:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "watcher fell behind its buffer of "
                               f"{watcher.capacity} events; resume from the last revision")
            watcher.wakeup.clear()
            try:
                await asyncio.wait_for(watcher.wakeup.wait(), progress_every)
            except asyncio.TimeoutError:
                if not watcher.queue:
                    yield pb.WatchEvent(type=pb.PROGRESS, revision=feed.position)

    async def _read_log(self, log_key: str, after: str, until: str):
        """Log entries in (after, until], in bounded chunks."""
        if revision_key(after) >= revision_key(until):
            return
        cursor = after
        while True:
            entries = await self.store.redis.xrange(log_key, min=f"({cursor}", max=until,
                                                    count=CATCH_UP_CHUNK)
            for revision, fields in entries:
                yield Event(revision, fields)
                cursor = revision
            if len(entries) < CATCH_UP_CHUNK:
                return

    async def _check_retained(self, log_key: str, since: str) -> None:
        """OUT_OF_RANGE when events after `since` may have been trimmed, or the log was reset.

        Trimming leaves no record of what it removed (XINFO's max-deleted-entry-id only
        counts XDEL), so once anything was trimmed, a revision older than the first entry
        kept counts as compacted."""
        try:
            info = await self.store.redis.xinfo_stream(log_key)
        except ResponseError as exc:  # no log yet
            if "no such key" not in str(exc).lower():
                raise
            info = {}
        since_key = revision_key(since)
        if since_key > revision_key(info.get("last-generated-id") or "0-0"):
            raise RpcError(grpc.StatusCode.OUT_OF_RANGE,
                           f"since_revision: {since} is newer than the log (the store was "
                           "reset); re-list")
        first = info.get("first-entry")
        trimmed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)
        if first and revision_key(first[0]) > since_key:
            if trimmed:
                raise RpcError(grpc.StatusCode.OUT_OF_RANGE,
                               f"since_revision: {since} is compacted, re-list (the log keeps "
                               f"about {self.settings.log_max_events} events)")
            if since_key == (0, 0):
                return  # from the start of an empty log: nothing was missed
            # Never trimmed, yet it starts after the revision: a new log, the store was reset.
            raise RpcError(grpc.StatusCode.OUT_OF_RANGE,
                           f"since_revision: {since} is older than the log; {RESET_MESSAGE}")
        if since_key != (0, 0):
            await self._check_present(log_key, since)

    async def _check_present(self, log_key: str, since: str) -> None:
        """OUT_OF_RANGE for a revision within the log's range that the log does not hold: the
        caller saw it on a primary that failed before a replica got it (or the store was
        restored from an older copy), so what the caller holds may never have happened."""
        if not await self.store.redis.xrange(log_key, since, since, count=1):
            raise RpcError(grpc.StatusCode.OUT_OF_RANGE,
                           f"since_revision: {LOST_MESSAGE.format(revision=since)}")

    async def _snapshot(self, namespace: str, selector: Selector):
        if selector.name:
            agent = await self.registry.get(validation.AgentRef(namespace, selector.name))
            if agent is not None:
                yield pb.WatchEvent(type=pb.SNAPSHOT, agent=agent)
            return
        types = ([selector.agent_type] if selector.agent_type
                 else sorted(validation.AGENT_TYPES))
        clauses = json.dumps(selector.filters.clauses)
        for agent_type in types:
            after = ""
            while True:
                page = await self.registry.list_page(namespace, agent_type, after,
                                                     SNAPSHOT_PAGE, clauses, selector.capability)
                for agent in page.agents:
                    yield pb.WatchEvent(type=pb.SNAPSHOT, agent=agent)
                if not page.last:
                    break
                after = page.last
