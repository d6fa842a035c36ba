"""Results: the per-target numbers, the table, the target ratios, the JSON."""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from load import Latency, Load

# The targets: pilotfish vs nginx in the same run.
THROUGHPUT_TARGET = 0.7  # pilotfish req/s / nginx req/s, at least
CHAIN_P90_TARGET = 1.3  # pilotfish chain added p90 / nginx chain added p90, at most
NOISY_CPUS = 0.05  # other processes' CPU use during a measurement worth a warning
# The builds whose ratios are reported: the installed one (compiled), and the
# same proxy run from an interpreted copy (targets pilotfish-interpreted*).
BUILDS = ("pilotfish", "pilotfish-interpreted")


@dataclass
class ShapeResult:
    wrk: Load | None = None
    h2load: Load | None = None
    latency: Latency | None = None
    cpu_us_per_req: float | None = None
    # The same at the paced rate: what each request of a burst costs with the
    # caches cold between bursts, which is what the latency columns follow.
    cpu_us_per_req_paced: float | None = None
    rss_busy_kib: int | None = None
    handshakes_per_1k: float | None = None  # TLS handshakes per 1000 wrk requests
    other_cpus: float = 0.0  # CPUs used by processes not ours meanwhile: noise
    errors: list[str] = field(default_factory=list)


@dataclass
class TargetResult:
    name: str
    hops: int
    unavailable: str | None = None
    rss_idle_kib: int | None = None
    shapes: dict[str, ShapeResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    seconds: int
    connections: int
    rate: int
    shapes: tuple[str, ...]
    retries: int


def _p(result: TargetResult | None, shape: str) -> ShapeResult | None:
    if result is None or result.unavailable is not None:
        return None
    return result.shapes.get(shape)


def added_p90(results: dict[str, TargetResult], name: str, shape: str) -> float | None:
    """p90 of the target minus p90 of the backend alone, same shape and rate."""
    mine, direct = _p(results.get(name), shape), _p(results.get("direct"), shape)
    if mine is None or direct is None or mine.latency is None or direct.latency is None:
        return None
    return mine.latency.p90_us - direct.latency.p90_us


def ratios(results: dict[str, TargetResult], shapes: tuple[str, ...]) -> dict[str, Any]:
    """The two numbers the issue sets targets for, per shape (None: not measurable)."""
    out: dict[str, Any] = {}
    for shape in shapes:
        out[shape] = {
            **{
                f"throughput_{_key(build)}_over_nginx": throughput_ratio(results, build, shape)
                for build in BUILDS
            },
            "throughput_target_min": THROUGHPUT_TARGET,
            **{
                f"chain_added_p90_{_key(build)}_over_nginx": chain_ratio(results, build, shape)
                for build in BUILDS
            },
            "chain_added_p90_target_max": CHAIN_P90_TARGET,
            "throughput_relay_over_nginx": throughput_ratio(results, "relay", shape),
            "throughput_httptools_over_nginx": throughput_ratio(results, "httptools", shape),
            "chain_added_p90_httptools_over_nginx": chain_ratio(results, "httptools", shape),
            **security_costs(results, shape),
        }
    return out


def _key(build: str) -> str:
    return build.replace("-", "_")


def security_costs(results: dict[str, TargetResult], shape: str) -> dict[str, float | None]:
    """What mutual TLS costs each chain and authorization costs pilotfish,
    against the same target without it in the same run."""
    mtls = {
        "chain_mtls_added_p90_pilotfish_over_nginx": _over(
            added_p90(results, "pilotfish-mtls-chain", shape),
            added_p90(results, "nginx-mtls-chain", shape),
        )
    }
    for name in ("nginx", "pilotfish"):
        mtls[f"mtls_p90_us_{name}_chain"] = _minus(
            added_p90(results, f"{name}-mtls-chain", shape),
            added_p90(results, f"{name}-chain", shape),
        )
        mtls[f"mtls_cpu_us_per_req_{name}_chain"] = _minus(
            _cpu(results, f"{name}-mtls-chain", shape), _cpu(results, f"{name}-chain", shape)
        )
    mtls["authz_cpu_us_per_req_pilotfish"] = _minus(
        _cpu(results, "pilotfish-authz", shape), _cpu(results, "pilotfish", shape)
    )
    return mtls


def _cpu(results: dict[str, TargetResult], name: str, shape: str) -> float | None:
    r = _p(results.get(name), shape)
    return r.cpu_us_per_req if r else None


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def chain_ratio(results: dict[str, TargetResult], name: str, shape: str) -> float | None:
    """The p90 a two-hop chain of `name` adds over the one nginx's chain adds."""
    mine = added_p90(results, f"{name}-chain", shape)
    ng = added_p90(results, "nginx-chain", shape)
    return mine / ng if mine is not None and ng else None


def throughput_ratio(results: dict[str, TargetResult], name: str, shape: str) -> float | None:
    """wrk req/s through `name` over wrk req/s through nginx."""
    mine, ng = _p(results.get(name), shape), _p(results.get("nginx"), shape)
    if mine and ng and mine.wrk and ng.wrk and ng.wrk.rps:
        return mine.wrk.rps / ng.wrk.rps
    return None


# --- the table ------------------------------------------------------------

COLUMNS = [
    "target",
    "shape",
    "wrk req/s",
    "h2load req/s",
    "errors",
    "p50 µs",
    "p90 µs",
    "p99 µs",
    "+p90 µs",
    "CPU µs/req",
    "CPU µs/req paced",
    "RSS idle MiB",
    "RSS busy MiB",
    "TLS hs/1k req",
]


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} ({kib * 1024 / 1e6:.1f} MB)"  # the MB


def _row(res: TargetResult, shape: str, results: dict[str, TargetResult]) -> list[str]:
    r = res.shapes.get(shape, ShapeResult())
    lat = r.latency
    errors = sum(x.errors for x in (r.wrk, r.h2load, lat) if x is not None) + len(r.errors)
    added = added_p90(results, res.name, shape) if res.hops else None
    return [
        res.name,
        shape,
        _num(r.wrk.rps if r.wrk else None),
        _num(r.h2load.rps if r.h2load else None),
        str(errors),
        _num(lat.p50_us if lat else None),
        _num(lat.p90_us if lat else None),
        _num(lat.p99_us if lat else None),
        _num(added),
        _num(r.cpu_us_per_req, 1),
        _num(r.cpu_us_per_req_paced, 1),
        _mib(res.rss_idle_kib),
        _mib(r.rss_busy_kib),
        _num(r.handshakes_per_1k, 2),
    ]


Row = Callable[[TargetResult, str, dict[str, TargetResult]], list[str]]


def table(
    results: dict[str, TargetResult],
    settings: Settings,
    columns: list[str] = COLUMNS,
    row: Row = _row,
) -> str:
    """A Markdown table: readable in a terminal, pasteable into the docs."""
    rows = [columns, ["---"] * len(columns)]
    notes = []
    for res in results.values():
        if res.unavailable is not None:
            rows.append([res.name, "all", "not available", *["-"] * (len(columns) - 3)])
            notes.append(f"- {res.name}: not available ({res.unavailable})")
            continue
        rows += [row(res, shape, results) for shape in settings.shapes]
        notes += [f"- {res.name}/{s}: {e}" for s, r in res.shapes.items() for e in r.errors]
        notes += [
            f"- {res.name}/{s}: other processes used {r.other_cpus:.0%} of a CPU meanwhile (noisy)"
            for s, r in res.shapes.items()
            if r.other_cpus > NOISY_CPUS
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines + (["", *notes] if notes else []))


REFERENCES = {
    "throughput_relay_over_nginx": "bare Python relay/nginx throughput",
    "throughput_httptools_over_nginx": "bare uvloop + httptools proxy/nginx throughput",
    "chain_added_p90_httptools_over_nginx": "its chain's added p90/nginx's",
    "chain_mtls_added_p90_pilotfish_over_nginx": "mTLS chain added p90 pilotfish/nginx",
    "mtls_p90_us_nginx_chain": "mTLS adds to nginx's chain p90, µs",
    "mtls_p90_us_pilotfish_chain": "mTLS adds to pilotfish's chain p90, µs",
    "mtls_cpu_us_per_req_nginx_chain": "mTLS adds to nginx's chain CPU, µs/req",
    "mtls_cpu_us_per_req_pilotfish_chain": "mTLS adds to pilotfish's chain CPU, µs/req",
    "authz_cpu_us_per_req_pilotfish": "JWT + 10-rule ALLOW add to pilotfish CPU, µs/req",
}


def ratio_lines(rat: dict[str, Any]) -> str:
    lines = []
    for shape, r in rat.items():
        for build in BUILDS:
            t = r.get(f"throughput_{_key(build)}_over_nginx")
            c = r.get(f"chain_added_p90_{_key(build)}_over_nginx")
            if build != BUILDS[0] and t is None and c is None:
                continue  # not measured in this run
            lines.append(
                f"{shape if build == BUILDS[0] else '':>9}: {build}/nginx throughput = "
                f"{_verdict(t, THROUGHPUT_TARGET, True)}; chain added p90 {build}/nginx = "
                f"{_verdict(c, CHAIN_P90_TARGET, False)}"
            )
        for key, what in REFERENCES.items():
            ref = r.get(key)
            if ref is not None:
                lines.append(f"{'':>9}  ({what} = {ref:.2f})")
    return "\n".join(lines)


def _verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return f"n/a (target {'>=' if at_least else '<='} {target})"
    ok = value >= target if at_least else value <= target
    return f"{value:.2f} ({'meets' if ok else 'misses'} {'>=' if at_least else '<='} {target})"


# --- JSON -------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?"
            )
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release()}


def document(
    results: dict[str, TargetResult], settings: Settings, tool_versions: dict[str, str]
) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {**tool_versions, "python": sys.version.split()[0]},
        "settings": {
            **asdict(settings),
            "cpu_pinning": {"servers": 0, "load_generators": 1},
            "latency_generator": "h2load --h1 --rps (10 connections), --log-file",
        },
        "results": {name: _result_json(res) for name, res in results.items()},
        "ratios": ratios(results, settings.shapes),
    }


def _result_json(res: TargetResult) -> dict[str, Any]:
    data = asdict(res)
    for shape, r in res.shapes.items():
        for key, load in (("wrk", r.wrk), ("h2load", r.h2load)):
            if load is not None:
                data["shapes"][shape][key]["rps"] = round(load.rps, 1)
    return data
