"""The kinds pilotfish accepts, read from CustomResourceDefinition files.

Istio's and Flagger's CRDs ship unmodified in `schemas/`; the Kubernetes core
kinds (Service, ConfigMap, Secret, Namespace, Event) and pilotfish's own (Workload)
are described in the same CRD format, so one code path serves every kind.
pilotfish's one extension to them is applied on load, in `_extend`: a
Canary's targetRef may also name a Workload.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from pilotfish.api.errors import BadRequest, NotFound
from pilotfish.objects import Obj


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group ("v1")
    kind: str
    plural: str
    singular: str
    namespaced: bool
    versions: tuple[str, ...]  # served versions, storage version first
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # `kubectl get all` lists the kinds in category "all"
    schemas: dict[str, Obj] = field(default_factory=dict, compare=False, repr=False)
    printer_columns: dict[str, list[Obj]] = field(default_factory=dict, compare=False, repr=False)

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    def path(self, version: str, namespace: str | None, name: str | None = None) -> str:
        """The REST path: /api/v1/... for the core group, /apis/GROUP/VERSION/... otherwise."""
        base = f"/apis/{self.group}/{version}" if self.group else f"/api/{version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base

    @property
    def qualified(self) -> str:
        """`virtualservices.networking.istio.io`, as kubectl names a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


class KindRegistry:
    def __init__(self, kinds: list[Kind]) -> None:
        self._kinds = kinds
        self._by_gk = {(k.group, k.kind): k for k in kinds}

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._kinds)

    def for_object(self, obj: Obj) -> tuple[Kind, str]:
        """The kind and version of an object, from its apiVersion and kind."""
        api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not api_version:
            raise BadRequest("apiVersion: Required value")
        if not isinstance(kind_name, str) or not kind_name:
            raise BadRequest("kind: Required value")
        group, version = split_api_version(api_version)
        kind = self._by_gk.get((group, kind_name))
        if kind is None:
            raise BadRequest(f'no kind "{kind_name}" is registered for version "{api_version}"')
        if version not in kind.versions:
            raise BadRequest(f'no kind "{kind_name}" is registered for version "{api_version}"')
        return kind, version

    def by_plural(self, group: str, version: str, plural: str) -> Kind:
        for k in self._kinds:
            if k.group == group and k.plural == plural and version in k.versions:
                return k
        raise NotFound(f'the server could not find the requested resource "{plural}"')

    def resolve(self, name: str) -> Kind:
        """A kind from what a user types: `vs`, `virtualservice`, `VirtualService`,
        `virtualservices.networking.istio.io`."""
        needle = name.lower()
        plain, _, group = needle.partition(".")
        matches = [
            k
            for k in self._kinds
            if plain in (k.plural, k.singular, k.kind.lower(), *k.short_names)
            and (not group or k.group == group)
        ]
        if not matches:
            raise NotFound(f'the server doesn\'t have a resource type "{name}"')
        return _preferred(matches)

    def category(self, name: str) -> list[Kind]:
        """The kinds in a category (`all`, `istio-io`), in registry order."""
        return [k for k in self._kinds if name.lower() in k.categories]


def _preferred(matches: list[Kind]) -> Kind:
    """Where names collide (Istio's and Kubernetes' both have none today), prefer
    the mesh's own networking group, as users of istioctl would expect."""
    order = ["networking.istio.io", "security.istio.io", "", "pilotfish.dev", "flagger.app"]
    return min(matches, key=lambda k: order.index(k.group) if k.group in order else len(order))


def kind_from_crd(crd: Obj) -> Kind:
    spec, names = crd["spec"], crd["spec"]["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    served.sort(key=lambda v: not v.get("storage", False))
    return Kind(
        group=spec["group"],
        kind=names["kind"],
        plural=names["plural"],
        singular=names.get("singular", names["kind"].lower()),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        versions=tuple(v["name"] for v in served),
        short_names=tuple(names.get("shortNames", [])),
        categories=tuple(names.get("categories", [])),
        schemas={v["name"]: v.get("schema", {}).get("openAPIV3Schema", {}) for v in served},
        printer_columns={v["name"]: v.get("additionalPrinterColumns", []) for v in served},
    )


SCHEMA_FILES = ("istio-crd-all.gen.yaml", "flagger-crd.yaml", "core-v1.yaml", "pilotfish.yaml")


@functools.cache
def registry() -> KindRegistry:
    """Every kind pilotfish serves, loaded once from the packaged CRD files."""
    return KindRegistry([kind_from_crd(_extend(crd)) for crd in _crds()])


def _crds() -> list[Obj]:
    """The packaged CRDs. Parsing their 1 MB of YAML takes 0.4-1 s, most of a
    CLI command's start-up, so the result is kept as JSON (10 ms to read) in
    the user's cache, named by a hash of the files, as kubectl keeps the
    server's discovery; without a usable cache they are parsed each time."""
    folder = resources.files("pilotfish.api") / "schemas"
    texts = [(folder / filename).read_bytes() for filename in SCHEMA_FILES]
    digest = hashlib.sha256(b"\0".join(texts)).hexdigest()[:16]
    cached = _cache_dir() / f"crds-{digest}.json"
    try:
        crds: list[Obj] = json.loads(cached.read_bytes())
        return crds
    except (OSError, ValueError):
        pass
    crds = [
        doc
        for text in texts
        for doc in yaml.load_all(text.decode("utf-8"), Loader=_loader())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    _write_quietly(cached, json.dumps(crds).encode())
    return crds


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pilotfish"


def _write_quietly(path: Path, body: bytes) -> None:
    """Write whole or not at all (a rename), and never fail the caller: a
    cache that cannot be written is only slower."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(body)
        partial.replace(path)
    except OSError:
        pass


def _extend(crd: Obj) -> Obj:
    """Flagger's Canary targets a Deployment, DaemonSet or Service; pilotfish
    also lets it name its own Workload (pilotfish.dev/v1alpha1)."""
    if crd["spec"]["group"] != "flagger.app" or crd["spec"]["names"]["kind"] != "Canary":
        return crd
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["targetRef"]["properties"]["kind"]["enum"].append("Workload")
    return crd


def _loader() -> type[yaml.SafeLoader]:
    loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return loader
