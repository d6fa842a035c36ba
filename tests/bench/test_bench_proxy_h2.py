"""The HTTP/2 bench's helpers (bench/proxy/run_h2.py): the configs it gives nginx
and pilotfish, and how it reads h2load's summary. No timing is asserted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pilotfish.proxy.bootstrap import parse_bootstrap
from pilotfish.proxy.upstream.compile import compile_cluster
from pilotfish.proxy.upstream.spec import UpstreamHttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "proxy"))

from load import parse_h2load
from procs import Supervisor
from targets import Bench, _backend_block, _nginx_main, _proxy_block, pilotfish_bootstrap

# h2load -m10 over h2c at the end of a -D run: streams still in flight when
# the time was up answered 2xx, so the status codes count more than `done`.
H2C_SUMMARY = """\
finished in 2.00s, 1084.00 req/s, 42.68KB/s
requests: 2168 total, 2200 started, 2168 done, 2168 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 2190 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_h2load_in_flight_answers_are_not_errors() -> None:
    load = parse_h2load(H2C_SUMMARY)
    assert (load.requests, load.seconds, load.errors) == (2168, 2.0, 0)


def test_h2load_failures_and_non_2xx_are_errors() -> None:
    out = H2C_SUMMARY.replace("0 failed, 0 errored, 0 timeout", "3 failed, 2 errored, 1 timeout")
    out = out.replace("0 4xx, 0 5xx", "4 4xx, 5 5xx")
    assert parse_h2load(out).errors == 3 + 2 + 1 + 4 + 5


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
@pytest.mark.parametrize("h2c_upstream", [False, True], ids=["proxy_pass", "grpc_pass"])
def test_nginx_accepts_the_h2c_configs(tmp_path: Path, h2c_upstream: bool) -> None:
    """The backend (HTTP/1.1 and h2c server blocks) and the h2c-listening proxy parse."""
    bench = Bench(Supervisor(tmp_path), pool_size=32)
    block = _backend_block(18080) + "\n" + _backend_block(18081, h2c=True)
    block += _proxy_block(18082, 18081, 32, h2c_listen=True, h2c_upstream=h2c_upstream)
    conf = tmp_path / "h2.nginx.conf"
    conf.write_text(_nginx_main(bench, "h2", block))
    done = subprocess.run(
        ["nginx", "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = conf.read_text()
    assert "listen 127.0.0.1:18081 http2 backlog=4096;" in text
    assert "listen 127.0.0.1:18082 http2 backlog=4096;" in text
    assert ("grpc_pass grpc://next_hop;" in text) is h2c_upstream
    assert ("proxy_pass http://next_hop;" in text) is not h2c_upstream


@pytest.mark.parametrize("upstream_h2", [False, True])
def test_pilotfish_bootstrap_cluster_protocol(upstream_h2: bool) -> None:
    text = pilotfish_bootstrap("pf", 18082, 18083, 18081, upstream_h2=upstream_h2)
    bootstrap = parse_bootstrap(yaml.safe_load(text))
    spec = compile_cluster(bootstrap.static_resources.clusters[0])
    assert spec.pool.http is (UpstreamHttp.HTTP2 if upstream_h2 else UpstreamHttp.HTTP1)
