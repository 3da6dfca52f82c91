from .keepalive import AgentEvicted, AgentLost, KeepAlive
from .service_registry_client import (AgentInfo, HealthStatus, HeartbeatResult,
                                      RegistryError, ServiceRegistryClient, WatchCompacted)

__all__ = ["AgentEvicted", "AgentInfo", "AgentLost", "HealthStatus", "HeartbeatResult",
           "KeepAlive", "RegistryError", "ServiceRegistryClient", "WatchCompacted"]
