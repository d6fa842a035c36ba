"""RE2 patterns, as Envoy's `safe_regex` takes them, run on Python's `re`.

Envoy matches with RE2, whose syntax is close to Python's but not equal. A
pattern is checked and translated once, at compile time: constructs RE2 lacks
(backreferences, lookaround, atomic groups, possessive quantifiers,
conditionals) are rejected, because Envoy would reject them too; RE2 spellings
Python lacks are translated (`\\z`, `(?<name>`); RE2 features Python cannot
express (`\\p{..}`, `\\Q..\\E`, `[[:alpha:]]`, `(?U)`) are rejected rather than
half-understood. Patterns are compiled as bytes patterns, so `\\d \\w \\s` are
ASCII as in RE2, and matching runs on the request's bytes without decoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from pilotfish.proxy.routing.errors import RouteConfigError

RE2_MAX_REPEAT = 1000  # RE2 refuses {n,m} counts above this
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_NAMED_GROUP = re.compile(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>")
_FLAGS = re.compile(r"\(\?([a-zA-Z-]+)[:)]")
_UNSUPPORTED_GROUPS = {
    "(?=": "lookahead",
    "(?!": "negative lookahead",
    "(?<=": "lookbehind",
    "(?<!": "negative lookbehind",
    "(?>": "atomic groups",
    "(?#": "comments",
    "(?(": "conditionals",
    "(?P=": "backreferences",
}


def compile_re2(pattern: str, path: str) -> re.Pattern[bytes]:
    """A compiled bytes pattern meaning what `pattern` means to RE2; use `.fullmatch`."""
    try:
        return re.compile(_translate(pattern, path).encode("utf-8"))
    except re.error as e:
        raise RouteConfigError(path, f"invalid regex {pattern!r}: {e}") from None


def compile_substitution(
    regex: re.Pattern[bytes], substitution: str, path: str
) -> Callable[[bytes], bytes]:
    """Envoy's `regex_rewrite`: every match replaced, `\\N` naming capture group N
    (RE2's rewrite syntax: `\\0`..`\\9`, `\\\\` for a backslash, nothing else)."""
    template, i = [], 0
    while i < len(substitution):
        ch = substitution[i]
        if ch != "\\":
            template.append(ch)
            i += 1
            continue
        nxt = substitution[i + 1 : i + 2]
        if nxt == "\\":
            template.append("\\\\")
        elif nxt.isdigit():
            if int(nxt) > regex.groups:
                groups = regex.groups
                reason = (
                    f"substitution {substitution!r} uses \\{nxt}, the regex has {groups} groups"
                )
                raise RouteConfigError(path, reason)
            template.append(f"\\g<{nxt}>")
        else:
            raise RouteConfigError(path, f"invalid substitution {substitution!r}: bad escape")
        i += 2
    return partial(regex.sub, "".join(template).encode("utf-8"))


def _translate(pattern: str, path: str) -> str:
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(_escape(pattern[i : i + 2], in_class, pattern, path))
            i += 2
        elif in_class:
            i, in_class = _class_char(pattern, i, out, path)
        elif ch == "[":
            i, in_class = _open_class(pattern, i, out)
        elif ch == "(":
            i = _group(pattern, i, out, path)
        elif ch == "{" and (m := _REPEAT.match(pattern, i)):
            _check_repeat(m, pattern, path)
            out.append(m.group(0))
            i = m.end()
        else:
            if ch == "+" and i and pattern[i - 1] in "*+?}" and not _escaped(pattern, i - 1):
                raise _unsupported(pattern, "possessive quantifiers", path)
            out.append(ch)
            i += 1
    return "".join(out)


def _escape(seq: str, in_class: bool, pattern: str, path: str) -> str:
    if len(seq) < 2:
        raise RouteConfigError(path, f"invalid regex {pattern!r}: trailing backslash")
    esc = seq[1]
    if esc in "pPQEC":
        raise _not_here(pattern, f"\\{esc}", path)
    if not in_class and esc in "123456789":
        raise _unsupported(pattern, "backreferences", path)
    if esc == "Z":
        raise RouteConfigError(path, f"invalid regex {pattern!r}: RE2 has no \\Z (use \\z)")
    return "\\Z" if esc == "z" else seq


def _open_class(pattern: str, i: int, out: list[str]) -> tuple[int, bool]:
    """`[`, `[^`, and a `]` right after them, which is a literal in both dialects."""
    j = i + 1 + (pattern[i + 1 : i + 2] == "^")
    if pattern[j : j + 1] == "]":
        j += 1
    out.append(pattern[i:j].replace("]", "\\]"))
    return j, True


def _class_char(pattern: str, i: int, out: list[str], path: str) -> tuple[int, bool]:
    ch = pattern[i]
    if ch == "]":
        out.append(ch)
        return i + 1, False
    if ch == "[":
        if pattern.startswith("[:", i):
            raise _not_here(pattern, "POSIX classes like [:alpha:]", path)
        out.append("\\[")  # a literal to RE2; Python would warn of nested sets
        return i + 1, True
    out.append(ch)
    return i + 1, True


def _group(pattern: str, i: int, out: list[str], path: str) -> int:
    for opening, what in _UNSUPPORTED_GROUPS.items():
        if pattern.startswith(opening, i):
            raise _unsupported(pattern, what, path)
    if m := _NAMED_GROUP.match(pattern, i):
        out.append(f"(?P<{m.group(1)}>")
        return m.end()
    if (m := _FLAGS.match(pattern, i)) and set(m.group(1)) - set("imsU-"):
        raise _unsupported(pattern, f"the flags {m.group(1)!r}", path)
    if m and "U" in m.group(1):
        raise _not_here(pattern, "the U (ungreedy) flag", path)
    out.append("(")
    return i + 1


def _check_repeat(m: re.Match[str], pattern: str, path: str) -> None:
    counts = [int(g) for g in m.groups() if g]
    if any(c > RE2_MAX_REPEAT for c in counts):
        reason = f"invalid regex {pattern!r}: repeat count above {RE2_MAX_REPEAT}"
        raise RouteConfigError(path, reason)


def _escaped(pattern: str, i: int) -> bool:
    backslashes = len(pattern[:i]) - len(pattern[:i].rstrip("\\"))
    return backslashes % 2 == 1


def _unsupported(pattern: str, what: str, path: str) -> RouteConfigError:
    return RouteConfigError(path, f"invalid regex {pattern!r}: RE2 does not support {what}")


def _not_here(pattern: str, what: str, path: str) -> RouteConfigError:
    """Valid RE2 that Python's `re` cannot express faithfully."""
    reason = f"invalid regex {pattern!r}: pilotfish does not support {what}, which is RE2 syntax"
    return RouteConfigError(path, reason)
