from datetime import UTC, datetime, timedelta

from pilotfish.api.kinds import registry
from pilotfish.cli import output

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def ts(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_age_reads_like_kubectl():
    assert output.age(ts(timedelta(seconds=45)), NOW) == "45s"
    assert output.age(ts(timedelta(seconds=90)), NOW) == "90s"
    assert output.age(ts(timedelta(minutes=12)), NOW) == "12m"
    assert output.age(ts(timedelta(hours=3, minutes=5)), NOW) == "3h"
    assert output.age(ts(timedelta(days=5)), NOW) == "5d"
    assert output.age(None) == "<unknown>"


def test_virtualservice_table_uses_istio_printer_columns():
    vs = registry().resolve("vs")
    items = [
        {
            "metadata": {
                "name": "reviews",
                "namespace": "default",
                "creationTimestamp": ts(timedelta(minutes=3)),
            },
            "spec": {"hosts": ["reviews"], "gateways": ["mesh"]},
        },
    ]
    text = output.table(vs, "v1", items, wide=False, all_namespaces=True)
    header, row = text.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert row.split() == [
        "default",
        "reviews",
        '["mesh"]',
        '["reviews"]',
        output.age(items[0]["metadata"]["creationTimestamp"]),
    ]


def test_kind_without_printer_columns_gets_name_and_age():
    cm = registry().resolve("configmaps")
    text = output.table(
        cm, "v1", [{"metadata": {"name": "settings"}}], wide=False, all_namespaces=False
    )
    assert text.splitlines()[0].split() == ["NAME", "AGE"]


def test_names_as_kubectl_prints_them():
    assert (
        output.resource_name(registry().resolve("dr"), "reviews")
        == "destinationrule.networking.istio.io/reviews"
    )
    assert output.resource_name(registry().resolve("svc"), "reviews") == "service/reviews"


def test_help_groups_every_command_as_kubectl_does() -> None:
    import argparse

    from pilotfish.cli.help import GROUPS
    from pilotfish.cli.main import build_parser

    parser = build_parser()
    text = parser.format_help()
    titles = [
        line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")
    ]
    assert titles == [
        "Basic Commands",
        "Deploy Commands",
        "Troubleshooting and Debugging Commands",
        "Observability Commands",
        "Mesh Commands",
        "Releases",
        "Other Commands",
        "Usage",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = [
        line.split()[0]
        for line in text.splitlines()
        if line.startswith("  ") and not line.startswith("  pilotfish")
    ]
    assert sorted(listed) == sorted(sub.choices)  # each command once, none left out
    section = text.split("Troubleshooting and Debugging Commands:\n")[1].split("\n\n")[0]
    assert [line.split()[0] for line in section.splitlines()][:2] == ["logs", "validate"]
    assert all(
        name in dict(GROUPS)["Basic Commands"] for name in ("get", "edit", "patch", "explain")
    )
