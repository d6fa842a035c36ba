"""The client config: where the control plane is and the token to write to it.

Like a kubeconfig, but one server: the control plane writes it on start
(`$PILOTFISH_CONFIG`, else ~/.pilotfish/config.yaml, mode 0600) and the CLI
reads it, so `pilotfish apply` works with no flags on the same machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pilotfish.api.errors import ApiError

DEFAULT_SERVER = "http://127.0.0.1:15080"
CONFIG_ENV = "PILOTFISH_CONFIG"
SERVER_ENV = "PILOTFISH_SERVER"
TOKEN_ENV = "PILOTFISH_TOKEN"
# A CA file to verify the control plane with, over the client config's (kubectl's
# --certificate-authority; the CLI's flag of that name sets it for its run).
CA_ENV = "PILOTFISH_CERTIFICATE_AUTHORITY"


class ConfigError(ApiError):
    """The client config file exists but cannot be used."""

    code = 400
    reason = "InvalidClientConfig"


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str | None
    # A CA file to verify the server with (kubeconfig's certificate-authority).
    certificate_authority: str | None = None

    def __repr__(self) -> str:
        # The token is a credential: never let it reach a log or a traceback.
        return f"ClientConfig(server={self.server!r}, token={'***' if self.token else None})"


@contextmanager
def certificate_authority(path: str | None) -> Iterator[None]:
    """The CLI's --certificate-authority for the length of one command."""
    if not path:
        yield
        return
    before = os.environ.get(CA_ENV)
    os.environ[CA_ENV] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CA_ENV, None)
        else:
            os.environ[CA_ENV] = before


def config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    return Path(explicit) if explicit else Path.home() / ".pilotfish" / "config.yaml"


def load_client_config(
    server_override: str | None = None, path: Path | None = None
) -> ClientConfig:
    """Server: the override (--server) > $PILOTFISH_SERVER > the file > the default.
    Token: $PILOTFISH_TOKEN > the file's, and the file's only for the file's own
    server, so a token never goes to a server it was not issued by."""
    saved = _read(path or config_path())
    saved_server = (_text(saved, "server") or DEFAULT_SERVER).rstrip("/")
    server = (server_override or os.environ.get(SERVER_ENV) or saved_server).rstrip("/")
    token = os.environ.get(TOKEN_ENV) or (_text(saved, "token") if server == saved_server else None)
    authority = _text(saved, "certificate-authority") if server == saved_server else None
    return ClientConfig(server, token, os.environ.get(CA_ENV) or authority)


def write_client_config(config: ClientConfig, path: Path | None = None) -> Path:
    """Save `config` with mode 0600, atomically; returns where it went."""
    target = path or config_path()
    saved: dict[str, Any] = {"server": config.server, "token": config.token}
    if config.certificate_authority:
        saved["certificate-authority"] = config.certificate_authority
    text = yaml.safe_dump(saved, sort_keys=False)
    write_private(target, text)
    return target


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter, made so if it was not:
    what is under it (Secrets mounted for workloads, their logs) is then
    private whatever the files' own modes."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` so no other user can ever read it, replacing any old file
    atomically (a temporary file, created 0600, then renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read the client config {path}: {e.strerror}") from e
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"the client config {path} is not valid YAML: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"the client config {path} must be a mapping with server and token")
    return loaded


def _text(saved: dict[str, Any], field: str) -> str | None:
    value = saved.get(field)
    return value if isinstance(value, str) and value else None
