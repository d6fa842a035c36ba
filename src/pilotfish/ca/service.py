"""`istio.v1.auth.IstioCertificateService/CreateCertificate` on the control
plane's gRPC (xDS) port, as istiod serves it: the caller's bearer token in
the `authorization` metadata, a PEM CSR in, the chain out (leaf first, root
last). The identity is the CSR's SPIFFE ID; the authorizer decides whether
the caller may hold it, and the CA signs nothing else."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from pilotfish.ca import protos
from pilotfish.ca.authority import CertificateAuthority, CsrError, requested_identity
from pilotfish.ca.authorize import CsrAuthorizer, PermissionDenied, Unauthenticated

log = logging.getLogger("pilotfish.ca")


class CertificateService:
    def __init__(self, authority: CertificateAuthority, authorizer: CsrAuthorizer) -> None:
        self.authority = authority
        self.authorizer = authorizer
        self.issued = 0

    def __repr__(self) -> str:
        return f"CertificateService({self.authority!r}, issued={self.issued})"

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.create_certificate,
            request_deserializer=protos.IstioCertificateRequest.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        return grpc.method_handlers_generic_handler(
            protos.SERVICE, {protos.CREATE_CERTIFICATE: method}
        )

    def create_certificate(self, request: Any, context: grpc.ServicerContext) -> Any:
        authorization = dict(context.invocation_metadata()).get("authorization")
        try:
            wanted = requested_identity(request.csr)
            caller = self.authorizer.check(
                authorization if isinstance(authorization, str) else None, wanted
            )
            chain = self.authority.sign(request.csr, wanted, int(request.validity_duration))
        except Unauthenticated as e:
            _refuse(context, grpc.StatusCode.UNAUTHENTICATED, str(e))
        except PermissionDenied as e:
            _refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(e))
        except CsrError as e:
            _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.issued += 1
        log.info("CA: signed %s for %s (peer %s)", wanted, caller, context.peer())
        return protos.IstioCertificateResponse(cert_chain=chain)


def _refuse(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    log.warning("CA: refused a CSR from %s: %s", context.peer(), message)
    context.abort(code, message)
