"""Mutual TLS on the sidecar's connections, from its SDS secrets.

Translation says what a connection does (Envoy's DownstreamTlsContext on an
inbound filter chain, UpstreamTlsContext on a cluster): which SDS secrets
hold the certificate and the trust bundle, the ALPN, SNI and SANs. Here
those become `ssl.SSLContext`s. A context is built per certificate version:
a renewal makes new contexts for new handshakes, while connections made
under the old certificate carry on (an established TLS session does not
need its certificate again), so a renewal drops nothing.

The key stays in memory: OpenSSL reads it from an anonymous memory file
(memfd), never from the disk.

Python's hostname check knows DNS and IP names only; a SPIFFE identity is a
URI SAN, so the SANs are checked here after the handshake, as Envoy's
`match_subject_alt_names` does.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from pilotfish.ca.identity import ISTIO_CIPHERS
from pilotfish.proxy.proto_fields import unsupported

_VERSIONS = {
    common_pb2.TlsParameters.TLSv1_0: ssl.TLSVersion.TLSv1,
    common_pb2.TlsParameters.TLSv1_1: ssl.TLSVersion.TLSv1_1,
    common_pb2.TlsParameters.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    common_pb2.TlsParameters.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}
# Envoy's TLS_AUTO: TLS 1.2 at least, up to TLS 1.3.
_AUTO_MIN, _AUTO_MAX = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
COMMON_FIELDS = frozenset(
    {
        "tls_params.tls_minimum_protocol_version",
        "tls_params.tls_maximum_protocol_version",
        "tls_params.cipher_suites",
        "tls_certificate_sds_secret_configs.name",
        "tls_certificate_sds_secret_configs.sds_config.ads",
        "tls_certificate_sds_secret_configs.sds_config.resource_api_version",
        "combined_validation_context.validation_context_sds_secret_config.name",
        "combined_validation_context.validation_context_sds_secret_config.sds_config.ads",
        "combined_validation_context.validation_context_sds_secret_config.sds_config."
        "resource_api_version",
        "combined_validation_context.default_validation_context.match_subject_alt_names.exact",
        "alpn_protocols",
    }
)
DOWNSTREAM_FIELDS = frozenset(
    {*("common_tls_context." + f for f in COMMON_FIELDS), "require_client_certificate"}
)
UPSTREAM_FIELDS = frozenset({*("common_tls_context." + f for f in COMMON_FIELDS), "sni"})


FILE_ROOT, FILE_CERT = "file-root:", "file-cert:"


class TlsConfigError(ValueError):
    """A TLS context pilotfish cannot serve; the message names the field."""


class SecretSource(Protocol):
    """Where the SDS secrets come from (the sidecar's WorkloadCertificates)."""

    @property
    def version(self) -> int: ...
    def secrets(self) -> dict[str, Secret]: ...


@dataclass(frozen=True)
class TlsSettings:
    """What both sides share: the SDS names, versions, ciphers, ALPN."""

    certificate: str  # SDS secret with the certificate chain and key ("default")
    validation: str  # SDS secret with the trust bundle ("ROOTCA")
    min_version: ssl.TLSVersion
    ciphers: tuple[str, ...]
    alpn: tuple[str, ...]
    sans: tuple[str, ...]  # exact URI SANs the peer must present; () for any
    max_version: ssl.TLSVersion = _AUTO_MAX


@dataclass(frozen=True)
class DownstreamTls:
    settings: TlsSettings
    require_client_certificate: bool


@dataclass(frozen=True)
class UpstreamTls:
    settings: TlsSettings
    sni: str


@dataclass(frozen=True)
class ServerChains:
    """A listener's TLS filter chains: by SNI (`server_names`, exact or
    `*.suffix`), and the one without server_names, for any other name or none."""

    by_name: tuple[tuple[str, DownstreamTls], ...]
    default: DownstreamTls | None

    def select(self, sni: str | None) -> DownstreamTls | None:
        """Envoy's order: the exact name, then the longest wildcard suffix, then the default."""
        if sni:
            sni = sni.lower()
            found = dict(self.by_name)
            if sni in found:
                return found[sni]
            wild = [
                (len(n), tls) for n, tls in self.by_name if n[:2] == "*." and sni.endswith(n[1:])
            ]
            if wild:
                return max(wild, key=lambda item: item[0])[1]
        return self.default


def compile_downstream(proto: tls_pb2.DownstreamTlsContext, where: str) -> DownstreamTls:
    _check(proto, DOWNSTREAM_FIELDS, where)
    required = proto.require_client_certificate.value
    settings = _settings(proto.common_tls_context, where, server=True)
    if required and not settings.validation:
        raise TlsConfigError(
            f"{where}: require_client_certificate needs a "
            "combined_validation_context.validation_context_sds_secret_config"
        )
    return DownstreamTls(settings, required)


def compile_upstream(proto: tls_pb2.UpstreamTlsContext, where: str) -> UpstreamTls:
    _check(proto, UPSTREAM_FIELDS, where)
    return UpstreamTls(_settings(proto.common_tls_context, where, server=False), proto.sni)


def _check(proto: Any, allowed: frozenset[str], where: str) -> None:
    bad = unsupported(proto, allowed)
    if bad:
        raise TlsConfigError(f"{where}: field not supported by pilotfish: {', '.join(bad)}")


def _settings(common: tls_pb2.CommonTlsContext, where: str, server: bool) -> TlsSettings:
    certs = common.tls_certificate_sds_secret_configs
    validation = common.combined_validation_context.validation_context_sds_secret_config.name
    if len(certs) > 1 or (server and not certs):
        raise TlsConfigError(f"{where}: a TLS context needs one tls_certificate_sds_secret_configs")
    params = common.tls_params
    low = _VERSIONS.get(params.tls_minimum_protocol_version, _AUTO_MIN)
    high = _VERSIONS.get(params.tls_maximum_protocol_version, _AUTO_MAX)
    if low > high:
        raise TlsConfigError(
            f"{where}: tls_params: tls_minimum_protocol_version is above "
            "tls_maximum_protocol_version"
        )
    matchers = common.combined_validation_context.default_validation_context.match_subject_alt_names
    return TlsSettings(
        certificate=certs[0].name if certs else "",
        validation=validation,
        min_version=low,
        ciphers=_ciphers(tuple(params.cipher_suites), where),
        alpn=tuple(common.alpn_protocols),
        sans=tuple(m.exact for m in matchers),
        max_version=high,
    )


def _ciphers(named: tuple[str, ...], where: str) -> tuple[str, ...]:
    """The cipher suites, checked now so that a bad name rejects the config
    rather than failing handshakes (TLS 1.3's suites are not configurable,
    as in Envoy)."""
    if not named or named == ISTIO_CIPHERS:
        return ISTIO_CIPHERS
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name in named:
        try:
            probe.set_ciphers(name)
        except ssl.SSLError:
            raise TlsConfigError(
                f"{where}: tls_params.cipher_suites: unknown cipher suite {name!r}"
            ) from None
    return named


def file_secret(name: str) -> Secret | None:
    """istio-agent's file-backed SDS names, read from disk: `file-root:PATH`
    (a trust bundle) and `file-cert:CERT~KEY` (a certificate chain and its
    key), what Istio writes for a DestinationRule's caCertificates and
    clientCertificate/privateKey. None for another name; OSError if unreadable."""
    secret = Secret(name=name)
    if name.startswith(FILE_ROOT):
        with open(name[len(FILE_ROOT) :], "rb") as f:
            secret.validation_context.trusted_ca.inline_bytes = f.read()
        return secret
    if name.startswith(FILE_CERT):
        cert, _, key = name[len(FILE_CERT) :].partition("~")
        with open(cert, "rb") as c, open(key, "rb") as k:
            secret.tls_certificate.certificate_chain.inline_bytes = c.read()
            secret.tls_certificate.private_key.inline_bytes = k.read()
        return secret
    return None


class TlsContexts:
    """SSLContexts for the current secrets, made again when they change."""

    def __init__(self, source: SecretSource | None) -> None:
        self.source = source
        self._version = -1
        self._cache: dict[object, ssl.SSLContext] = {}

    def __repr__(self) -> str:
        return f"<TlsContexts version={self._version} contexts={len(self._cache)}>"

    def server(self, tls: DownstreamTls) -> ssl.SSLContext | None:
        """None while the sidecar has no certificate yet."""
        return self._get(tls, tls.settings, lambda s: _server_context(tls, s))

    def server_by_sni(self, chains: ServerChains) -> ssl.SSLContext | None:
        """A context that picks the chain's own context from the ClientHello's
        SNI. OpenSSL keeps the first context's verify mode when another is
        swapped in, so this one asks for a client certificate (optionally)
        when any chain verifies one; `client_certificate_missing` then
        refuses, after the handshake, a chain's connection that required one
        and got none. It starts from the first chain whose secrets are here,
        so one server's missing Secret fails only that server's handshakes;
        None while no chain has its secrets."""
        every = [t for _, t in chains.by_name] + ([chains.default] if chains.default else [])
        verifies = any(t.settings.validation for t in every)
        for first in every:

            def make(secrets: dict[str, Secret], first: DownstreamTls = first) -> ssl.SSLContext:
                context = _server_context(first, secrets)
                context.verify_mode = ssl.CERT_OPTIONAL if verifies else ssl.CERT_NONE
                context.sni_callback = lambda obj, name, _: self._switch(obj, chains, name)
                return context

            found = self._get((chains, first), first.settings, make)
            if found is not None:
                return found
        return None

    def _switch(self, obj: ssl.SSLObject, chains: ServerChains, sni: str | None) -> int | None:
        chosen = chains.select(sni)
        context = self.server(chosen) if chosen is not None else None
        if context is None:  # no chain for the name (or its certificate is not here)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        obj.context = context
        return None

    def client(self, tls: UpstreamTls) -> ssl.SSLContext:
        """ssl.SSLError naming a secret that is not there (yet), or a
        file-backed one that cannot be read or loaded."""
        context = self._get(tls, tls.settings, lambda s: _client_context(tls, s))
        if context is None:
            have = self.source.secrets() if self.source is not None else {}
            names = (tls.settings.certificate, tls.settings.validation)
            missing = next(n for n in names if n and n not in have)
            raise ssl.SSLError(f"the SDS secret {missing} is not available")
        return context

    def _get(self, key: object, settings: TlsSettings, make: Any) -> ssl.SSLContext | None:
        version = self.source.version if self.source is not None else 0
        if version != self._version:
            self._cache.clear()  # live connections keep their own reference
            self._version = version
        context = self._cache.get(key)
        if context is None:
            secrets = self._secrets(settings)
            if secrets is None:
                return None
            context = self._cache[key] = make(secrets)
        return context

    def _secrets(self, settings: TlsSettings) -> dict[str, Secret] | None:
        found = dict(self.source.secrets()) if self.source is not None else {}
        for name in (settings.certificate, settings.validation):
            if name and name not in found:
                try:
                    secret = file_secret(name)
                except OSError as e:
                    raise ssl.SSLError(f"the SDS secret {name} cannot be read: {e.strerror}") from e
                if secret is None:
                    return None
                found[name] = secret
        return found


def _server_context(tls: DownstreamTls, secrets: dict[str, Secret]) -> ssl.SSLContext:
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, tls.settings, secrets)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def _client_context(tls: UpstreamTls, secrets: dict[str, Secret]) -> ssl.SSLContext:
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, tls.settings, secrets)
    context.check_hostname = False  # SPIFFE identities are URI SANs: checked by check_sans
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _base_context(
    protocol: int, settings: TlsSettings, secrets: dict[str, Secret]
) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = settings.min_version
    context.maximum_version = settings.max_version
    context.set_ciphers(":".join(settings.ciphers))
    if settings.alpn:
        context.set_alpn_protocols(list(settings.alpn))
    if settings.certificate:
        certificate = secrets[settings.certificate].tls_certificate
        _load_certificate(
            context,
            certificate.certificate_chain.inline_bytes,
            certificate.private_key.inline_bytes,
        )
    if settings.validation:
        roots = secrets[settings.validation].validation_context.trusted_ca.inline_bytes
        context.load_verify_locations(cadata=roots.decode())
    else:
        context.load_default_certs()  # Istio verifies against the system's roots
    return context


def _load_certificate(context: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """`load_cert_chain` reads files only: give it an anonymous memory file."""
    fd = os.memfd_create("pilotfish-workload-cert", os.MFD_CLOEXEC)
    try:
        data = chain + key
        while data:
            data = data[os.write(fd, data) :]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def client_certificate_missing(ssl_object: ssl.SSLObject | None) -> bool:
    """A handshake done under a chain that requires a client certificate but
    got none (see TlsContexts.server_by_sni)."""
    if ssl_object is None or ssl_object.context.verify_mode != ssl.CERT_REQUIRED:
        return False
    return ssl_object.getpeercert(binary_form=True) is None


def peer_uri_sans(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, ...]:
    """The URI SANs of the verified peer certificate; () without one."""
    if ssl_object is None:
        return ()
    cert = ssl_object.getpeercert()
    if not cert:
        return ()
    names: Any = cert.get("subjectAltName", ())
    return tuple(str(entry[1]) for entry in names if entry[0] == "URI")


def check_sans(sans: tuple[str, ...], expected: tuple[str, ...]) -> str | None:
    """None when the peer may be who we expect; else the failure reason."""
    if not expected or any(s in expected for s in sans):
        return None
    got = ", ".join(sans) or "no URI SAN"
    return f"verify cert failed: SAN matcher: got {got}, expected {', '.join(expected)}"


# OpenSSL verify codes, named as a user reads them.
_VERIFY_REASONS = {
    2: "unknown CA",
    18: "unknown CA",  # self-signed leaf
    19: "unknown CA",  # self-signed certificate in chain
    20: "unknown CA",
    21: "unknown CA",
    10: "certificate expired",
    9: "certificate not yet valid",
}


def failure_reason(error: BaseException) -> str:
    """Envoy's %UPSTREAM_TRANSPORT_FAILURE_REASON%, for a failed handshake."""
    if isinstance(error, ssl.SSLCertVerificationError):
        named = _VERIFY_REASONS.get(error.verify_code, "certificate verify failed")
        return f"TLS error: CERTIFICATE_VERIFY_FAILED: {named} ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        # OpenSSL's errors carry a reason; ours (a missing secret) only a message
        message = error.args[0] if len(error.args) == 1 else str(error)
        return f"TLS error: {getattr(error, 'reason', None) or error.strerror or message}"
    return f"TLS error: {error}"
