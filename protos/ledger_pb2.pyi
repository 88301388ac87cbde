from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, entries: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class ResolveSubjectsRequest(_message.Message):
    __slots__ = ("partner_id", "user_hmacs", "create")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_HMACS_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    user_hmacs: _containers.RepeatedScalarFieldContainer[str]
    create: bool
    def __init__(self, partner_id: _Optional[str] = ..., user_hmacs: _Optional[_Iterable[str]] = ..., create: _Optional[bool] = ...) -> None: ...

class ResolveSubjectsResponse(_message.Message):
    __slots__ = ("subject_refs",)
    class SubjectRefsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_REFS_FIELD_NUMBER: _ClassVar[int]
    subject_refs: _containers.ScalarMap[str, str]
    def __init__(self, subject_refs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StoreEvidenceRequest(_message.Message):
    __slots__ = ("consent_id", "subject_ref", "evidence")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    subject_ref: str
    evidence: bytes
    def __init__(self, consent_id: _Optional[str] = ..., subject_ref: _Optional[str] = ..., evidence: _Optional[bytes] = ...) -> None: ...

class StoreEvidenceResponse(_message.Message):
    __slots__ = ("commitment",)
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    commitment: str
    def __init__(self, commitment: _Optional[str] = ...) -> None: ...

class CompleteErasureRequest(_message.Message):
    __slots__ = ("partner_id", "subject_ref")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    subject_ref: str
    def __init__(self, partner_id: _Optional[str] = ..., subject_ref: _Optional[str] = ...) -> None: ...

class CompleteErasureResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class ChargeBudgetRequest(_message.Message):
    __slots__ = ("job_id", "round", "partner_id", "subject_refs", "epsilon")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REFS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    partner_id: str
    subject_refs: _containers.RepeatedScalarFieldContainer[str]
    epsilon: float
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., partner_id: _Optional[str] = ..., subject_refs: _Optional[_Iterable[str]] = ..., epsilon: _Optional[float] = ...) -> None: ...

class ChargeBudgetResponse(_message.Message):
    __slots__ = ("subject_count",)
    SUBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    subject_count: int
    def __init__(self, subject_count: _Optional[int] = ...) -> None: ...

class RegisterKeyRequest(_message.Message):
    __slots__ = ("identity", "role", "public_key")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    role: str
    public_key: str
    def __init__(self, identity: _Optional[str] = ..., role: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class RegisterKeyResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    def __init__(self, identity: _Optional[str] = ...) -> None: ...

class GetKeyResponse(_message.Message):
    __slots__ = ("identity", "role", "key_id", "public_key")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    role: str
    key_id: str
    public_key: str
    def __init__(self, identity: _Optional[str] = ..., role: _Optional[str] = ..., key_id: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("origin", "tree_size", "root", "ts", "key_id", "signature", "witnesses")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    WITNESSES_FIELD_NUMBER: _ClassVar[int]
    origin: str
    tree_size: int
    root: bytes
    ts: str
    key_id: str
    signature: bytes
    witnesses: _containers.RepeatedCompositeFieldContainer[Witness]
    def __init__(self, origin: _Optional[str] = ..., tree_size: _Optional[int] = ..., root: _Optional[bytes] = ..., ts: _Optional[str] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., witnesses: _Optional[_Iterable[_Union[Witness, _Mapping]]] = ...) -> None: ...

class Witness(_message.Message):
    __slots__ = ("key_id", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("publish", "tree_size")
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    publish: bool
    tree_size: int
    def __init__(self, publish: _Optional[bool] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetTreeSizeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTreeSizeResponse(_message.Message):
    __slots__ = ("tree_size",)
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    def __init__(self, tree_size: _Optional[int] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("index", "tree_size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("index", "tree_size", "path")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("old_size", "new_size")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("old_size", "new_size", "path")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetEntriesRequest(_message.Message):
    __slots__ = ("start", "end", "page_size")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    page_size: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class GetEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_start")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_start: int
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_start: _Optional[int] = ...) -> None: ...

class GetSubjectHistoryRequest(_message.Message):
    __slots__ = ("subject_ref",)
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    subject_ref: str
    def __init__(self, subject_ref: _Optional[str] = ...) -> None: ...

class GetSubjectHistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class CurrentConsentRequest(_message.Message):
    __slots__ = ("subject_ref",)
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    subject_ref: str
    def __init__(self, subject_ref: _Optional[str] = ...) -> None: ...

class CurrentConsentResponse(_message.Message):
    __slots__ = ("consent_id",)
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    def __init__(self, consent_id: _Optional[str] = ...) -> None: ...

class EligibleSetQuery(_message.Message):
    __slots__ = ("partner_id", "purpose", "categories", "tree_size", "day", "lifetime_epsilon", "refs_offset", "refs_limit", "job_epsilon")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_EPSILON_FIELD_NUMBER: _ClassVar[int]
    REFS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    REFS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    JOB_EPSILON_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    purpose: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    tree_size: int
    day: str
    lifetime_epsilon: float
    refs_offset: int
    refs_limit: int
    job_epsilon: float
    def __init__(self, partner_id: _Optional[str] = ..., purpose: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., tree_size: _Optional[int] = ..., day: _Optional[str] = ..., lifetime_epsilon: _Optional[float] = ..., refs_offset: _Optional[int] = ..., refs_limit: _Optional[int] = ..., job_epsilon: _Optional[float] = ...) -> None: ...

class EligibleSetResponse(_message.Message):
    __slots__ = ("partner_id", "purpose", "categories", "tree_size", "day", "count", "root", "refs_included", "subject_refs_packed", "refs_offset")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    REFS_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REFS_PACKED_FIELD_NUMBER: _ClassVar[int]
    REFS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    purpose: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    tree_size: int
    day: str
    count: int
    root: bytes
    refs_included: bool
    subject_refs_packed: bytes
    refs_offset: int
    def __init__(self, partner_id: _Optional[str] = ..., purpose: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., tree_size: _Optional[int] = ..., day: _Optional[str] = ..., count: _Optional[int] = ..., root: _Optional[bytes] = ..., refs_included: _Optional[bool] = ..., subject_refs_packed: _Optional[bytes] = ..., refs_offset: _Optional[int] = ...) -> None: ...

class ProveAbsentRequest(_message.Message):
    __slots__ = ("query", "subject_ref", "expected_root")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ROOT_FIELD_NUMBER: _ClassVar[int]
    query: EligibleSetQuery
    subject_ref: str
    expected_root: bytes
    def __init__(self, query: _Optional[_Union[EligibleSetQuery, _Mapping]] = ..., subject_ref: _Optional[str] = ..., expected_root: _Optional[bytes] = ...) -> None: ...

class Neighbour(_message.Message):
    __slots__ = ("index", "subject_ref", "path")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    index: int
    subject_ref: str
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., subject_ref: _Optional[str] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class NonMembershipProof(_message.Message):
    __slots__ = ("subject_ref", "count", "root", "tree_size", "left", "right")
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    subject_ref: str
    count: int
    root: bytes
    tree_size: int
    left: Neighbour
    right: Neighbour
    def __init__(self, subject_ref: _Optional[str] = ..., count: _Optional[int] = ..., root: _Optional[bytes] = ..., tree_size: _Optional[int] = ..., left: _Optional[_Union[Neighbour, _Mapping]] = ..., right: _Optional[_Union[Neighbour, _Mapping]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("partner_id", "subject_refs")
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_REFS_FIELD_NUMBER: _ClassVar[int]
    partner_id: str
    subject_refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, partner_id: _Optional[str] = ..., subject_refs: _Optional[_Iterable[str]] = ...) -> None: ...

class SubjectBudget(_message.Message):
    __slots__ = ("subject_ref", "epsilon_spent")
    SUBJECT_REF_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    subject_ref: str
    epsilon_spent: float
    def __init__(self, subject_ref: _Optional[str] = ..., epsilon_spent: _Optional[float] = ...) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("spent",)
    SPENT_FIELD_NUMBER: _ClassVar[int]
    spent: _containers.RepeatedCompositeFieldContainer[SubjectBudget]
    def __init__(self, spent: _Optional[_Iterable[_Union[SubjectBudget, _Mapping]]] = ...) -> None: ...
