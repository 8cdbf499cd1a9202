"""The tracker daemon's API for batch-system hooks: a channel to its Unix socket that works
with gRPC's C core, and one method per call a batch system makes."""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc

from ._gen import tracker_pb2 as pb
from ._gen import tracker_pb2_grpc
from .errors import TrackerError, from_rpc_error
from .types import (
    Adopted,
    Created,
    Event,
    KillReport,
    Limits,
    Process,
    SlotStatus,
    Usage,
    from_pb,
)

DEFAULT_SOCKET = "/run/tracker/tracker.sock"
# Names another socket (e.g. a `tracker --instance NAME daemon`'s) for Client() and the CLI.
SOCKET_ENV = "TRACKER_SOCKET"
# The :authority gRPC's C core must send on a Unix socket (see channel()).
AUTHORITY = "localhost"


def channel(
    socket: Optional[str] = None, options: Sequence[Tuple[str, object]] = ()
) -> grpc.Channel:
    """An insecure gRPC channel to the daemon's Unix socket (default $TRACKER_SOCKET, else
    /run/tracker/tracker.sock).

    It sets `grpc.default_authority`: gRPC's C core (Python, C++, Ruby, PHP) otherwise sends
    the socket's path as the HTTP/2 :authority, which the daemon's HTTP/2 layer rejects as
    malformed, so that every call of a stock `grpc.insecure_channel("unix:...")` fails with
    INTERNAL (grpc/grpc#38142, hyperium/h2#487). grpc-go sends "localhost" itself.
    """
    socket = socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    return grpc.insecure_channel(
        f"unix:{socket}", options=[("grpc.default_authority", AUTHORITY), *options]
    )


class Client:
    """The tracker daemon's API.

        with Client() as tracker:
            tracker.create("1234.0", owner_uid=1000, limits=Limits(tasks_max=512))
            tracker.adopt("1234.0", pid)
            ...
            report = tracker.kill("1234.0")
            tracker.release("1234.0")

    Every method raises a TrackerError subclass (NotFound, AlreadyExists, ...) carrying the
    gRPC code when the daemon refuses; a refused call changed nothing. `timeout` (seconds)
    bounds each call.
    """

    def __init__(
        self,
        socket: Optional[str] = None,
        timeout: float = 60.0,
        grpc_channel: Optional[grpc.Channel] = None,
    ):
        self._channel = grpc_channel or channel(socket)
        self._stub = tracker_pb2_grpc.TrackerStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: Callable, request, timeout: Optional[float] = None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def create(
        self, name: str, *, owner_uid: Optional[int] = None, limits: Optional[Limits] = None
    ) -> Created:
        """An empty slot, with its cgroups and limits, to adopt processes into. The owner
        defaults to the caller's uid."""
        req = pb.CreateSlotRequest(name=name, limits=(limits or Limits()).to_pb())
        if owner_uid is not None:
            req.owner_uid = owner_uid
        return from_pb(Created, self._call(self._stub.CreateSlot, req))

    def adopt(self, slot: str, pid: int) -> Adopted:
        """Tag a running process and all its descendants into the slot, in the kernel; its
        future children are tagged at fork, before they run."""
        r = self._call(self._stub.AdoptProcess, pb.AdoptProcessRequest(slot=slot, pid=pid))
        return from_pb(Adopted, r)

    def usage(self, slot: str) -> Usage:
        """What the slot used, exited and live tasks together, read now."""
        r = self._call(self._stub.GetUsage, pb.GetUsageRequest(slot=slot))
        return from_pb(Usage, r.usage)

    def processes(self, slot: str, threads: bool = False) -> List[Process]:
        """The live processes (or threads) of the slot."""
        req = pb.ListProcessesRequest(slot=slot, threads=threads)
        return [from_pb(Process, p) for p in self._call(self._stub.ListProcesses, req).processes]

    def slots(self) -> List[SlotStatus]:
        """Every slot, with its state now."""
        r = self._call(self._stub.ListSlots, pb.ListSlotsRequest())
        return [from_pb(SlotStatus, s) for s in r.slots]

    def signal(self, slot: str, signal: int) -> int:
        """Send a signal to every process of the slot; how many got it."""
        req = pb.SignalSlotRequest(slot=slot, signal=int(signal))
        return self._call(self._stub.SignalSlot, req).processes

    def kill(self, slot: str, timeout: Optional[float] = None) -> KillReport:
        """Freeze and kill everything in the slot, wherever it went. Returns when the slot is
        empty (`complete`), or after `timeout` seconds (default: the daemon's) with the
        survivors named."""
        req = pb.KillSlotRequest(slot=slot)
        if timeout is not None:
            req.timeout_seconds = timeout
        call_timeout = self.timeout + (timeout or 0)
        return from_pb(KillReport, self._call(self._stub.KillSlot, req, call_timeout).report)

    def release(self, slot: str) -> None:
        """Forget an empty slot: its record, cgroups and kernel state."""
        self._call(self._stub.ReleaseSlot, pb.ReleaseSlotRequest(slot=slot))

    def watch(self, slot: str = "", timeout: Optional[float] = None) -> "Watch":
        """The events of the slot's tasks (every slot's if empty) as they happen, for at most
        `timeout` seconds if given (then iterating raises a TrackerError with code
        DEADLINE_EXCEEDED). On return the subscription is in place: every event after it is
        seen, or counted as lost."""
        return Watch(self._stub, slot, timeout)


class Watch:
    """An event stream with its losses accounted for. Iterating yields every Event in the
    daemon's order, LOST events included; `lost` adds up, by reason, how many events the
    LOST events said were missed. Nothing is lost silently: on a stream of every slot
    (`slot=""`), the gaps in the sequence numbers add up to `lost_total`.

        with tracker.watch("1234.0") as events:
            for e in events:
                if e.kind == "SLOT_EMPTY":
                    break
        print(events.received, events.lost)

    Close it (or leave the `with`) to end the stream.
    """

    def __init__(self, stub, slot: str, timeout: Optional[float] = None):
        self._call = stub.Watch(pb.WatchRequest(slot=slot), timeout=timeout)
        self._closed = False
        self.received = 0
        self.lost: Dict[str, int] = {}
        try:
            # The daemon sends the headers once the subscription is in place.
            self._call.initial_metadata()
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def __iter__(self) -> Iterator[Event]:
        try:
            for r in self._call:
                e = Event.from_pb(r.event)
                self.received += 1
                if e.kind == "LOST":
                    self.lost[e.lost_reason] = self.lost.get(e.lost_reason, 0) + e.lost
                yield e
        except grpc.RpcError as e:
            if self._closed and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None

    def close(self) -> None:
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["AUTHORITY", "DEFAULT_SOCKET", "SOCKET_ENV", "Client", "TrackerError", "Watch", "channel"]
