from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_TYPE_UNSPECIFIED: _ClassVar[AgentType]
    WORKER: _ClassVar[AgentType]
    SCOUT: _ClassVar[AgentType]
    GUARD: _ClassVar[AgentType]

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    HEALTHY: _ClassVar[AgentStatus]
    UNHEALTHY: _ClassVar[AgentStatus]
    DEGRADED: _ClassVar[AgentStatus]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    SNAPSHOT: _ClassVar[EventType]
    SNAPSHOT_END: _ClassVar[EventType]
    REGISTERED: _ClassVar[EventType]
    UPDATED: _ClassVar[EventType]
    STATUS_CHANGED: _ClassVar[EventType]
    DEREGISTERED: _ClassVar[EventType]
    EXPIRED: _ClassVar[EventType]
    EVICTED: _ClassVar[EventType]
    PROGRESS: _ClassVar[EventType]
    NOTIFICATION: _ClassVar[EventType]

class SelectionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_MODE_UNSPECIFIED: _ClassVar[SelectionMode]
    RANKED: _ClassVar[SelectionMode]
    BALANCED: _ClassVar[SelectionMode]
AGENT_TYPE_UNSPECIFIED: AgentType
WORKER: AgentType
SCOUT: AgentType
GUARD: AgentType
AGENT_STATUS_UNSPECIFIED: AgentStatus
HEALTHY: AgentStatus
UNHEALTHY: AgentStatus
DEGRADED: AgentStatus
EVENT_TYPE_UNSPECIFIED: EventType
SNAPSHOT: EventType
SNAPSHOT_END: EventType
REGISTERED: EventType
UPDATED: EventType
STATUS_CHANGED: EventType
DEREGISTERED: EventType
EXPIRED: EventType
EVICTED: EventType
PROGRESS: EventType
NOTIFICATION: EventType
SELECTION_MODE_UNSPECIFIED: SelectionMode
RANKED: SelectionMode
BALANCED: SelectionMode

class AgentTelemetry(_message.Message):
    __slots__ = ("success_rate", "avg_duration_ms", "total_executions", "failed_executions")
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    AVG_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    success_rate: float
    avg_duration_ms: float
    total_executions: int
    failed_executions: int
    def __init__(self, success_rate: _Optional[float] = ..., avg_duration_ms: _Optional[float] = ..., total_executions: _Optional[int] = ..., failed_executions: _Optional[int] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "agent_type", "status", "capabilities", "endpoint", "metadata", "namespace", "cluster", "version", "telemetry", "registered_at_unix_ms", "last_heartbeat_unix_ms", "expires_at_unix_ms", "agent_card")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CARD_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    agent_type: AgentType
    status: AgentStatus
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    endpoint: str
    metadata: _containers.ScalarMap[str, str]
    namespace: str
    cluster: str
    version: str
    telemetry: AgentTelemetry
    registered_at_unix_ms: int
    last_heartbeat_unix_ms: int
    expires_at_unix_ms: int
    agent_card: str
    def __init__(self, agent_id: _Optional[str] = ..., agent_type: _Optional[_Union[AgentType, str]] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., endpoint: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., namespace: _Optional[str] = ..., cluster: _Optional[str] = ..., version: _Optional[str] = ..., telemetry: _Optional[_Union[AgentTelemetry, _Mapping]] = ..., registered_at_unix_ms: _Optional[int] = ..., last_heartbeat_unix_ms: _Optional[int] = ..., expires_at_unix_ms: _Optional[int] = ..., agent_card: _Optional[str] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("notification_id", "agent_id", "kind", "payload", "created_at_unix_ms")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    agent_id: str
    kind: str
    payload: str
    created_at_unix_ms: int
    def __init__(self, notification_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., kind: _Optional[str] = ..., payload: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("agent_type", "capabilities", "metadata", "namespace", "cluster", "version", "endpoint", "agent_id", "status", "agent_card")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CARD_FIELD_NUMBER: _ClassVar[int]
    agent_type: AgentType
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    namespace: str
    cluster: str
    version: str
    endpoint: str
    agent_id: str
    status: AgentStatus
    agent_card: str
    def __init__(self, agent_type: _Optional[_Union[AgentType, str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., namespace: _Optional[str] = ..., cluster: _Optional[str] = ..., version: _Optional[str] = ..., endpoint: _Optional[str] = ..., agent_id: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., agent_card: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("agent_id", "agent", "heartbeat_timeout_ms")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    agent: AgentInfo
    heartbeat_timeout_ms: int
    def __init__(self, agent_id: _Optional[str] = ..., agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., heartbeat_timeout_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "telemetry", "status", "ack_notification_ids")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACK_NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    telemetry: AgentTelemetry
    status: AgentStatus
    ack_notification_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., telemetry: _Optional[_Union[AgentTelemetry, _Mapping]] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., ack_notification_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("agent_id", "status", "expires_at_unix_ms", "notifications", "error_code", "error_message")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: AgentStatus
    expires_at_unix_ms: int
    notifications: _containers.RepeatedCompositeFieldContainer[Notification]
    error_code: int
    error_message: str
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., expires_at_unix_ms: _Optional[int] = ..., notifications: _Optional[_Iterable[_Union[Notification, _Mapping]]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class HeartbeatBatchRequest(_message.Message):
    __slots__ = ("heartbeats",)
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    heartbeats: _containers.RepeatedCompositeFieldContainer[HeartbeatRequest]
    def __init__(self, heartbeats: _Optional[_Iterable[_Union[HeartbeatRequest, _Mapping]]] = ...) -> None: ...

class HeartbeatBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[HeartbeatResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[HeartbeatResponse, _Mapping]]] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ("capabilities", "filters", "max_results", "namespace", "selection")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.ScalarMap[str, str]
    max_results: int
    namespace: str
    selection: SelectionMode
    def __init__(self, capabilities: _Optional[_Iterable[str]] = ..., filters: _Optional[_Mapping[str, str]] = ..., max_results: _Optional[int] = ..., namespace: _Optional[str] = ..., selection: _Optional[_Union[SelectionMode, str]] = ...) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class GetAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("agent_type", "namespace", "page_size", "page_token", "filters", "capability")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    agent_type: AgentType
    namespace: str
    page_size: int
    page_token: str
    filters: _containers.ScalarMap[str, str]
    capability: str
    def __init__(self, agent_type: _Optional[_Union[AgentType, str]] = ..., namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., capability: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("namespace", "capability", "agent_type", "filters", "since_revision", "skip_snapshot", "agent_id")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    SKIP_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    capability: str
    agent_type: AgentType
    filters: _containers.ScalarMap[str, str]
    since_revision: str
    skip_snapshot: bool
    agent_id: str
    def __init__(self, namespace: _Optional[str] = ..., capability: _Optional[str] = ..., agent_type: _Optional[_Union[AgentType, str]] = ..., filters: _Optional[_Mapping[str, str]] = ..., since_revision: _Optional[str] = ..., skip_snapshot: _Optional[bool] = ..., agent_id: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("type", "revision", "agent", "notification", "reason")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    revision: str
    agent: AgentInfo
    notification: Notification
    reason: str
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., revision: _Optional[str] = ..., agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., notification: _Optional[_Union[Notification, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class NotifyRequest(_message.Message):
    __slots__ = ("agent_id", "kind", "payload")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    kind: str
    payload: str
    def __init__(self, agent_id: _Optional[str] = ..., kind: _Optional[str] = ..., payload: _Optional[str] = ...) -> None: ...

class NotifyResponse(_message.Message):
    __slots__ = ("notification_id",)
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    def __init__(self, notification_id: _Optional[str] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("agent_ids", "reason")
    AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, agent_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("evicted_ids",)
    EVICTED_IDS_FIELD_NUMBER: _ClassVar[int]
    evicted_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, evicted_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace", "agents", "by_type", "by_status", "revision")
    class ByTypeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    agents: int
    by_type: _containers.ScalarMap[str, int]
    by_status: _containers.ScalarMap[str, int]
    revision: str
    def __init__(self, namespace: _Optional[str] = ..., agents: _Optional[int] = ..., by_type: _Optional[_Mapping[str, int]] = ..., by_status: _Optional[_Mapping[str, int]] = ..., revision: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ...) -> None: ...
