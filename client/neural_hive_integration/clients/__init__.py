from .service_registry_client import (AgentInfo, HealthStatus, HeartbeatResult,
                                      RegistryError, ServiceRegistryClient, WatchCompacted)

__all__ = ["AgentInfo", "HealthStatus", "HeartbeatResult", "RegistryError",
           "ServiceRegistryClient", "WatchCompacted"]
