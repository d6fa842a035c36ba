"""The mesh's certificate authority: SPIFFE identities, X.509 certificates
signed from CSRs, who may ask for which identity, and the gRPC service
sidecars call (Istio's IstioCertificateService)."""
