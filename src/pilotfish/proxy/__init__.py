"""The pilotfish sidecar proxy: an HTTP data plane configured by xDS, as Envoy is."""
