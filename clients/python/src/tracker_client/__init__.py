"""tracker-client: the tracker daemon's gRPC API (tracker.v1) for batch-system hooks.

    from tracker_client import Client, Limits, NotFound

    with Client() as tracker:                      # /run/tracker/tracker.sock
        tracker.create("1234.0", owner_uid=1000, limits=Limits(tasks_max=512))
        tracker.adopt("1234.0", job_pid)
        print(tracker.usage("1234.0").cpu_seconds)
        report = tracker.kill("1234.0")
        tracker.release("1234.0")

`python -m tracker_client --help` does the same from a shell script, with JSON output.
"""

from .client import AUTHORITY, DEFAULT_SOCKET, SOCKET_ENV, Client, Watch, channel
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TrackerError,
    Unauthenticated,
    Unavailable,
)
from .types import (
    Adopted,
    Cgroups,
    Created,
    Event,
    KillReport,
    Limits,
    Process,
    Slot,
    SlotStatus,
    Survivor,
    Usage,
)

__all__ = [
    "AUTHORITY",
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "Adopted",
    "AlreadyExists",
    "Cgroups",
    "Client",
    "Created",
    "Event",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "KillReport",
    "Limits",
    "NotFound",
    "PermissionDenied",
    "Process",
    "ResourceExhausted",
    "Slot",
    "SlotStatus",
    "Survivor",
    "TrackerError",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "Watch",
    "channel",
]
