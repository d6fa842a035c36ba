"""`pilotfish demo`: the control plane on its embedded store, with the example
configuration applied, in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pilotfish.cli.commands import CliError, apply_documents
from pilotfish.cli.manifests import Document, read_documents
from pilotfish.client import Client

READY_TIMEOUT_S = 30.0


def demo(args: argparse.Namespace) -> int:
    server = f"http://{args.listen}"
    plane = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish",
            "controlplane",
            "--data-dir",
            str(args.data_dir),
            "--listen",
            args.listen,
        ],
    )
    try:
        wait_ready(server, plane)
        print(f"control plane ready at {server} (data in {args.data_dir})", flush=True)
        ok = apply_documents(Client.from_config(server), _examples(args.examples), None)
        _next_steps(server, args.examples)
        if not ok:
            return 1
        return plane.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(plane)


def wait_ready(server: str, plane: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if plane.poll() is not None:
            raise CliError(f"the control plane exited with code {plane.returncode}")
        try:
            with urllib.request.urlopen(f"{server}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise CliError(f"the control plane did not become ready at {server} in {READY_TIMEOUT_S:.0f}s")


def _examples(path: Path) -> list[Document]:
    if not path.exists():
        raise CliError(f'the examples path "{path}" does not exist')
    return read_documents([str(path)], recursive=True)


def _next_steps(server: str, examples: Path) -> None:
    print(
        "\nNext steps, in another terminal:\n"
        "  pilotfish get services,virtualservices  # what is configured\n"
        "  pilotfish get vs reviews -o yaml\n"
        f"  pilotfish validate -f {examples}        # offline checks, like istioctl validate\n"
        f"  curl {server}/apis/networking.istio.io/v1/namespaces/default/virtualservices\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )


def _stop(plane: subprocess.Popen[bytes]) -> None:
    if plane.poll() is None:
        plane.terminate()
        try:
            plane.wait(timeout=10)
        except subprocess.TimeoutExpired:
            plane.kill()
