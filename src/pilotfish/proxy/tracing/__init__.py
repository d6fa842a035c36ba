"""Distributed tracing in the sidecar: propagation, spans, OTLP export."""
