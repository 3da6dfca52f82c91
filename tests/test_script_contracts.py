"""The numbers and names the Lua scripts use come from the Python side (keys.py, the proto)."""
from __future__ import annotations

import re

import fakeredis
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from server import scripts

AGENT_LUA = (scripts.LUA_DIR / "includes" / "agent.lua").read_text()


async def test_lua_event_and_status_numbers_equal_the_proto_enums():
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    events = [name for name, number in pb.EventType.items() if number]
    statuses = ["HEALTHY", "UNHEALTHY", "DEGRADED"]
    probe = (scripts.prelude() + AGENT_LUA + "\nreturn {"
             + ", ".join([f"EV.{e}" for e in events] + statuses) + "}")
    got = await redis.eval(probe, 0)
    assert got == [pb.EventType.Value(e) for e in events] + [pb.AgentStatus.Value(s)
                                                           for s in statuses]
    await redis.aclose()


def test_no_script_spells_a_count_or_inbox_field_or_an_event_number_inline():
    for path in [*scripts.LUA_DIR.glob("*.lua"), *scripts.LUA_DIR.glob("includes/*.lua")]:
        code = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())
        assert not re.search(r"'[ts]:'|'[kp]'|\bn\.[kp]\b|EV\s*=\s*{", code), path.name
