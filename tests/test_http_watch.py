"""GET /v1/watch as server-sent events: the gRPC watch's snapshot, ids as revisions,
Last-Event-ID resumes like since_revision, and the same compaction, slow-consumer and shutdown
statuses. Real Redis and the embedded store."""
from __future__ import annotations

import grpc
import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from http_client import running_http

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE.value[0]


@pytest.fixture(params=["redis", "embedded"])
async def http(request):
    marker = request.node.get_closest_marker("settings")
    async with running_http(request.param, **(marker.kwargs if marker else {})) as h:
        yield h


def register(agent_id: str, **fields) -> pb.RegisterRequest:
    return pb.RegisterRequest(agent_type=pb.WORKER, capabilities=["python"], agent_id=agent_id,
                              **fields)


def kinds(events) -> list[tuple[str, str]]:
    return [(e["data"]["type"], e["data"].get("agent", {}).get("agent_id", "")) for e in events]


async def test_snapshot_then_live_events_with_revisions_as_ids(http):
    stub = http.registry.stub
    await stub.Register(register("a"))
    async with http.events(namespace="default") as stream:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        snapshot = await stream.take(2)
        assert kinds(snapshot) == [("SNAPSHOT", "default/a"), ("SNAPSHOT_END", "")]
        assert snapshot[1]["id"] == snapshot[1]["data"]["revision"]
        await stub.Register(register("b"))
        await stub.EvictAgents(pb.EvictRequest(agent_ids=["default/a"], reason="test"))
        live = await stream.take(2)
    assert kinds(live) == [("REGISTERED", "default/b"), ("EVICTED", "default/a")]
    assert live[1]["data"]["reason"] == "test"
    assert all(e["id"] == e["data"]["revision"] and e["id"] for e in live)


async def test_last_event_id_resumes_exactly_after_that_revision(http):
    stub = http.registry.stub
    async with http.events(skip_snapshot="true") as stream:
        await stub.Register(register("a"))
        first = (await stream.take(1))[0]
    await stub.Register(register("b"))
    await stub.Deregister(pb.DeregisterRequest(agent_id="default/a"))
    # what a browser's EventSource sends when it reconnects
    async with http.events(headers={"Last-Event-ID": first["id"]}) as stream:
        resumed = await stream.take(2)
    assert kinds(resumed) == [("REGISTERED", "default/b"), ("DEREGISTERED", "default/a")]
    # and the query parameter of the gRPC request works the same
    async with http.events(since_revision=first["id"]) as stream:
        assert kinds(await stream.take(2)) == kinds(resumed)


async def test_a_revision_newer_than_the_log_is_out_of_range(http):
    status, error = await http.call("GET", "/v1/watch",
                                    headers={"Last-Event-ID": "99999999999999-0"})
    assert status == 400 and error["code"] == OUT_OF_RANGE
    assert "since_revision" in error["message"]
    status, error = await http.call("GET", "/v1/watch", headers={"Last-Event-ID": "yesterday"})
    assert status == 400 and "since_revision" in error["message"]


@pytest.mark.settings(progress_interval=0.1)
async def test_an_idle_watch_gets_progress_events_to_resume_from(http):
    async with http.events(skip_snapshot="true") as stream:
        progress = await stream.next()
    assert progress["data"]["type"] == "PROGRESS" and progress["id"]


async def test_watch_one_agent_by_id(http):
    stub = http.registry.stub
    await stub.Register(register("a"))
    await stub.Register(register("b"))
    async with http.events(agent_id="default/a") as stream:
        assert kinds(await stream.take(2)) == [("SNAPSHOT", "default/a"), ("SNAPSHOT_END", "")]
        await stub.NotifyAgent(pb.NotifyRequest(agent_id="default/b", kind="x"))
        await stub.NotifyAgent(pb.NotifyRequest(agent_id="default/a", kind="hello"))
        event = (await stream.take(1))[0]
    assert event["data"]["type"] == "NOTIFICATION"
    assert event["data"]["notification"]["kind"] == "hello"


async def test_shutdown_ends_the_stream_with_a_status_to_resume_elsewhere():
    async with running_http("embedded") as http:
        async with http.events() as stream:
            await stream.take(1)  # SNAPSHOT_END
            await http.registry.server.stop(grace=0.5)
            end = await stream.next()
            assert end["event"] == "status"
            assert end["data"]["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert end["data"]["http_status"] == 503
            assert await stream.next() == {}  # and the stream is over


@pytest.mark.settings(watch_buffer=10)
async def test_a_watcher_that_falls_behind_is_cut_off_with_resource_exhausted(http):
    stub = http.registry.stub
    ids = [(await stub.Register(register(f"w{i}"))).agent_id for i in range(40)]
    async with http.events(skip_snapshot="true") as stream:
        await stub.Register(register("first"))
        assert kinds(await stream.take(1)) == [("REGISTERED", "default/first")]
        # one call, 40 events: they reach the watcher at once, faster than it is written
        await stub.EvictAgents(pb.EvictRequest(agent_ids=ids))
        events = []
        while (item := await stream.next()) and "event" not in item:
            events.append(item)
    assert len(events) < len(ids)
    assert item["event"] == "status", events
    assert item["data"]["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert item["data"]["http_status"] == 429 and "resume" in item["data"]["message"]
