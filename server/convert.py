"""Agent records as the scripts return them (flat field/value lists) -> protobuf."""
from __future__ import annotations

from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from .keys import FIELDS as F, METADATA_PREFIX

_META = len(METADATA_PREFIX)


def record(flat) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it))


def agent_info(namespace: str, name: str, rec: dict[str, str]) -> pb.AgentInfo:
    caps = rec.get(F["capabilities"], "")
    return pb.AgentInfo(
        agent_id=f"{namespace}/{name}",
        agent_type=int(rec.get(F["agent_type"], 0)),
        status=int(rec.get(F["status"], 0)),
        capabilities=caps.split(",") if caps else [],
        endpoint=rec.get(F["endpoint"], ""),
        metadata={k[_META:]: v for k, v in rec.items() if k.startswith(METADATA_PREFIX)},
        namespace=namespace,
        cluster=rec.get(F["cluster"], ""),
        version=rec.get(F["version"], ""),
        telemetry=pb.AgentTelemetry(
            success_rate=float(rec.get(F["success_rate"], 0)),
            avg_duration_ms=float(rec.get(F["avg_duration_ms"], 0)),
            total_executions=int(rec.get(F["total_executions"], 0)),
            failed_executions=int(rec.get(F["failed_executions"], 0)),
        ),
        registered_at_unix_ms=int(rec.get(F["registered_at"], 0)),
        last_heartbeat_unix_ms=int(rec.get(F["last_heartbeat"], 0)),
        expires_at_unix_ms=int(rec.get(F["deadline"], 0)),
        agent_card=rec.get(F["agent_card"], ""),
    )


def from_flat(namespace: str, name: str, flat) -> pb.AgentInfo:
    return agent_info(namespace, name, record(flat))


def notification(agent_id: str, entry) -> pb.Notification:
    """From a heartbeat reply item {id, kind, payload}; the id's time part is its creation."""
    nid, kind, payload = entry
    return pb.Notification(notification_id=nid, agent_id=agent_id, kind=kind or "",
                           payload=payload or "", created_at_unix_ms=int(nid.split("-")[0]))
