"""Coalesces concurrent calls of one Lua script into pipelined writes (the heartbeat path)."""
from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


# Most parts of a heartbeat call repeat across calls (the script's sha, the namespace's keys,
# the settings): their RESP encoding is kept, halving the packing cost (see RESULTS.md).
_ENCODED: dict[str, bytes] = {}
_ENCODED_MAX = 8192


def _bulk(part) -> bytes:
    if isinstance(part, str):
        encoded = _ENCODED.get(part)
        if encoded is None:
            data = part.encode()
            encoded = b"$%d\r\n%s\r\n" % (len(data), data)
            if len(_ENCODED) < _ENCODED_MAX:
                _ENCODED[part] = encoded
        return encoded
    data = str(part).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack_command(parts) -> bytes:
    """One command in RESP, as redis-py would encode it (str as UTF-8, numbers via str())."""
    return b"*%d\r\n" % len(parts) + b"".join([_bulk(part) for part in parts])


class HeartbeatPipeline:
    """Coalesces concurrent heartbeat.lua calls: every call made during one turn of the event
    loop goes to Redis in one pipelined write on one connection, and the replies come back in
    one read. An unpipelined redis-py call costs ~135 us of server CPU, one here ~12 us (see
    benchmarks/RESULTS.md). Heartbeats are idempotent, so a batch is resent once after a lost
    connection, and once after NOSCRIPT (Redis restarted or SCRIPT FLUSH) with the script
    loaded again. Each call's future gets its reply, or the exception for that call."""

    MAX_BATCH = 256       # commands per pipelined write
    MAX_IN_FLIGHT = 4     # pipelines waiting for Redis at once; later calls queue up meanwhile

    def __init__(self, redis, script):
        self.redis = redis
        self.script = script
        self.queue: list[tuple[bytes, asyncio.Future]] = []
        self.in_flight = 0
        self.scheduled = False
        self.tasks: set[asyncio.Task] = set()

    def call(self, keys, args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.append((_pack_command(("EVALSHA", self.script.sha, len(keys), *keys, *args)),
                           future))
        if not self.scheduled and self.in_flight < self.MAX_IN_FLIGHT:
            self.scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.scheduled = False
        while self.queue and self.in_flight < self.MAX_IN_FLIGHT:
            batch = self.queue[:self.MAX_BATCH]
            del self.queue[:self.MAX_BATCH]
            self.in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch) -> None:
        try:
            replies = await self._execute([command for command, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller gets the failure
            replies = [exc] * len(batch)
        finally:
            self.in_flight -= 1
            if self.queue and not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        for (_, future), reply in zip(batch, replies):
            if future.done():  # the caller went away
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, commands: list[bytes], attempt: int = 0) -> list:
        try:
            replies = await self._send(commands)
        except RedisConnectionError:
            if attempt:
                raise
            return await self._execute(commands, attempt + 1)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing and attempt < 2:
            await self.redis.script_load(self.script.script)
            again = await self._execute([commands[i] for i in missing], 2)
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _send(self, commands: list[bytes]) -> list:
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(b"".join(commands))
            replies = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # this call's error reply; the rest follow
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect(nowait=True)  # unread replies: never reuse it
            raise
        finally:
            await pool.release(connection)
