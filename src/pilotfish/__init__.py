"""pilotfish: a service mesh with progressive delivery, in Python."""

__version__ = "0.1.0"
