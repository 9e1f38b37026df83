from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    PREFILL: _ClassVar[Role]
    DECODE: _ClassVar[Role]

class WaitFor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WAIT_ANY: _ClassVar[WaitFor]
    WAIT_PREFILL: _ClassVar[WaitFor]
    WAIT_DECODE: _ClassVar[WaitFor]

class CacheEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STORED: _ClassVar[CacheEventKind]
    CACHE_EVICTED: _ClassVar[CacheEventKind]
    CACHE_CLEARED: _ClassVar[CacheEventKind]
ROLE_UNSPECIFIED: Role
PREFILL: Role
DECODE: Role
WAIT_ANY: WaitFor
WAIT_PREFILL: WaitFor
WAIT_DECODE: WaitFor
CACHE_STORED: CacheEventKind
CACHE_EVICTED: CacheEventKind
CACHE_CLEARED: CacheEventKind

class Request(_message.Message):
    __slots__ = ("request_id", "agent_id", "turn", "hit_tokens", "appended_tokens", "gen_tokens", "arrival_s", "block_hashes", "slo_class", "prefix", "session_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    HIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    APPENDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GEN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_S_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    SLO_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    agent_id: int
    turn: int
    hit_tokens: int
    appended_tokens: int
    gen_tokens: int
    arrival_s: float
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    slo_class: str
    prefix: PrefixLocations
    session_id: str
    def __init__(self, request_id: _Optional[int] = ..., agent_id: _Optional[int] = ..., turn: _Optional[int] = ..., hit_tokens: _Optional[int] = ..., appended_tokens: _Optional[int] = ..., gen_tokens: _Optional[int] = ..., arrival_s: _Optional[float] = ..., block_hashes: _Optional[_Iterable[int]] = ..., slo_class: _Optional[str] = ..., prefix: _Optional[_Union[PrefixLocations, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class PrefixLocations(_message.Message):
    __slots__ = ("block_tokens", "dram_blocks", "hbm_blocks")
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HBM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    dram_blocks: _containers.RepeatedScalarFieldContainer[int]
    hbm_blocks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_tokens: _Optional[int] = ..., dram_blocks: _Optional[_Iterable[int]] = ..., hbm_blocks: _Optional[_Iterable[int]] = ...) -> None: ...

class EngineState(_message.Message):
    __slots__ = ("engine_id", "role", "node_id", "group", "seq", "tok", "free_hbm_bytes", "cnic_busy_until_s")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TOK_FIELD_NUMBER: _ClassVar[int]
    FREE_HBM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CNIC_BUSY_UNTIL_S_FIELD_NUMBER: _ClassVar[int]
    engine_id: int
    role: Role
    node_id: int
    group: int
    seq: int
    tok: int
    free_hbm_bytes: float
    cnic_busy_until_s: float
    def __init__(self, engine_id: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., node_id: _Optional[int] = ..., group: _Optional[int] = ..., seq: _Optional[int] = ..., tok: _Optional[int] = ..., free_hbm_bytes: _Optional[float] = ..., cnic_busy_until_s: _Optional[float] = ...) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node_id", "role", "read_q_tokens", "snic_bytes_s", "free_buffer_bytes", "cache_used_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    READ_Q_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SNIC_BYTES_S_FIELD_NUMBER: _ClassVar[int]
    FREE_BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    role: Role
    read_q_tokens: float
    snic_bytes_s: float
    free_buffer_bytes: float
    cache_used_bytes: float
    def __init__(self, node_id: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., read_q_tokens: _Optional[float] = ..., snic_bytes_s: _Optional[float] = ..., free_buffer_bytes: _Optional[float] = ..., cache_used_bytes: _Optional[float] = ...) -> None: ...

class ClusterSnapshot(_message.Message):
    __slots__ = ("cluster_digest", "time_s", "engines", "nodes", "queue_requests", "queue_tokens")
    CLUSTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    cluster_digest: str
    time_s: float
    engines: _containers.RepeatedCompositeFieldContainer[EngineState]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeState]
    queue_requests: int
    queue_tokens: int
    def __init__(self, cluster_digest: _Optional[str] = ..., time_s: _Optional[float] = ..., engines: _Optional[_Iterable[_Union[EngineState, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeState, _Mapping]]] = ..., queue_requests: _Optional[int] = ..., queue_tokens: _Optional[int] = ...) -> None: ...

class ScheduleRequest(_message.Message):
    __slots__ = ("request", "view", "client_id")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    request: Request
    view: ClusterSnapshot
    client_id: str
    def __init__(self, request: _Optional[_Union[Request, _Mapping]] = ..., view: _Optional[_Union[ClusterSnapshot, _Mapping]] = ..., client_id: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("defer", "prefill_engine", "decode_engine", "decode_share", "wait_for", "reason", "policy_version", "request_id", "prefix")
    DEFER_FIELD_NUMBER: _ClassVar[int]
    PREFILL_ENGINE_FIELD_NUMBER: _ClassVar[int]
    DECODE_ENGINE_FIELD_NUMBER: _ClassVar[int]
    DECODE_SHARE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    defer: bool
    prefill_engine: int
    decode_engine: int
    decode_share: float
    wait_for: WaitFor
    reason: str
    policy_version: str
    request_id: int
    prefix: PrefixLocations
    def __init__(self, defer: _Optional[bool] = ..., prefill_engine: _Optional[int] = ..., decode_engine: _Optional[int] = ..., decode_share: _Optional[float] = ..., wait_for: _Optional[_Union[WaitFor, str]] = ..., reason: _Optional[str] = ..., policy_version: _Optional[str] = ..., request_id: _Optional[int] = ..., prefix: _Optional[_Union[PrefixLocations, _Mapping]] = ...) -> None: ...

class ScheduleBatchRequest(_message.Message):
    __slots__ = ("requests", "view", "client_id", "ordered")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDERED_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[Request]
    view: ClusterSnapshot
    client_id: str
    ordered: bool
    def __init__(self, requests: _Optional[_Iterable[_Union[Request, _Mapping]]] = ..., view: _Optional[_Union[ClusterSnapshot, _Mapping]] = ..., client_id: _Optional[str] = ..., ordered: _Optional[bool] = ...) -> None: ...

class ScheduleBatchResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class EngineReport(_message.Message):
    __slots__ = ("engine_id", "role", "node_id", "seq", "tok", "free_hbm_bytes", "cnic_backlog_bytes", "read_q_tokens", "free_buffer_bytes", "reporter_time_s", "endpoint")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TOK_FIELD_NUMBER: _ClassVar[int]
    FREE_HBM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CNIC_BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_Q_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FREE_BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPORTER_TIME_S_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    engine_id: int
    role: Role
    node_id: int
    seq: int
    tok: int
    free_hbm_bytes: float
    cnic_backlog_bytes: float
    read_q_tokens: float
    free_buffer_bytes: float
    reporter_time_s: float
    endpoint: str
    def __init__(self, engine_id: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., node_id: _Optional[int] = ..., seq: _Optional[int] = ..., tok: _Optional[int] = ..., free_hbm_bytes: _Optional[float] = ..., cnic_backlog_bytes: _Optional[float] = ..., read_q_tokens: _Optional[float] = ..., free_buffer_bytes: _Optional[float] = ..., reporter_time_s: _Optional[float] = ..., endpoint: _Optional[str] = ...) -> None: ...

class EngineStateReport(_message.Message):
    __slots__ = ("engines", "counts_requests", "counted_request_ids")
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COUNTED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[EngineReport]
    counts_requests: bool
    counted_request_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, engines: _Optional[_Iterable[_Union[EngineReport, _Mapping]]] = ..., counts_requests: _Optional[bool] = ..., counted_request_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CacheEvent(_message.Message):
    __slots__ = ("kind", "node_id", "engine_id", "hashes", "at_s")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    kind: CacheEventKind
    node_id: int
    engine_id: int
    hashes: _containers.RepeatedScalarFieldContainer[int]
    at_s: float
    def __init__(self, kind: _Optional[_Union[CacheEventKind, str]] = ..., node_id: _Optional[int] = ..., engine_id: _Optional[int] = ..., hashes: _Optional[_Iterable[int]] = ..., at_s: _Optional[float] = ...) -> None: ...

class CacheEventBatch(_message.Message):
    __slots__ = ("events", "alive_nodes")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_NODES_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[CacheEvent]
    alive_nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, events: _Optional[_Iterable[_Union[CacheEvent, _Mapping]]] = ..., alive_nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("request_id", "client_id", "outcome")
    class OutcomeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    client_id: str
    outcome: _containers.ScalarMap[str, float]
    def __init__(self, request_id: _Optional[int] = ..., client_id: _Optional[str] = ..., outcome: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("spec", "version", "name", "shadow_spec", "previous_spec", "swaps")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SPEC_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SPEC_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    spec: str
    version: str
    name: str
    shadow_spec: str
    previous_spec: str
    swaps: int
    def __init__(self, spec: _Optional[str] = ..., version: _Optional[str] = ..., name: _Optional[str] = ..., shadow_spec: _Optional[str] = ..., previous_spec: _Optional[str] = ..., swaps: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SwapPolicyRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: str
    def __init__(self, spec: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: str
    def __init__(self, spec: _Optional[str] = ...) -> None: ...

class SetCanaryRequest(_message.Message):
    __slots__ = ("spec", "share")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    spec: str
    share: float
    def __init__(self, spec: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class PromoteCanaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCanaryRequest(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: bool
    def __init__(self, samples: _Optional[bool] = ...) -> None: ...

class CanaryArm(_message.Message):
    __slots__ = ("spec", "version", "completions", "ttft_mean_s", "latency_mean_s", "ttft_s", "latency_s")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MEAN_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEAN_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    spec: str
    version: str
    completions: int
    ttft_mean_s: float
    latency_mean_s: float
    ttft_s: _containers.RepeatedScalarFieldContainer[float]
    latency_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, spec: _Optional[str] = ..., version: _Optional[str] = ..., completions: _Optional[int] = ..., ttft_mean_s: _Optional[float] = ..., latency_mean_s: _Optional[float] = ..., ttft_s: _Optional[_Iterable[float]] = ..., latency_s: _Optional[_Iterable[float]] = ...) -> None: ...

class CanaryStatus(_message.Message):
    __slots__ = ("state", "share", "reason", "champion", "challenger", "max_regression", "min_completions")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_FIELD_NUMBER: _ClassVar[int]
    MAX_REGRESSION_FIELD_NUMBER: _ClassVar[int]
    MIN_COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    state: str
    share: float
    reason: str
    champion: CanaryArm
    challenger: CanaryArm
    max_regression: float
    min_completions: int
    def __init__(self, state: _Optional[str] = ..., share: _Optional[float] = ..., reason: _Optional[str] = ..., champion: _Optional[_Union[CanaryArm, _Mapping]] = ..., challenger: _Optional[_Union[CanaryArm, _Mapping]] = ..., max_regression: _Optional[float] = ..., min_completions: _Optional[int] = ...) -> None: ...
