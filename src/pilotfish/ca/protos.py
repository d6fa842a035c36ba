"""Istio's certificate service messages (istio/api security/v1alpha1/ca.proto,
package istio.v1.auth), built at import from their descriptor: no installed
package ships them, and the two messages are small enough to declare here
field for field, with Istio's field numbers so any Istio client can call us.

    service IstioCertificateService {
      rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse);
    }
    message IstioCertificateRequest { string csr = 1; int64 validity_duration = 3;
                                      google.protobuf.Struct metadata = 4; }
    message IstioCertificateResponse { repeated string cert_chain = 1; }
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

SERVICE = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = "CreateCertificate"
METHOD_PATH = f"/{SERVICE}/{CREATE_CERTIFICATE}"

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="istio/v1/auth/ca.proto",
        package="istio.v1.auth",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )
    request = proto.message_type.add(name="IstioCertificateRequest")
    request.field.add(name="csr", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    request.field.add(
        name="validity_duration", number=3, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL
    )
    request.field.add(
        name="metadata",
        number=4,
        type=_F.TYPE_MESSAGE,
        type_name=".google.protobuf.Struct",
        label=_F.LABEL_OPTIONAL,
    )
    response = proto.message_type.add(name="IstioCertificateResponse")
    response.field.add(name="cert_chain", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    service = proto.service.add(name="IstioCertificateService")
    service.method.add(
        name=CREATE_CERTIFICATE,
        input_type=".istio.v1.auth.IstioCertificateRequest",
        output_type=".istio.v1.auth.IstioCertificateResponse",
    )
    return proto


def _messages() -> tuple[Any, Any]:
    pool = descriptor_pool.Default()
    try:
        found = pool.FindFileByName("istio/v1/auth/ca.proto")
    except KeyError:
        struct_pb2.Struct  # noqa: B018  (its file must be in the pool first)
        found = pool.Add(_file())
    request = message_factory.GetMessageClass(
        found.message_types_by_name["IstioCertificateRequest"]
    )
    response = message_factory.GetMessageClass(
        found.message_types_by_name["IstioCertificateResponse"]
    )
    return request, response


IstioCertificateRequest, IstioCertificateResponse = _messages()
