"""`pilotfish grpc-agent`: bad input is refused with a message naming it,
before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.cli.main import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--xds", "nowhere"], "--xds: not HOST:PORT: 'nowhere'"),
        (["--refresh-interval", "soon"], "--refresh-interval:"),
        (["--refresh-interval", "0s"], "--refresh-interval '0s': must be positive"),
        (["--service-account", "Not_Valid!"], "service account 'Not_Valid!' is not a valid name"),
        (["--label", "app"], "--label 'app': expected NAME=VALUE"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    out = tmp_path / "out"
    code = main(["grpc-agent", "echo-0", "--dir", str(out), "--ca-token-file", str(token), *extra])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_token_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none"
    code = main(
        ["grpc-agent", "echo-0", "--dir", str(tmp_path / "out"), "--ca-token-file", str(missing)]
    )
    assert code == 1
    assert f"--ca-token-file {missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
