"""`pilotfish dashboard`: the URL of the dashboard the control plane serves
(opened in a browser when asked and one is at hand)."""

from __future__ import annotations

import argparse
import webbrowser

from pilotfish.client import Client

PATH = "/dashboard/"
Sub = argparse._SubParsersAction


def add_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dashboard", parents=[common], help="the web dashboard's URL")
    p.add_argument("--open", action="store_true", help="open it in the default browser too")
    p.set_defaults(handler=dashboard)


def dashboard_url(server: str) -> str:
    return server.rstrip("/") + PATH


def dashboard(args: argparse.Namespace) -> int:
    url = dashboard_url(Client.from_config(args.server).server)
    print(url)
    if args.open:
        webbrowser.open(url)
    return 0
