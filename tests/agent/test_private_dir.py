"""config.private_dir: the node agent's state directory keeps other users out."""

from __future__ import annotations

import stat
from pathlib import Path

from pilotfish.config import private_dir


def test_a_new_directory_is_made_0700(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "home" / ".pilotfish" / "node" / "local")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_an_open_existing_directory_is_closed(tmp_path: Path) -> None:
    existing = tmp_path / "state"
    existing.mkdir(mode=0o777)
    existing.chmod(0o777)
    (existing / "secret").write_text("hunter2")
    private_dir(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o700
    assert (existing / "secret").read_text() == "hunter2"
