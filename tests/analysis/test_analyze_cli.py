"""`pilotfish analyze --use-kube=false` on files: istioctl's lines, formats,
thresholds, suppressions and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pilotfish.cli.main import main

CONFLICT = (
    "Error [IST0109] (VirtualService default/{name}) The VirtualServices default/a,default/b "
    "associated with mesh gateway define the same host */reviews.default.svc.cluster.local "
    "which can lead to undefined behavior. This can be fixed by merging the conflicting "
    "VirtualServices into a single resource."
)


def _vs(name: str, namespace: str | None = None) -> dict[str, object]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "reviews"},
    "spec": {"ports": [{"name": "http", "port": 9080}]},
}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump_all([SERVICE, _vs("a"), _vs("b")]))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["analyze", "--use-kube=false", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_lines_and_exit_code_as_istioctl(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(files))
    assert code == 79
    assert out.splitlines() == [CONFLICT.format(name="a"), CONFLICT.format(name="b")]
    assert err.splitlines()[0] == "Error: Analyzers found issues when analyzing namespace: default."


def test_json_and_yaml_output(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(files), "-o", "json")
    assert code == 0  # as istioctl: only the log format sets an exit code
    first = json.loads(out)[0]
    assert first == {
        "code": "IST0109",
        "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0109/",
        "level": "Error",
        "message": CONFLICT.format(name="a").split(") ", 1)[1],
        "origin": "VirtualService default/a",
    }
    _, out, _ = run(capsys, "-f", str(files), "-o", "yaml")
    assert yaml.safe_load(out)[1]["origin"] == "VirtualService default/b"


def test_thresholds(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    warning_only = tmp_path / "se.yaml"
    warning_only.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "db"},
                "spec": {
                    "hosts": ["db.example.com"],
                    "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
                },
            }
        )
    )
    code, out, _ = run(capsys, str(warning_only))
    assert code == 0 and "[IST0134] (ServiceEntry default/db)" in out
    code, _, _ = run(capsys, str(warning_only), "--failure-threshold", "Warning")
    assert code == 79
    code, out, err = run(capsys, str(warning_only), "--output-threshold", "Error")
    assert code == 0 and out == "\n"  # as istioctl, an empty line
    assert f"\u2714 No validation issues found when analyzing {warning_only}." in err


def test_suppress_and_namespace_selection(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        str(files),
        "-S",
        "IST0109=VirtualService a.default",
        "-S",
        "IST0109=VirtualService *.default",
    )
    assert (code, out) == (0, "\n")
    code, out, err = run(capsys, str(files), "-S", "IST9999=Pod x")
    assert "Warning: Supplied message code 'IST9999' is an unknown message code" in err
    code, out, err = run(capsys, str(files), "-n", "other")
    assert code == 79 and "(VirtualService other/a)" in out  # namespace-less objects land in -n's
    other = files.parent / "other.yaml"
    other.write_text(yaml.safe_dump_all([_vs("a", "x"), _vs("b", "x")]))
    code, out, _ = run(capsys, str(other), "-n", "default")
    assert code == 0 and out == "\n"  # namespace x is not the one analyzed
    code, out, _ = run(capsys, str(other), "-A")
    assert code == 79 and "(VirtualService x/a)" in out


def test_a_file_that_does_not_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed")
    code, _, err = run(capsys, str(bad))
    assert code == 78 and err.startswith("Error(s) adding files:")
    code, _, err = run(capsys, str(tmp_path / "missing.yaml"))
    assert code == 1 and err == f'error: the path "{tmp_path / "missing.yaml"}" does not exist\n'


def test_invalid_objects_are_ist0106(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vs.yaml"
    bad = _vs("a")
    bad["spec"] = {
        "hosts": ["reviews"],
        "http": [{"route": [{"destination": {"host": "reviews"}, "weight": -5}]}],
    }
    path.write_text(yaml.safe_dump(bad))
    code, out, _ = run(capsys, str(path))
    assert code == 79
    assert (
        "Error [IST0106] (VirtualService default/a) Schema validation error: spec.http[0].route[0].weight"
        in out
    )


def test_validate_warns_on_config_pilotfish_does_not_enforce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "strict.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "telemetry.istio.io/v1",
                "kind": "Telemetry",
                "metadata": {"name": "mesh-default", "namespace": "istio-system"},  # mesh-wide
                "spec": {
                    "tracing": [{"providers": [{"name": "otel"}]}],  # enforced: no warning
                    "metrics": [
                        {
                            "providers": [{"name": "prometheus"}],
                            "overrides": [{"disabled": True}],  # enforced: no warning
                            "reportingInterval": "10s",
                        }
                    ],
                },
            }
        )
    )
    assert main(["validate", "-f", str(policy)]) == 0
    out, err = capsys.readouterr()
    assert out == "1 of 1 document valid (1 file read)\n"
    assert err.splitlines() == [
        "Warning: Warning [PF0001] (Telemetry istio-system/mesh-default) Telemetry "
        "spec.metrics[].reportingInterval is stored but not enforced by pilotfish: sidecars' "
        "metrics are scraped from /stats/prometheus, not pushed at an interval"
    ]


def test_validate_names_a_metric_tag_expression_the_sidecars_cannot_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    telemetry = tmp_path / "metrics.yaml"
    override = {
        "match": {"metric": "REQUEST_COUNT"},
        "tagOverrides": {
            "size": {"value": "request.size > 10"},
            "host": {"value": "request.host"},  # evaluated: no warning
        },
    }
    telemetry.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "telemetry.istio.io/v1",
                "kind": "Telemetry",
                "metadata": {"name": "mesh-default", "namespace": "istio-system"},
                "spec": {"metrics": [{"overrides": [override]}]},
            }
        )
    )
    assert main(["validate", "-f", str(telemetry)]) == 0
    _, err = capsys.readouterr()
    assert err.splitlines() == [
        "Warning: Warning [PF0001] (Telemetry istio-system/mesh-default) Telemetry "
        "spec.metrics[0].overrides[0].tagOverrides.size.value is stored but not enforced by "
        "pilotfish: expression 'request.size > 10' is not supported: pilotfish evaluates string "
        "literals, request.headers['NAME'], request.host, request.method, request.path, "
        "request.url_path, response.code, and upstream_peer/downstream_peer.labels['LABEL']"
        ".value for app, version, service.istio.io/canonical-name, "
        "service.istio.io/canonical-revision; the label is not added"
    ]
