"""Name and metadata rules, as Kubernetes' apimachinery states them.

Users carry their habits from kubectl, so the messages are Kubernetes' words:
`metadata.name: Invalid value: "Foo": a lowercase RFC 1123 subdomain must ...`.
"""

from __future__ import annotations

import re
from typing import Any

from pilotfish.api.errors import FieldError

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# metadata fields the store owns: accepted as written, never checked here.
SYSTEM_FIELDS = frozenset(
    {
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
_USER_FIELDS = frozenset(
    {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}
)
ANNOTATIONS_MAX_BYTES = 256 * 1024


def is_dns1123_label(value: str) -> bool:
    return len(value) <= DNS1123_LABEL_MAX and bool(_DNS1123_LABEL.match(value))


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= DNS1123_SUBDOMAIN_MAX and bool(_DNS1123_SUBDOMAIN.match(value))


def dns1123_label_errors(value: str) -> list[str]:
    """Why `value` is not a DNS-1123 label, in apimachinery's words; [] if it is one."""
    if len(value) > DNS1123_LABEL_MAX:
        return [f"must be no more than {DNS1123_LABEL_MAX} characters"]
    if not _DNS1123_LABEL.match(value):
        return [
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character "
            "(e.g. 'my-name',  or '123-abc', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        ]
    return []


def dns1123_subdomain_errors(value: str) -> list[str]:
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return [f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"]
    if not _DNS1123_SUBDOMAIN.match(value):
        return [
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character "
            "(e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ]
    return []


def qualified_name_errors(key: str) -> list[str]:
    """A label or annotation key: an optional DNS subdomain prefix, '/', and a name."""
    if key.count("/") > 1:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', "
            "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    prefix, slash, name = key.rpartition("/")
    errors: list[str] = []
    if slash and not prefix:
        errors.append("prefix part must be non-empty")
    elif slash:
        errors += [f"prefix part {m}" for m in dns1123_subdomain_errors(prefix)]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > LABEL_VALUE_MAX:
        errors.append(f"name part must be no more than {LABEL_VALUE_MAX} characters")
    elif not _QUALIFIED_NAME.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  "
            "or '123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return errors


def label_value_errors(value: str) -> list[str]:
    if len(value) > LABEL_VALUE_MAX:
        return [f"must be no more than {LABEL_VALUE_MAX} characters"]
    if not _LABEL_VALUE.match(value):
        return [
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character "
            "(e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is "
            "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        ]
    return []


def show(value: Any) -> str:
    """A value as Kubernetes prints it after `Invalid value:`."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return str(value)


def invalid(path: str, value: Any, reason: str) -> FieldError:
    return FieldError(path, f"Invalid value: {show(value)}: {reason}")


def required(path: str) -> FieldError:
    return FieldError(path, "Required value")


def validate_metadata(metadata: Any, namespaced: bool) -> list[FieldError]:
    if not isinstance(metadata, dict):
        return (
            [required("metadata.name")]
            if metadata is None
            else [invalid("metadata", metadata, "must be an object")]
        )
    errors = _name_errors(metadata.get("name"))
    errors += _namespace_errors(metadata.get("namespace"), namespaced)
    errors += _labels_errors(metadata.get("labels"))
    errors += _annotations_errors(metadata.get("annotations"))
    for key in metadata:
        if key not in SYSTEM_FIELDS and key not in _USER_FIELDS:
            errors.append(FieldError(f"metadata.{key}", "field not declared in schema"))
    return errors


def _name_errors(name: Any) -> list[FieldError]:
    if name is None or name == "":
        return [required("metadata.name")]
    if not isinstance(name, str):
        return [invalid("metadata.name", name, "must be a string")]
    return [invalid("metadata.name", name, m) for m in dns1123_subdomain_errors(name)]


def _namespace_errors(namespace: Any, namespaced: bool) -> list[FieldError]:
    if namespace is None or namespace == "":
        return []  # defaulted to "default" by the store
    if not namespaced:
        return [FieldError("metadata.namespace", "Forbidden: not allowed on this type")]
    if not isinstance(namespace, str):
        return [invalid("metadata.namespace", namespace, "must be a string")]
    return [invalid("metadata.namespace", namespace, m) for m in dns1123_label_errors(namespace)]


def _string_map_errors(path: str, value: Any) -> list[FieldError] | None:
    """Type errors of a string map, or None when it is one."""
    if not isinstance(value, dict):
        return [invalid(path, value, f"{path} in body must be of type object")]
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    if bad:
        return [invalid(f"{path}[{k}]", value[k], "must be a string") for k in bad]
    return None


def _labels_errors(labels: Any) -> list[FieldError]:
    if labels is None:
        return []
    type_errors = _string_map_errors("metadata.labels", labels)
    if type_errors is not None:
        return type_errors
    errors: list[FieldError] = []
    for key, value in labels.items():
        errors += [invalid("metadata.labels", key, m) for m in qualified_name_errors(key)]
        errors += [invalid("metadata.labels", value, m) for m in label_value_errors(value)]
    return errors


def _annotations_errors(annotations: Any) -> list[FieldError]:
    if annotations is None:
        return []
    type_errors = _string_map_errors("metadata.annotations", annotations)
    if type_errors is not None:
        return type_errors
    errors: list[FieldError] = []
    for key in annotations:
        errors += [invalid("metadata.annotations", key, m) for m in qualified_name_errors(key)]
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        errors.append(
            FieldError(
                "metadata.annotations",
                f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes",
            )
        )
    return errors
