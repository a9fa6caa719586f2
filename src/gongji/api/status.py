"""GongjiError -> gRPC status with exactly one google.rpc.ErrorInfo (and BadRequest for bad fields)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gongji import errors

DOMAIN = "gongji"


def to_status(exc: errors.GongjiError) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata))
    details = [info]
    if isinstance(exc, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    status = status_pb2.Status(code=code_pb2.Code.Value(exc.code), message=exc.message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result
