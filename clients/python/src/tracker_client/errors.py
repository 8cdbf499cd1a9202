"""Errors of the tracker daemon as Python exceptions, one class per gRPC status code the API
uses (see proto/tracker/v1/tracker.proto), each carrying the code and the daemon's one-line
message. A call that fails changed nothing."""

from __future__ import annotations

import grpc


class TrackerError(Exception):
    """A call the daemon refused, or could not be made. `code` is the grpc.StatusCode,
    `details` the daemon's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{details} ({code.name})")
        self.code = code
        self.details = details


class NotFound(TrackerError):
    """No slot of that name; no process with that pid."""


class AlreadyExists(TrackerError):
    """A slot of that name exists."""


class InvalidArgument(TrackerError):
    """A bad slot name, limit, signal or timeout."""


class FailedPrecondition(TrackerError):
    """The slot still has live tasks; the pid cannot be adopted; a limit nothing enforces."""


class ResourceExhausted(TrackerError):
    """Every slot id is in use, or the request is larger than the daemon accepts."""


class PermissionDenied(TrackerError):
    """The caller is neither root nor in the daemon's group."""


class Unauthenticated(TrackerError):
    """Over TCP: no valid bearer token."""


class Unavailable(TrackerError):
    """The daemon cannot be reached (not running, or the socket's mode refuses this user),
    or the event stream is held by another process."""


class Internal(TrackerError):
    """The kernel or the filesystem refused something; the message says what."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(e: grpc.RpcError) -> TrackerError:
    """The TrackerError (subclass by code) for a failed gRPC call."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    return _BY_CODE.get(code, TrackerError)(code, details)
