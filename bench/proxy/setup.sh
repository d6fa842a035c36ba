#!/usr/bin/env bash
# Install what bench/proxy/run.py (and tcp.py, h2.py) needs, only if missing (idempotent).
#   bash bench/proxy/setup.sh
# Debian packages: nginx (backend + reverse proxy), haproxy, wrk, h2load
# (in nghttp2-client), curl (h2.py's h2c checks), taskset (util-linux,
# normally present).
set -euo pipefail

missing=()
command -v nginx   >/dev/null 2>&1 || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v wrk     >/dev/null 2>&1 || missing+=(wrk)
command -v h2load  >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v curl    >/dev/null 2>&1 || missing+=(curl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
    echo "bench/proxy/setup.sh: all tools present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "bench/proxy/setup.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
# The harness runs its own nginx/haproxy instances on free loopback ports; the
# packaged system services are not needed.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Stop the distribution's daemons if the package scripts started them anyway.
for svc in nginx haproxy; do
    if command -v service >/dev/null 2>&1; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
done
echo "bench/proxy/setup.sh: done"
