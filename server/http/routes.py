"""The one table of HTTP routes: each names the RegistryService method (the gRPC handler) it
calls, where the request fields come from, and how the reply is sent. api.py serves it,
openapi.py describes it."""
from __future__ import annotations

from dataclasses import dataclass

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["ServiceRegistry"]
PATH_PARAM = "agent_id"  # the only path parameter; "namespace/name", its slash kept as is
UNARY, SSE, NDJSON, CARD = "unary", "sse", "ndjson", "card"


@dataclass(frozen=True)
class Route:
    method: str
    path: str               # OpenAPI form; {agent_id} matches the rest of the path, slashes too
    rpc: str                # the RegistryService method
    body: bool              # request fields from the JSON body, else from the query string
    summary: str
    kind: str = UNARY       # unary: JSON reply; sse: text/event-stream; ndjson: one JSON a line;
                            # card: the A2A Agent Card of the GetAgent reply, as registered
    query_token: bool = False  # also accepts ?access_token= (EventSource cannot send headers)

    @property
    def operation_id(self) -> str:
        """Unique per route (GetAgent serves two): the OpenAPI operationId and aiohttp name."""
        return self.rpc + ("AgentCard" if self.kind == CARD else "")

    @property
    def method_descriptor(self):
        return SERVICE.methods_by_name[self.rpc]

    @property
    def request_class(self):
        return getattr(pb, self.method_descriptor.input_type.name)

    @property
    def path_params(self) -> tuple[str, ...]:
        return (PATH_PARAM,) if "{" + PATH_PARAM + "}" in self.path else ()

    @property
    def aiohttp_path(self) -> str:
        return self.path.replace("{" + PATH_PARAM + "}", "{" + PATH_PARAM + ":.+}")


ROUTES = (
    Route("POST", "/v1/agents", "Register", True,
          "Register an agent (or re-register under agent_id)"),
    Route("GET", "/v1/agents", "ListAgents", False,
          "List the agents of a namespace, a page at a time"),
    # before GetAgent: {agent_id} matches slashes, so the longer path must be tried first
    Route("GET", "/v1/agents/{agent_id}/agent-card.json", "GetAgent", False,
          "The A2A Agent Card the agent registered with", kind=CARD),
    Route("GET", "/v1/agents/{agent_id}", "GetAgent", False, "One agent"),
    Route("DELETE", "/v1/agents/{agent_id}", "Deregister", False, "Deregister an agent"),
    Route("POST", "/v1/agents/{agent_id}/heartbeat", "Heartbeat", True,
          "Heartbeat: renew the lease, report telemetry, receive notifications"),
    Route("POST", "/v1/heartbeats:batch", "HeartbeatBatch", True,
          "Many heartbeats in one call; failures are reported per item"),
    Route("POST", "/v1/heartbeats:stream", "HeartbeatStream", True,
          "Heartbeats as newline-delimited JSON; one result line per heartbeat", kind=NDJSON),
    Route("POST", "/v1/discover", "DiscoverAgents", True,
          "Best agents with all the capabilities, by score"),
    Route("POST", "/v1/notify", "NotifyAgent", True, "Send a notification to an agent"),
    Route("POST", "/v1/evict", "EvictAgents", True, "Evict agents (operator)"),
    Route("GET", "/v1/stats", "GetStats", False, "Counts by namespace, type and status"),
    Route("GET", "/v1/watch", "WatchAgents", False,
          "Changes as server-sent events; id is the revision, Last-Event-ID resumes",
          kind=SSE, query_token=True),
)
