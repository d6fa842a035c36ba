"""Issue 14: who may read and write what, and the files that hold the state.

Secrets were served to anyone on the host without a token; the store files
were created 0644 in whatever directory they were given.
"""

from __future__ import annotations

import io
import json
import os
import stat
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilotfish.addresses import is_loopback
from pilotfish.api.errors import Forbidden, Unauthorized
from pilotfish.api.kinds import registry
from pilotfish.cli.main import main as cli
from pilotfish.client import Client
from pilotfish.controlplane.api import Api
from pilotfish.controlplane.auth import READ_ONLY_TOKENS_FILE, Authenticator
from pilotfish.controlplane.bodies import MAX_DEPTH
from pilotfish.controlplane.main import ControlPlane, StartError
from pilotfish.store.resources import ResourceStore

from .cp_testkit import TOKEN, VS_PATH, Caller, virtual_service
from .test_hostile_bodies import envoy_filter

SECRETS = "/api/v1/namespaces/default/secrets"
SECRET = registry().resolve("secret")


def secret(name: str = "db") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"password": "hunter2"},
    }


@pytest.fixture
def guarded(store: ResourceStore, tmp_path: Path) -> Caller:
    """An Api whose read-only tokens live in tmp_path, with one Secret stored."""
    call = Caller(Api(store, Authenticator(TOKEN, data_dir=tmp_path)))
    assert call("POST", SECRETS, secret()).status == 201
    return call


def create_token(tmp_path: Path, name: str = "ci") -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["token", "create", "--read-only", name, "--data-dir", str(tmp_path)]) == 0
    return out.getvalue().strip()


def test_anonymous_callers_never_read_secrets(guarded: Caller) -> None:
    cases = {
        f"{SECRETS}/db": 'secrets "db" is forbidden: User "system:anonymous" cannot get '
        'resource "secrets" in API group "" in the namespace "default"',
        SECRETS: 'secrets is forbidden: User "system:anonymous" cannot list '
        'resource "secrets" in API group "" in the namespace "default"',
        "/api/v1/secrets": 'secrets is forbidden: User "system:anonymous" cannot list '
        'resource "secrets" in API group "" at the cluster scope',
        f"{SECRETS}?watch=true": 'secrets is forbidden: User "system:anonymous" cannot watch '
        'resource "secrets" in API group "" in the namespace "default"',
    }
    for path, message in cases.items():
        answer = guarded("GET", path, token=None)
        assert answer.status == 403 and answer.stream is None, path
        assert answer.json()["reason"] == "Forbidden"
        assert answer.json()["message"] == message
        assert "hunter2" not in answer.body.decode()
    assert guarded("GET", f"{SECRETS}/db", token=None).json()["details"] == {
        "name": "db",
        "kind": "secrets",
    }
    # Everything else stays readable on loopback without a token.
    assert guarded("GET", VS_PATH, token=None).status == 200
    assert guarded("GET", "/openapi/v3", token=None).status == 200


def test_read_only_tokens_read_everything_and_write_nothing(
    guarded: Caller, tmp_path: Path
) -> None:
    token = create_token(tmp_path)
    assert len(token) >= 32
    assert guarded("GET", f"{SECRETS}/db", token=token).json()["stringData"] == {
        "password": "hunter2"
    }
    assert guarded("GET", SECRETS, token=token, peer="10.1.2.3").status == 200
    denied = guarded("POST", VS_PATH, virtual_service(), token=token)
    assert denied.status == 403 and denied.json()["message"] == (
        'virtualservices.networking.istio.io is forbidden: User "ci" cannot create resource '
        '"virtualservices" in API group "networking.istio.io" in the namespace "default"'
    )
    status_write = guarded("PUT", f"{SECRETS}/db/status", secret(), token=token)
    assert 'cannot update resource "secrets/status"' in status_write.json()["message"]
    # Kept hashed and private: the file gives nobody the token.
    path = tmp_path / READ_ONLY_TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and token not in path.read_text()
    # Revoked: the next request is refused, with no restart.
    assert cli(["token", "delete", "ci", "--data-dir", str(tmp_path)]) == 0
    assert guarded("GET", SECRETS, token=token).status == 401


def test_token_names_are_checked_and_unique(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create_token(tmp_path, "dashboard")
    assert cli(["token", "create", "--read-only", "dashboard", "--data-dir", str(tmp_path)]) == 1
    assert 'read-only token "dashboard" already exists' in capsys.readouterr().err
    assert cli(["token", "create", "--read-only", "Bad Name", "--data-dir", str(tmp_path)]) == 1
    assert 'invalid token name "Bad Name"' in capsys.readouterr().err
    assert cli(["token", "list", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "dashboard\n"


def test_401_and_403_as_apiserver_answers_them(guarded: Caller) -> None:
    wrong = guarded("GET", VS_PATH, token="not-a-token")
    assert wrong.status == 401 and wrong.json()["message"] == "Unauthorized"
    # Off loopback there is no anonymous user: no credentials is 401.
    assert guarded("GET", VS_PATH, token=None, peer="10.1.2.3").status == 401
    assert guarded("GET", VS_PATH, token=None, peer="::ffff:10.1.2.3").status == 401
    # On loopback the caller is system:anonymous, who may not write.
    write = guarded("POST", VS_PATH, virtual_service(), token=None)
    assert (
        write.status == 403 and 'User "system:anonymous" cannot create' in write.json()["message"]
    )
    # The admin token may do anything, from anywhere.
    assert guarded("GET", f"{SECRETS}/db", peer="10.1.2.3").status == 200


def test_anonymous_reads_can_be_turned_off(store: ResourceStore) -> None:
    call = Caller(Api(store, Authenticator(TOKEN, anonymous_reads=False)))
    for path in (VS_PATH, "/openapi/v3", "/api/v1/registry/instances"):
        answer = call("GET", path, token=None)
        assert answer.status == 401 and answer.json()["message"] == "Unauthorized", path
    assert call("GET", VS_PATH).status == 200
    assert call("GET", "/readyz", token=None).status == 200  # health stays open


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("192.0.2.2", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("0.0.0.0", False),
        ("localhost", False),  # a name is not an address: never trusted
        ("", False),
    ],
)
def test_loopback_is_decided_from_the_address_alone(peer: str, loopback: bool) -> None:
    assert is_loopback(peer) is loopback


def test_the_running_server_applies_the_rules(tmp_path: Path) -> None:
    plane = ControlPlane.open(
        tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml", anonymous_reads=False
    )
    plane.server.start()
    try:
        admin = Client(plane.server.url, (plane.data_dir / "token").read_text().strip())
        admin.create(secret())
        with pytest.raises(Unauthorized):
            Client(plane.server.url, None).list(SECRET, "default")
        # A token minted while the control plane runs works at once.
        token = create_token(plane.data_dir, "dashboard")
        ci = Client(plane.server.url, token)
        assert ci.get(SECRET, "db", "default")["data"]["password"] == "aHVudGVyMg=="
        with pytest.raises(Forbidden, match='User "dashboard" cannot delete'):
            ci.delete(SECRET, "db", "default")
    finally:
        plane.close()


def test_store_files_are_private_in_an_existing_0755_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        plane = ControlPlane.open(data, "127.0.0.1:0", tmp_path / "config.yaml")
    finally:
        os.umask(old_umask)
    try:
        plane.store.create(secret(), manager="test")
        names = ("store.db", "store.db-wal", "store.db-shm")
        modes = {name: stat.S_IMODE((data / name).stat().st_mode) for name in names}
        assert modes == dict.fromkeys(names, 0o600)
    finally:
        plane.close()


def test_store_files_left_readable_by_an_older_version_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "store.db").touch(mode=0o644)
    (data / "store.db").chmod(0o644)
    ControlPlane.open(data, "127.0.0.1:0", tmp_path / "config.yaml").close()
    assert stat.S_IMODE((data / "store.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_data_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    with pytest.raises(StartError) as refused:
        ControlPlane.open(data, "127.0.0.1:0", tmp_path / "config.yaml")
    assert str(data) in str(refused.value) and f"chmod 700 {data}" in str(refused.value)
    assert not (data / "store.db").exists() and not (data / "token").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_data_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    with pytest.raises(StartError, match="owned by uid 65534"):
        ControlPlane.open(data, "127.0.0.1:0", tmp_path / "config.yaml")


def test_pilotfish_get_prints_the_deepest_accepted_object(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    token = (plane.data_dir / "token").read_text().strip()
    Client(plane.server.url, token).create(envoy_filter(MAX_DEPTH))
    assert cli(["get", "envoyfilter", "deep", "-o", "yaml", "--server", plane.server.url]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["spec"] == envoy_filter(MAX_DEPTH)["spec"]
    assert cli(["get", "envoyfilter", "deep", "-o", "json", "--server", plane.server.url]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["name"] == "deep"
    assert cli(["get", "envoyfilters", "--server", plane.server.url]) == 0
    assert "deep" in capsys.readouterr().out


def test_a_damaged_token_file_admits_no_reader_and_the_admin_still_works(
    guarded: Caller, tmp_path: Path
) -> None:
    token = create_token(tmp_path)
    (tmp_path / READ_ONLY_TOKENS_FILE).write_text('{"ci": "not hex"}')
    assert guarded("GET", SECRETS, token=token).status == 401
    assert guarded("GET", SECRETS).status == 200


@pytest.mark.parametrize(("flag", "value"), [([], True), (["--anonymous-reads=false"], False)])
def test_the_anonymous_reads_flag(flag: list[str], value: bool) -> None:
    from pilotfish.cli.main import build_parser

    assert build_parser().parse_args(["controlplane", *flag]).anonymous_reads is value
