"""Stopping background tasks reliably."""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("service_registry")


async def cancel_tasks(tasks, timeout: float = 5.0) -> None:
    """Cancels background tasks and waits for them to end. A cancel that lands while redis-py
    sets up a connection is sometimes swallowed (redis/redis-py#2551: the command completes
    and the task goes on), so a task still running is cancelled again."""
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + timeout
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending and time.monotonic() > deadline:
            log.warning("background task(s) did not stop: %s",
                        ", ".join(task.get_name() for task in pending))
            return
