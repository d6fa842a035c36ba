import io
import sys

import pytest

from pilotfish.cli.manifests import ManifestError, read_documents

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec: {hosts: [reviews]}
"""


def test_multi_document_file_and_list_kind(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(
        VS
        + "---\n---\napiVersion: v1\nkind: List\nitems:\n"
        + "- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n"
    )
    docs = read_documents([str(f)])
    assert [d.obj["kind"] for d in docs] == ["VirtualService", "ConfigMap"]
    assert all(d.source == str(f) for d in docs)


def test_directory_is_read_in_name_order_and_ignores_other_files(tmp_path):
    (tmp_path / "b.yaml").write_text(VS.replace("reviews}", "b}"))
    (tmp_path / "a.yml").write_text(VS.replace("reviews}", "a}"))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.json").write_text(
        '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}'
    )
    assert [d.obj["metadata"]["name"] for d in read_documents([str(tmp_path)])] == ["a", "b"]
    names = [d.obj["metadata"]["name"] for d in read_documents([str(tmp_path)], recursive=True)]
    assert names == ["a", "b", "c"]


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(VS))
    assert read_documents(["-"])[0].source == "-"


def test_a_file_that_does_not_parse_yields_nothing(tmp_path):
    good, bad = tmp_path / "a.yaml", tmp_path / "b.yaml"
    good.write_text(VS)
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(ManifestError, match=r'error parsing ".*b.yaml"'):
        read_documents([str(tmp_path)])


def test_missing_path_and_non_object_document(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_documents([str(tmp_path / "nope.yaml")])
    f = tmp_path / "s.yaml"
    f.write_text("- just\n- a list\n")
    with pytest.raises(ManifestError, match="document 1 is not an object"):
        read_documents([str(f)])
