"""`pilotfish --help` grouped as kubectl groups its commands. A command no
group names (one added later) still shows, under Other Commands."""

from __future__ import annotations

import argparse

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Basic Commands",
        ("create", "apply", "get", "describe", "edit", "patch", "delete", "diff", "explain"),
    ),
    ("Deploy Commands", ("demo", "controlplane", "node", "scale", "down")),
    (
        "Troubleshooting and Debugging Commands",
        ("logs", "validate", "analyze", "proxy-status", "proxy-config", "chaos"),
    ),
    ("Observability Commands", ("stat", "tap", "dashboard")),
    ("Mesh Commands", ("proxy", "register", "authz")),
    ("Releases", ("rollout",)),
    ("Other Commands", ("api-resources", "token", "version")),
)


class GroupedParser(argparse.ArgumentParser):
    """The top-level parser: its help lists commands by group."""

    def format_help(self) -> str:
        commands = _commands(self)
        if not commands:
            return super().format_help()
        lines = [self.description or "", ""]
        width = max(map(len, commands)) + 3
        listed: set[str] = set()
        for title, names in GROUPS:
            present = [n for n in names if n in commands]
            if title == "Other Commands":
                present += sorted(set(commands) - listed - set(present))
            if not present:
                continue
            lines.append(f"{title}:")
            lines += [f"  {n:<{width}}{commands[n]}" for n in present]
            lines.append("")
            listed.update(present)
        lines += [
            "Usage:",
            f"  {self.prog} [flags] [options]",
            "",
            f'Use "{self.prog} <command> --help" for more information about a given command.',
            f'Use "{self.prog} --version" for the client\'s version, "{self.prog} version" for '
            "the control plane's too.",
        ]
        return "\n".join(lines) + "\n"


def _commands(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's name and its one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: _first_upper(a.help or "") for a in action._choices_actions}
    return {}


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]
