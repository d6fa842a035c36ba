"""The CLI as kubectl users expect it, against a real control plane process:
errors that say what happened, quiet ends on a closed pipe or Ctrl-C with
kubectl's exit codes, and output shapes (columns, `-o name`, jsonpath)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from processes import REPO, ControlPlane
from tests.ports import free_port

PILOTFISH = (sys.executable, "-m", "pilotfish")
BOOKINFO = str(REPO / "examples" / "bookinfo")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("plane")
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        env.pop(var, None)
    running = ControlPlane(tmp / "data", free_port(), env)
    running.start()
    ok(running.cli("apply", "-f", BOOKINFO))
    yield running
    assert running.process is not None
    running.process.kill()
    running.process.wait()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _apply(plane: ControlPlane, obj: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return plane.cli("apply", "-f", "-", stdin=yaml.safe_dump(obj))


# -- errors that say what happened -------------------------------------------------------


def test_a_20mb_apply_is_refused_as_too_large_not_unreachable(
    plane: ControlPlane, tmp_path: Path
) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "big"},
                "data": {"blob": "x" * 20_000_000},
            }
        )
    )
    done = plane.cli("apply", "-f", str(big), timeout=120)
    assert done.returncode == 1
    assert (
        f'Error from server (RequestEntityTooLarge): error when applying "{big}": ' in done.stderr
    )
    assert re.search(r"\d{4,}", done.stderr), "the limit is named"
    assert "cannot reach" not in done.stderr


def test_errors_found_on_this_side_are_not_from_the_server(plane: ControlPlane) -> None:
    down = plane.cli("get", "vs", "--server", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the control plane at http://127.0.0.1:")
    missing = plane.cli("get", "vs", "nothing-here")
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error from server (NotFound): ")


def test_secret_string_data_is_folded_into_data_on_write(plane: ControlPlane) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "data": {"user": base64.b64encode(b"old").decode(), "kept": "a2VwdA=="},
        "stringData": {"user": "admin", "password": "s3cret"},
    }
    ok(_apply(plane, secret))
    stored = json.loads(ok(plane.cli("get", "secret", "creds", "-o", "json")))
    assert "stringData" not in stored
    assert stored["data"] == {
        "user": base64.b64encode(b"admin").decode(),
        "kept": "a2VwdA==",
        "password": base64.b64encode(b"s3cret").decode(),
    }
    assert ok(_apply(plane, secret)).strip() == "secret/creds unchanged"


# -- closed pipes and Ctrl-C ----------------------------------------------------------------


def test_a_closed_pipe_ends_quietly_with_sigpipes_code(plane: ControlPlane) -> None:
    filler = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "filler"}}
    ok(_apply(plane, {**filler, "data": {"text": "line\n" * 100_000}}))
    script = 'set -o pipefail; "$@" get configmaps -o yaml | head -c 10 >/dev/null'
    done = subprocess.run(
        ["bash", "-c", script, "bash", *PILOTFISH],
        env=plane.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 141  # 128 + SIGPIPE, as the shell reports kubectl's end
    assert done.stderr == ""


def test_ctrl_c_ends_a_watch_quietly_with_kubectls_code(plane: ControlPlane) -> None:
    watcher = subprocess.Popen(
        [*PILOTFISH, "get", "vs", "-w"],
        env=plane.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline().split()[0] == "NAME"
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 1 and err == ""  # kubectl's interrupt handler exits 1


def wait_until_reading_stdin(pid: int, timeout: float = 30.0) -> None:
    """Until the process blocks in read(0, ...): a fixed sleep lost the race
    with a slow start-up on a busy machine (SIGINT came before Python's handler)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/syscall").read_text().startswith("0 0x0 "):
                return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never blocked reading its stdin")


def test_ctrl_c_elsewhere_ends_quietly_with_130(plane: ControlPlane, tmp_path: Path) -> None:
    reader = subprocess.Popen(
        [*PILOTFISH, "apply", "-f", "-"],
        env=plane.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_reading_stdin(reader.pid)
    reader.send_signal(signal.SIGINT)
    out, err = reader.communicate(timeout=10)
    assert reader.returncode == 130 and err == "" and out == ""


def test_down_with_nothing_running_says_so(plane: ControlPlane, tmp_path: Path) -> None:
    out = ok(plane.cli("down", "--state-dir", str(tmp_path / "state")))
    assert (
        out.strip()
        == f"node local: nothing was running (no demo, node agent or instance in {tmp_path / 'state'})"
    )


# -- get, as kubectl get -----------------------------------------------------------------


def test_get_type_slash_name_and_several_names(plane: ControlPlane) -> None:
    one = ok(plane.cli("get", "vs/reviews")).splitlines()
    assert one[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert [line.split()[0] for line in one[1:]] == ["reviews"]
    several = ok(plane.cli("get", "vs", "reviews", "ratings")).splitlines()
    assert [line.split()[0] for line in several[1:]] == ["reviews", "ratings"]
    mixed = plane.cli("get", "vs/reviews", "dr/reviews", "-o", "name")
    assert ok(mixed).splitlines() == [
        "virtualservice.networking.istio.io/reviews",
        "destinationrule.networking.istio.io/reviews",
    ]
    refused = plane.cli("get", "vs", "dr/reviews")
    assert refused.returncode == 1
    assert "there is no need to specify a resource type as a separate argument" in refused.stderr


def test_get_a_missing_name_prints_the_rest_then_the_error(plane: ControlPlane) -> None:
    done = plane.cli("get", "vs", "reviews", "nope")
    assert done.returncode == 1
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["NAME", "reviews"]
    assert done.stderr.strip() == (
        'Error from server (NotFound): virtualservices.networking.istio.io "nope" not found'
    )


def test_get_all_lists_the_all_category_with_kind_prefixes(plane: ControlPlane) -> None:
    tables = ok(plane.cli("get", "all")).split("\n\n")
    names = {line.split()[0] for table in tables for line in table.splitlines()[1:]}
    assert "service/reviews" in names and "workload.pilotfish.dev/reviews-v1" in names
    assert all(table.split()[0] == "NAME" for table in tables)
    assert not any(n.startswith("virtualservice") for n in names)  # Istio's kinds are not in "all"


def test_get_with_a_label_selector_and_all_namespaces(plane: ControlPlane) -> None:
    rows = ok(plane.cli("get", "workloads", "-l", "app=reviews,version!=v1")).splitlines()
    assert [r.split()[0] for r in rows[1:]] == ["reviews-v2", "reviews-v3"]
    everywhere = ok(plane.cli("get", "svc", "-A")).splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert ["default", "reviews"] in [r.split()[:2] for r in everywhere[1:]]


def test_get_jsonpath_as_kubectl_prints_it(plane: ControlPlane) -> None:
    names = ok(plane.cli("get", "svc", "-o", "jsonpath={.items[*].metadata.name}"))
    assert names == "details productpage ratings redis reviews"  # no newline, as kubectl
    port = ok(plane.cli("get", "svc", "reviews", "-o", "jsonpath={.spec.ports[0].port}"))
    assert port == "9080"
    ranged = ok(
        plane.cli(
            "get",
            "wl",
            "-l",
            "app=reviews",
            "-o",
            'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.spec.labels.version}{"\\n"}{end}',
        )
    )
    assert ranged == "reviews-v1\tv1\nreviews-v2\tv2\nreviews-v3\tv3\n"
    labels = ok(plane.cli("get", "wl", "reviews-v2", "-o", "jsonpath={.spec.labels}"))
    assert json.loads(labels) == {"app": "reviews", "version": "v2"}
    filtered = ok(
        plane.cli(
            "get", "wl", "-o", 'jsonpath={.items[?(@.spec.labels.version=="v3")].metadata.name}'
        )
    )
    assert filtered == "reviews-v3"


def test_get_wide_shows_a_services_selector_as_kubectl(plane: ControlPlane) -> None:
    rows = ok(plane.cli("get", "svc", "-o", "wide")).splitlines()
    assert re.split(r"\s{2,}", rows[0]) == ["NAME", "TYPE", "CLUSTER-IP", "SELECTOR", "AGE"]
    assert "app=reviews" in rows[-1].split()


def test_get_custom_columns(plane: ControlPlane) -> None:
    spec = "NAME:.metadata.name,PORT:.spec.ports[*].port,MISSING:.spec.nothing"
    rows = ok(plane.cli("get", "svc", "-o", f"custom-columns={spec}")).splitlines()
    assert rows[0].split() == ["NAME", "PORT", "MISSING"]
    assert rows[-1].split() == ["reviews", "9080", "<none>"]


def test_get_an_unknown_output_format_is_refused(plane: ControlPlane) -> None:
    done = plane.cli("get", "vs", "-o", "xml")
    assert done.returncode == 1
    assert 'unable to match a printer suitable for the output format "xml"' in done.stderr


# -- api-resources, version, explain ---------------------------------------------------------


def test_api_resources_as_kubectl_lists_them(plane: ControlPlane) -> None:
    rows = ok(plane.cli("api-resources")).splitlines()
    assert rows[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    by_name = {r.split()[0]: r.split() for r in rows[1:]}
    assert by_name["virtualservices"] == [
        "virtualservices",
        "vs",
        "networking.istio.io/v1",
        "true",
        "VirtualService",
    ]
    assert by_name["namespaces"] == ["namespaces", "ns", "v1", "false", "Namespace"]
    assert by_name["canaries"] == ["canaries", "flagger.app/v1beta1", "true", "Canary"]
    names = ok(plane.cli("api-resources", "-o", "name")).splitlines()
    assert "services" in names and "virtualservices.networking.istio.io" in names
    wide = ok(plane.cli("api-resources", "-o", "wide", "--api-group", "flagger.app")).splitlines()
    assert wide[0].split()[-2:] == ["VERBS", "CATEGORIES"]
    assert all(r.split()[-1] == "all" for r in wide[1:])
    cluster = ok(plane.cli("api-resources", "--namespaced=false", "-o", "name")).split()
    assert cluster == ["namespaces"]


def test_version_shows_the_client_and_the_control_plane(plane: ControlPlane) -> None:
    from pilotfish import __version__

    lines = ok(plane.cli("version")).splitlines()
    assert lines == [f"Client Version: v{__version__}", f"Server Version: v{__version__}"]
    both = json.loads(ok(plane.cli("version", "-o", "json")))
    assert set(both) == {"clientVersion", "serverVersion"}
    assert both["serverVersion"]["gitVersion"] == f"v{__version__}"
    alone = plane.cli("version", "--server", f"http://127.0.0.1:{free_port()}")
    assert alone.returncode == 1 and alone.stdout == f"Client Version: v{__version__}\n"
    assert "cannot reach the control plane" in alone.stderr


def test_explain_a_kind_and_a_field_from_the_schemas(plane: ControlPlane) -> None:
    kind = ok(plane.cli("explain", "virtualservice")).splitlines()
    assert kind[:3] == [
        "GROUP:      networking.istio.io",
        "KIND:       VirtualService",
        "VERSION:    v1",
    ]
    assert "FIELDS:" in kind and "  spec\t<Object>" in kind
    field = ok(plane.cli("explain", "vs.spec.http.route.destination")).splitlines()
    assert "FIELD: destination <Object>" in field
    assert "  host\t<string> -required-" in field and "  subset\t<string>" in field
    listed = ok(plane.cli("explain", "vs.spec.http")).splitlines()
    assert "FIELD: http <[]Object>" in listed
    missing = plane.cli("explain", "workload.spec.nope")
    assert missing.returncode == 1 and 'field "nope" does not exist' in missing.stderr


# -- patch and edit ---------------------------------------------------------------------------


def _subset(plane: ControlPlane) -> str:
    return ok(
        plane.cli(
            "get", "vs", "ratings", "-o", "jsonpath={.spec.http[0].route[0].destination.subset}"
        )
    )


def test_patch_merge_json_and_strategic(plane: ControlPlane) -> None:
    merge = '{"spec":{"http":[{"route":[{"destination":{"host":"ratings","subset":"v2"}}]}]}}'
    assert ok(plane.cli("patch", "vs", "ratings", "--type", "merge", "-p", merge)) == (
        "virtualservice.networking.istio.io/ratings patched\n"
    )
    assert _subset(plane) == "v2"
    again = ok(plane.cli("patch", "vs/ratings", "--type=merge", "-p", merge))
    assert again == "virtualservice.networking.istio.io/ratings patched (no change)\n"
    op = '[{"op":"replace","path":"/spec/http/0/route/0/destination/subset","value":"v1"}]'
    ok(plane.cli("patch", "vs", "ratings", "--type", "json", "-p", op))
    assert _subset(plane) == "v1"
    failed_test = '[{"op":"test","path":"/spec/hosts/0","value":"nope"}]'
    refused = plane.cli("patch", "vs", "ratings", "--type", "json", "-p", failed_test)
    assert refused.returncode == 1 and "testing value failed" in refused.stderr
    custom = plane.cli("patch", "vs", "ratings", "-p", merge)  # strategic, kubectl's default
    assert custom.returncode == 1
    assert (
        "strategic merge patch is not supported for virtualservices.networking.istio.io"
        in custom.stderr
    )
    ports = '{"spec":{"ports":[{"port":9080,"name":"http-web"},{"port":9443,"name":"https"}]}}'
    ok(plane.cli("patch", "svc", "details", "-p", ports))
    merged = json.loads(ok(plane.cli("get", "svc", "details", "-o", "jsonpath={.spec.ports}")))
    # merged by `port`, as kubectl's strategic merge: details' grpc port stays
    assert [(p["port"], p["name"]) for p in merged] == [
        (9080, "http-web"),
        (9090, "grpc"),
        (9443, "https"),
    ]
    invalid = '{"spec":{"http":[{"route":[{"destination":{"host":""}}]}]}}'
    bad = plane.cli("patch", "vs", "ratings", "--type", "merge", "-p", invalid)
    assert bad.returncode == 1 and bad.stderr.startswith("Error from server (Invalid): ")
    assert _subset(plane) == "v1"


def _editor(tmp_path: Path, script: str) -> dict[str, str]:
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\n" + script)
    editor.chmod(0o755)
    return {"EDITOR": str(editor)}


def _edit(plane: ControlPlane, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PILOTFISH, "edit", *args],
        env={**plane.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_edit_applies_what_was_saved(plane: ControlPlane, tmp_path: Path) -> None:
    ok(
        plane.cli(
            "patch",
            "vs",
            "ratings",
            "--type",
            "json",
            "-p",
            '[{"op":"replace","path":"/spec/http/0/route/0/destination/subset","value":"v1"}]',
        )
    )
    done = _edit(
        plane, _editor(tmp_path, 'sed -i "s/subset: v1/subset: v2/" "$1"\n'), "vs", "ratings"
    )
    assert done.stdout == "virtualservice.networking.istio.io/ratings edited\n", done.stderr
    assert _subset(plane) == "v2"
    untouched = _edit(plane, _editor(tmp_path, "true\n"), "vs/ratings")
    assert untouched.returncode == 0 and untouched.stdout == "Edit cancelled, no changes made.\n"


def test_edit_refuses_a_write_that_lost_a_race(plane: ControlPlane, tmp_path: Path) -> None:
    racing = (
        f"{sys.executable} -m pilotfish patch vs ratings --type merge "
        """-p '{"spec":{"hosts":["ratings","ratings.default"]}}' >/dev/null\n"""
        'sed -i "s/subset: v[0-9]/subset: v3/" "$1"\n'
    )
    done = _edit(plane, _editor(tmp_path, racing), "vs", "ratings")
    assert done.returncode == 1
    assert "Error from server (Conflict): Operation cannot be fulfilled" in done.stderr
    copy = done.stderr.split('stored to "')[1].split('"')[0]
    assert "subset: v3" in Path(copy).read_text()
    Path(copy).unlink()
    assert _subset(plane) != "v3"  # the other write stands, this one was not applied


def test_an_invalid_edit_reopens_with_the_error_then_cancels(
    plane: ControlPlane, tmp_path: Path
) -> None:
    script = 'grep -q "^# Error from server (Invalid)" "$1" && cp "$1" "$1.seen"; sed -i "s/- ratings$/- \'\'/" "$1"\n'
    script = script.replace("$1.seen", str(tmp_path / "seen.yaml"))
    done = _edit(plane, _editor(tmp_path, script), "vs", "ratings")
    assert done.returncode == 1
    assert "error: Edit cancelled, no valid changes were saved." in done.stderr
    assert "# Error from server (Invalid): " in (tmp_path / "seen.yaml").read_text()
    Path(done.stderr.split('stored to "')[1].split('"')[0]).unlink()


def test_get_events_with_kubectls_columns(plane: ControlPlane) -> None:
    from pilotfish.api.gotypes import rfc3339

    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "reviews.17a"},
        "involvedObject": {"kind": "Canary", "name": "reviews", "namespace": "default"},
        "reason": "Synced",
        "message": "Advance reviews.default canary weight 10",
        "type": "Normal",
        "lastTimestamp": rfc3339(time.time() - 120),
        "source": {"component": "flagger"},
    }
    ok(_apply(plane, event))
    rows = ok(plane.cli("get", "events")).splitlines()
    assert re.split(r"\s{2,}", rows[0]) == [
        "LAST SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "MESSAGE",
    ]
    assert rows[1].split(None, 4) == ["2m", "Normal", "Synced", "canary/reviews", event["message"]]
    everywhere = ok(plane.cli("get", "ev", "-A")).splitlines()
    assert everywhere[0].startswith("NAMESPACE   LAST SEEN") and everywhere[1].startswith(
        "default "
    )


# -- validate -----------------------------------------------------------------------------------


def test_validate_reads_a_directory_down_to_the_bottom(plane: ControlPlane, tmp_path: Path) -> None:
    examples = REPO / "examples"
    files = sorted(p for p in examples.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    docs = sum(1 for f in files for d in yaml.safe_load_all(f.read_text()) if d)
    done = plane.cli("validate", "-f", "examples/")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{docs} of {docs} documents valid ({len(files)} files read)\n"
    nested = tmp_path / "config" / "deeper"
    nested.mkdir(parents=True)
    (tmp_path / "config" / "ok.yaml").write_text(
        (examples / "bookinfo" / "10-services.yaml").read_text()
    )
    (nested / "bad.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n"
        "  hosts: [x]\n  http: [{route: [{destination: {host: ''}}]}]\n"
    )
    bad = plane.cli("validate", "-f", str(tmp_path / "config"))
    assert bad.returncode == 1
    assert f"{nested / 'bad.yaml'}: VirtualService default/x: " in bad.stderr
    assert bad.stdout.endswith("documents valid (2 files read)\n")
    empty = plane.cli("validate", "-f", str(nested.parent.parent / "nothing"))
    assert empty.returncode == 1
