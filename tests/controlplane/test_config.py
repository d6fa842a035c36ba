"""Where the CLI finds the control plane: flags, environment, then the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.client import Client
from pilotfish.config import (
    ClientConfig,
    ConfigError,
    config_path,
    load_client_config,
    write_client_config,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("PILOTFISH_CONFIG", str(path))
    return path


def test_defaults_without_a_file() -> None:
    assert load_client_config() == ClientConfig("http://127.0.0.1:15080", None)


def test_the_file_then_the_environment_then_the_flag(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_client_config(ClientConfig("http://127.0.0.1:2000", "from-file"))
    assert load_client_config() == ClientConfig("http://127.0.0.1:2000", "from-file")
    monkeypatch.setenv("PILOTFISH_SERVER", "http://10.0.0.1:15080")
    monkeypatch.setenv("PILOTFISH_TOKEN", "from-env")
    assert load_client_config() == ClientConfig("http://10.0.0.1:15080", "from-env")
    assert load_client_config("http://flag:1/").server == "http://flag:1"
    assert Client.from_config("http://flag:1").server == "http://flag:1"


def test_the_config_path_follows_the_environment_else_home(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert config_path() == clean_env
    monkeypatch.delenv("PILOTFISH_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_path() == tmp_path / "home" / ".pilotfish" / "config.yaml"


def test_a_broken_file_is_a_clear_error(clean_env: Path) -> None:
    clean_env.write_text("server: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_client_config()
    clean_env.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_client_config()


def test_the_token_never_shows_in_a_repr() -> None:
    assert "secret" not in repr(ClientConfig("http://x", "secret"))


def test_the_saved_token_only_goes_to_its_own_server(tmp_path, monkeypatch):
    from pilotfish.config import ClientConfig, load_client_config, write_client_config

    monkeypatch.delenv("PILOTFISH_SERVER", raising=False)
    monkeypatch.delenv("PILOTFISH_TOKEN", raising=False)
    path = tmp_path / "config.yaml"
    write_client_config(ClientConfig("http://127.0.0.1:15080", "secret"), path)
    assert load_client_config(None, path).token == "secret"
    assert load_client_config("http://127.0.0.1:15080/", path).token == "secret"
    assert load_client_config("http://elsewhere.example:15080", path).token is None
    monkeypatch.setenv("PILOTFISH_TOKEN", "explicit")
    assert load_client_config("http://elsewhere.example:15080", path).token == "explicit"
