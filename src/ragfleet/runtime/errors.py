"""Domain errors, declared once and mapped to gRPC status codes and HTTP statuses in one place.

Service cores raise these; the gRPC interceptor (``ragfleet.runtime.server``) and the REST error
handlers translate them. A core never sets status codes itself.
"""

from __future__ import annotations

import grpc


class RagfleetError(Exception):
    """Base of every error a ragfleet service reports to its caller."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RagfleetError):
    """The request is malformed or outside a documented limit; the message names the field."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class Unauthenticated(RagfleetError):
    """No credential, or one nobody issued (an unknown, revoked or malformed key)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(RagfleetError):
    """A valid credential that may not do this: a role it lacks, or another tenant."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class NotFound(RagfleetError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class FailedPrecondition(RagfleetError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ResourceExhausted(RagfleetError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(RagfleetError):
    """A dependency (model, index, upstream service) is not ready or not reachable."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DeadlineExceeded(RagfleetError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class ModelLoadError(RagfleetError):
    """A model file is missing or corrupt; the message says what to install. Fatal at start-up."""


_BY_CODE: dict[grpc.StatusCode, type[RagfleetError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidInput,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_rpc_error(error: grpc.RpcError, upstream: str) -> RagfleetError:
    """Turns an upstream call's failure into the domain error to report to our own caller.

    Client mistakes (invalid argument, not found) keep their code and message; anything else is
    reported as the upstream being unavailable, with its name, unless the deadline ran out.
    """
    # grpc.aio.AioRpcError carries code() and details() but is not a grpc.Call.
    has_status = isinstance(error, grpc.Call | grpc.aio.AioRpcError)
    code = error.code() if has_status else grpc.StatusCode.UNKNOWN
    details = (error.details() if has_status else None) or str(error)
    cls = _BY_CODE.get(code, Unavailable)
    if cls is Unavailable or code is grpc.StatusCode.FAILED_PRECONDITION:
        return Unavailable(f"{upstream} failed ({code.name}): {details}")
    if cls is DeadlineExceeded:
        return DeadlineExceeded(f"{upstream} did not answer within the deadline: {details}")
    return cls(details)
