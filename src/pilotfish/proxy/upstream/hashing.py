"""The stable 64-bit hash behind ring hash and maglev.

Envoy uses xxHash64; the stdlib has no xxHash, and a pure-Python one costs
several microseconds per key. BLAKE2b cut to 8 bytes runs in C (~0.5 µs for a
short key), spreads keys uniformly and, unlike `hash()`, is the same in every
process, so two sidecars with the same endpoints send a key to the same host.
Ring positions therefore differ from Envoy's: a key sticks to one host here
and to one host in Envoy, but not necessarily to the same one.
"""

from __future__ import annotations

# hashlib's blake2b is this one (it never takes OpenSSL's for BLAKE2), but
# importing hashlib loads _hashlib too, whose start walks OpenSSL's digests:
# 0.5 MiB more of libcrypto in every sidecar.
try:
    from _blake2 import blake2b
except ImportError:  # a Python built without its own BLAKE2
    from hashlib import blake2b

_from_bytes = int.from_bytes


def stable_hash(data: bytes) -> int:
    """An unsigned 64-bit hash of `data`, identical across processes and runs."""
    return _from_bytes(blake2b(data, digest_size=8).digest(), "little")


def stable_hash_pair(data: bytes) -> tuple[int, int]:
    """Two independent 64-bit hashes of `data` (maglev's offset and skip)."""
    digest = blake2b(data, digest_size=16).digest()
    return _from_bytes(digest[:8], "little"), _from_bytes(digest[8:], "little")
