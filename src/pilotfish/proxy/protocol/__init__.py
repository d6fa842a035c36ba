"""Sans-I/O protocol cores of the sidecar: bytes in, events and bytes out, no asyncio."""
