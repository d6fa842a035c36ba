"""Distributed tracing in the control plane: the OTLP receiver, the span store, the query API."""
