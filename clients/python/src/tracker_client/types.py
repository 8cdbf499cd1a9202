"""What the daemon returns, as plain typed Python values (dataclasses) rather than protobuf
messages: they compare, print and turn into JSON (`asdict`) like any other value. Field
names and units are the .proto's (base units: seconds, bytes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ._gen import tracker_pb2 as pb


def _convert(cls, msg):
    """cls built from the message's fields of the same names (nested dataclasses too)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(msg, f.name)
        sub = _NESTED.get((cls, f.name))
        each = _NESTED_LIST.get((cls, f.name))
        if sub is not None:
            value = _convert(sub, value)
        elif each is not None:
            value = [_convert(each, v) for v in value]
        elif f.name in _OPTIONAL.get(cls, ()):
            value = value if msg.HasField(f.name) else None
        elif isinstance(value, (int, float, str, bool)):
            pass
        elif hasattr(value, "items"):
            value = dict(value)
        else:
            value = list(value)
        values[f.name] = value
    return cls(**values)


@dataclass
class Limits:
    """A slot's limits; None (or empty) is no limit. A limit that no cgroup controller on the
    node can enforce is refused (FailedPrecondition), never ignored."""

    memory_max_bytes: Optional[int] = None
    tasks_max: Optional[int] = None
    cpu_weight: Optional[int] = None
    cpu_quota_percent: Optional[float] = None
    deny_network: bool = False
    allow_connect: List[str] = field(default_factory=list)
    deny_devices: List[str] = field(default_factory=list)

    def to_pb(self) -> pb.Limits:
        m = pb.Limits(
            deny_network=self.deny_network,
            allow_connect=self.allow_connect,
            deny_devices=self.deny_devices,
        )
        for name in ("memory_max_bytes", "tasks_max", "cpu_weight", "cpu_quota_percent"):
            if getattr(self, name) is not None:
                setattr(m, name, getattr(self, name))
        return m


@dataclass
class Cgroups:
    unified: str
    v1: Dict[str, str]


@dataclass
class Slot:
    name: str
    id: int
    owner_uid: int
    created_unix_ms: int
    cgroups: Cgroups
    limits: Limits


@dataclass
class Created:
    slot: Slot
    # What could not be set up (the slot works by its kernel tag regardless).
    warnings: List[str]


def _figures(name: str, message, doc: str, nested=None, namespace=None):
    """A dataclass with one field per field of protobuf `message`, in the .proto's order and
    with its names: a figure (a count) added to the .proto reaches the client without a change
    here. `nested` gives the dataclass of a message-typed field."""
    nested = nested or {}
    fields = [
        (f.name, nested.get(f.name) or _SCALARS.get(f.type, object))
        for f in message.DESCRIPTOR.fields
    ]
    cls = dataclasses.make_dataclass(name, fields, namespace=namespace or {})
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


_FD = pb.Usage.DESCRIPTOR.fields[0].__class__
_SCALARS = {
    _FD.TYPE_UINT64: int,
    _FD.TYPE_UINT32: int,
    _FD.TYPE_INT64: int,
    _FD.TYPE_INT32: int,
    _FD.TYPE_DOUBLE: float,
    _FD.TYPE_BOOL: bool,
    _FD.TYPE_STRING: str,
}

SlotStatus = _figures(
    "SlotStatus",
    pb.SlotStatus,
    "A slot and what the kernel counts for it now (the fields of the .proto's SlotStatus).",
    nested={"slot": Slot},
)


@dataclass
class Adopted:
    # Processes (thread groups) and tasks newly tagged: the target and its descendants.
    processes: int
    tasks: int


Usage = _figures(
    "Usage",
    pb.Usage,
    "Everything a slot used, exited and live tasks together, read now in the kernel (the "
    "fields of the .proto's Usage: base units, seconds and bytes).",
    namespace={"cpu_seconds": property(lambda u: u.cpu_user_seconds + u.cpu_system_seconds)},
)


@dataclass
class Process:
    """A live process of a slot; (pid, start_time_ns) names it for ever."""

    pid: int
    ppid: int
    start_time_ns: int
    state: str
    comm: str
    uid: int
    threads: int
    cmdline: List[str]


@dataclass
class Survivor:
    pid: int
    tgid: int
    state: str
    comm: str
    wchan: str
    stack: List[str]


@dataclass
class KillReport:
    slot: str
    killed: int
    tasks_killed: int
    elapsed_ms: float
    froze: bool
    doom_kills: int
    survivors: List[Survivor]
    warnings: List[str]
    complete: bool


@dataclass
class Event:
    """One event of the daemon's stream. `kind` is FORK, EXEC, EXIT, LEFT_CGROUP,
    SLOT_EMPTY, LOST, KILL_DONE or OOM; for LOST, `lost` events were missed, and
    `lost_reason` says why (KERNEL_BUFFER_FULL, CLIENT_TOO_SLOW)."""

    seq: int
    kind: str
    slot: str
    pid: int
    tgid: int
    parent: int
    exit_code: int
    time_ns: int
    comm: str
    cgroup_id: int
    lost: int
    lost_reason: str
    # EXIT: the task was the last thread of its process.
    group_dead: bool

    @classmethod
    def from_pb(cls, m: pb.Event) -> "Event":
        return cls(
            seq=m.seq,
            kind=pb.EventKind.Name(m.kind).removeprefix("EVENT_KIND_"),
            slot=m.slot,
            pid=m.pid,
            tgid=m.tgid,
            parent=m.parent,
            exit_code=m.exit_code,
            time_ns=m.time_ns,
            comm=m.comm,
            cgroup_id=m.cgroup_id,
            lost=m.lost,
            lost_reason=pb.LostReason.Name(m.lost_reason).removeprefix("LOST_REASON_"),
            group_dead=m.group_dead,
        )


_NESTED = {
    (Slot, "cgroups"): Cgroups,
    (Slot, "limits"): Limits,
    (Created, "slot"): Slot,
    (SlotStatus, "slot"): Slot,
}
_OPTIONAL = {Limits: ("memory_max_bytes", "tasks_max", "cpu_weight", "cpu_quota_percent")}


_NESTED_LIST = {(KillReport, "survivors"): Survivor}


def from_pb(cls, msg):
    """A dataclass of this module from its protobuf message."""
    return _convert(cls, msg)
