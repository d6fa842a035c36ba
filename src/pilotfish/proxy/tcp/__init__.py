"""Envoy's `tcp_proxy` network filter: the pure decisions (config.py) and the
asyncio shell that relays bytes (relay.py). TCP never goes through the HTTP
exchange: a TCP listener's connections are piped, not parsed."""
