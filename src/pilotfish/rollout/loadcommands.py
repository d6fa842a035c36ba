"""The load tester's commands, parsed: the `hey` and `curl` command lines
Flagger's load tester runs, read without a shell (pure: text in, a `Load`
out), every bound a command may ask for checked here. loadtester.py runs
them."""

from __future__ import annotations

import base64
import math
import re
import shlex
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from pilotfish.api.gotypes import parse_duration_ns

# Bounds on what one command, and all of them together, may do.
MAX_DURATION_S = 3600.0  # flagger-loadtester's -timeout default: a task runs at most 1h
MAX_CONCURRENCY = 100  # hey's default -c is 50
MAX_RATE = 1000.0  # requests per second of one job, all its workers together
MAX_REQUESTS = 1_000_000
MAX_TIMEOUT_S = 120.0  # per request (hey -t 0, curl without -m)
MAX_BODY = 1 << 20  # request body (-d)
MAX_OUTPUT = 64 * 1024  # answer body kept for curl's output
MAX_REDIRECTS = 10  # Go's client stops at 10; curl -L would go to 50
MAX_RETRIES = 10  # curl --retry


HEY_AGENT = "hey/0.0.1"
CURL_AGENT = "curl/8.5.0"
_OPERATOR = re.compile(r"^[();<>|&]+$")
_HEY_HEADER = re.compile(r"^([\w-]+):\s*(.+)")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
_CTL = re.compile(r"[\x00\r\n]")
REDIRECTS = (301, 302, 303, 307, 308)
CURL_TRANSIENT = (408, 429, 500, 502, 503, 504)


class CommandError(ValueError):
    """A command the load tester will not run, and why (a 400 for the caller)."""


@dataclass(frozen=True)
class Url:
    host: str
    port: int
    target: str  # path and query, as on the request line
    authority: str  # what the Host header says: host, and port when given

    def __str__(self) -> str:
        return f"http://{self.authority}{self.target}"


@dataclass(frozen=True)
class Load:
    """One parsed command: what to send, how often, and what counts as failing."""

    tool: str  # "hey" or "curl"
    url: Url
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout_s: float = 20.0  # per request
    redirects: int = 0  # how many redirects to follow
    keepalive: bool = True
    # hey
    duration_s: float = 0.0  # -z; 0: `requests` requests
    requests: int = 1  # -n
    concurrency: int = 1  # -c
    qps: float = 0.0  # -q, per worker; 0: as fast as MAX_RATE allows
    # curl
    fail_on_error: bool = False  # -f: a status of 400 or more fails the command
    retries: int = 0
    retry_delay_s: float = 0.0  # 0: 1s, doubling
    retry_refused: bool = False
    show_headers: bool = False  # -i
    keep_body: bool = True  # no -o
    write_out: str = ""  # -w; %{http_code} is filled in

    @property
    def worker_rate(self) -> float:
        return self.qps or MAX_RATE / self.concurrency

    @property
    def time_limit_s(self) -> float:
        return min(self.duration_s or MAX_DURATION_S, MAX_DURATION_S)


# -- parsing: pure ------------------------------------------------------------------


def parse_command(command: str) -> Load:
    """A `hey` or `curl` command line; CommandError says what is wrong with it."""
    words = split_words(command)
    tool = words[0].rsplit("/", 1)[-1]
    if tool == "hey":
        return _bounded(parse_hey(words[1:]))
    if tool == "curl":
        return _bounded(parse_curl(words[1:]))
    raise CommandError(
        f'"{words[0]}" is not built in: the load tester runs hey and curl commands, '
        "in-process, with no shell"
    )


def split_words(command: str) -> list[str]:
    """The words of a command as a shell splits them; pipes, redirections,
    `;`, `&&` and subshells are refused, since no shell runs them."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:
        raise CommandError(f"cannot split the command: {e}") from e
    operators = [t for t in tokens if _OPERATOR.match(t)]
    if operators:
        raise CommandError(
            f'"{operators[0]}": shell operators (pipes, redirections, ;, &&) are not '
            "supported; the load tester runs one hey or curl command, with no shell"
        )
    if not tokens:
        raise CommandError("the command is empty")
    return shlex.split(command)


# hey's flags (rakyll/hey), parsed as Go's flag package does.
_HEY_FLAGS = {
    "n": "int",
    "c": "int",
    "q": "float",
    "z": "duration",
    "t": "int",
    "m": "str",
    "H": "list",
    "d": "str",
    "A": "str",
    "T": "str",
    "a": "str",
    "U": "str",
    "o": "str",
    "host": "str",
    "cpus": "int",
    "disable-compression": "bool",
    "disable-keepalive": "bool",
    "disable-redirects": "bool",
}
_HEY_REFUSED = {
    "D": "reads the body from a file",
    "x": "sends through a proxy",
    "h2": "speaks HTTP/2",
    "h": "is deprecated in hey; use -H",
}


def parse_hey(args: list[str]) -> Load:
    flags, rest = go_flags("hey", args, _HEY_FLAGS, _HEY_REFUSED)
    url = _only_url("hey", rest)
    n, c = _int(flags, "n", 200), _int(flags, "c", 50)
    duration = parse_duration_ns(flags["z"][-1]) / 1e9 if "z" in flags else 0.0
    if duration > 0 and c <= 0:
        raise CommandError("hey: -c cannot be smaller than 1.")
    if duration <= 0 and (n <= 0 or c <= 0):
        raise CommandError("hey: -n and -c cannot be smaller than 1.")
    if duration <= 0 and n < c:
        raise CommandError("hey: -n cannot be less than -c.")
    if flags.get("o", [""])[-1] not in ("", "csv"):
        raise CommandError('hey: -o: "csv" is the only supported alternative')
    timeout = _int(flags, "t", 20)
    return Load(
        tool="hey",
        url=url,
        method=_last(flags, "m", "GET").upper(),
        headers=_hey_headers(flags, url),
        body=_last(flags, "d", "").encode(),
        timeout_s=float(timeout) if timeout > 0 else MAX_TIMEOUT_S,
        redirects=0 if _flag(flags, "disable-redirects") else MAX_REDIRECTS,
        keepalive=not _flag(flags, "disable-keepalive"),
        duration_s=max(duration, 0.0),
        requests=n,
        concurrency=c,
        qps=float(_last(flags, "q", "0")),
    )


def _hey_headers(flags: Mapping[str, list[str]], url: Url) -> tuple[tuple[str, str], ...]:
    """hey's order of precedence: Content-Type (-T, text/html), -H, -A, -a,
    -host, then the User-Agent with hey's own name appended."""
    headers = {"content-type": ("Content-Type", _last(flags, "T", "text/html"))}
    for text in flags.get("H", []):
        match = _HEY_HEADER.match(text)
        if match is None:
            raise CommandError(f"hey: could not parse the provided input; input = {text}")
        headers[match[1].lower()] = (match[1], match[2])
    if _last(flags, "A", ""):
        headers["accept"] = ("Accept", _last(flags, "A", ""))
    if _last(flags, "a", ""):
        headers["authorization"] = ("Authorization", _basic(_last(flags, "a", ""), "hey: -a"))
    headers["host"] = ("Host", _last(flags, "host", "") or url.authority)
    agent = _last(flags, "U", "") or headers.get("user-agent", ("", ""))[1]
    headers["user-agent"] = ("User-Agent", f"{agent} {HEY_AGENT}" if agent else HEY_AGENT)
    return tuple(headers.values())


def go_flags(
    tool: str, args: list[str], known: Mapping[str, str], refused: Mapping[str, str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Go's flag package: `-name value`, `-name=value`, `--name`, booleans
    without a value; the first word that is no flag ends the flags."""
    found: dict[str, list[str]] = {}
    words = iter(args)
    for word in words:
        if word == "--":
            return found, list(words)
        if not word.startswith("-") or word == "-":
            return found, [word, *words]
        name, has_value, value = word.lstrip("-").partition("=")
        if name in refused:
            raise CommandError(f"{tool}: -{name} is not supported: it {refused[name]}")
        kind = known.get(name)
        if kind is None:
            raise CommandError(f"{tool}: flag provided but not defined: -{name}")
        if not has_value:
            value = "true" if kind == "bool" else _next(words, f"{tool}: -{name}")
        found.setdefault(name, []).append(_go_value(tool, name, kind, value))
    return found, []


def _go_value(tool: str, name: str, kind: str, value: str) -> str:
    """The value checked as Go would parse it, kept as text."""
    try:
        if kind == "int":
            int(value, 0)
        elif kind == "float":
            _finite(value)
        elif kind == "duration":
            parse_duration_ns(value)
        elif kind == "bool" and value.lower() not in ("1", "t", "true", "0", "f", "false"):
            raise ValueError(value)
    except ValueError:
        raise CommandError(f'{tool}: invalid value "{value}" for flag -{name}') from None
    return value


# curl's options: short letter -> long name; which take a value.
_CURL_SHORT = {
    "X": "request",
    "H": "header",
    "d": "data",
    "m": "max-time",
    "o": "output",
    "w": "write-out",
    "A": "user-agent",
    "u": "user",
    "e": "referer",
    "s": "silent",
    "S": "show-error",
    "f": "fail",
    "L": "location",
    "k": "insecure",
    "v": "verbose",
    "i": "include",
    "I": "head",
}
_CURL_VALUES = frozenset(
    {
        *("request", "header", "data", "data-raw", "data-binary", "data-ascii", "json"),
        *("max-time", "connect-timeout", "output", "write-out", "user-agent", "user"),
        *("referer", "retry", "retry-delay", "max-redirs", "url"),
    }
)
# Switches that change nothing here are accepted: -s, -S, -v (what curl
# prints), -k (no TLS), --compressed, --http1.1 (what this client does anyway).
_CURL_SWITCHES = frozenset(
    {
        *("silent", "show-error", "fail", "fail-with-body", "location", "insecure"),
        *("verbose", "include", "head", "compressed", "http1.1", "retry-connrefused"),
        "no-keepalive",
    }
)


def parse_curl(args: list[str]) -> Load:
    options, urls = curl_options(args)
    if len(urls) != 1:
        raise CommandError(f"curl: {'no URL given' if not urls else 'one URL at a time, please'}")
    url = parse_url(urls[0])
    body = _curl_body(options)
    max_time = float(_last(options, "max-time", "0"))
    return Load(
        tool="curl",
        url=url,
        method=_curl_method(options, body),
        headers=_curl_headers(options, url, body),
        body=body,
        timeout_s=max_time if max_time > 0 else MAX_TIMEOUT_S,
        redirects=_curl_redirects(options),
        keepalive="no-keepalive" not in options,
        fail_on_error=bool({"fail", "fail-with-body"} & options.keys()),
        retries=int(_last(options, "retry", "0")),
        retry_delay_s=float(_last(options, "retry-delay", "0")),
        retry_refused="retry-connrefused" in options,
        show_headers="include" in options,
        keep_body="output" not in options,
        write_out=_last(options, "write-out", ""),
    )


def curl_options(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """curl's command line: `--long value`, `-x value`, `-xvalue`, and short
    switches run together (`-sSf`); every word that is no option is a URL."""
    options: dict[str, list[str]] = {}
    urls: list[str] = []
    words = iter(args)
    for word in words:
        if word.startswith("--") and len(word) > 2:
            _curl_long(word[2:], words, options)
        elif word.startswith("-") and len(word) > 1:
            _curl_short(word[1:], words, options)
        else:
            urls.append(word)
    urls += options.pop("url", [])
    return options, urls


def _curl_long(name: str, words: Iterator[str], options: dict[str, list[str]]) -> None:
    if name in _CURL_SWITCHES:
        options.setdefault(name, []).append("")
    elif name in _CURL_VALUES:
        options.setdefault(name, []).append(_curl_value(name, _next(words, f"curl: --{name}")))
    else:
        raise CommandError(f"curl: option --{name} is not supported by the built-in curl")


def _curl_short(letters: str, words: Iterator[str], options: dict[str, list[str]]) -> None:
    for i, letter in enumerate(letters):
        name = _CURL_SHORT.get(letter)
        if name is None:
            raise CommandError(f"curl: option -{letter} is not supported by the built-in curl")
        if name in _CURL_SWITCHES:
            options.setdefault(name, []).append("")
            continue
        value = letters[i + 1 :] or _next(words, f"curl: -{letter}")
        options.setdefault(name, []).append(_curl_value(name, value))
        return


def _finite(text: str) -> float:
    """A number; NaN and infinity are not (with -q NaN no bound on the rate held:
    every comparison with NaN is false, so the pacing never waited)."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _curl_value(name: str, value: str) -> str:
    if name in ("data", "data-binary", "data-ascii", "json") and value.startswith("@"):
        raise CommandError(f"curl: --{name} {value}: reading files is not supported")
    numeric = ("max-time", "connect-timeout", "retry", "retry-delay")
    if name in (*numeric, "max-redirs"):
        try:
            number = _finite(value)
        except ValueError:
            raise CommandError(f'curl: --{name}: "{value}" is not a number') from None
        if number < 0 and name != "max-redirs":
            raise CommandError(f"curl: --{name} cannot be negative")
    return value


def _curl_body(options: Mapping[str, list[str]]) -> bytes:
    names = ("data", "data-raw", "data-binary", "data-ascii")
    parts = [value for name in names for value in options.get(name, [])]
    text = "&".join(parts) + "".join(options.get("json", []))
    return text.encode()


def _curl_method(options: Mapping[str, list[str]], body: bytes) -> str:
    if "request" in options:
        return _last(options, "request", "GET").upper()
    if "head" in options:
        return "HEAD"
    return "POST" if body or "json" in options else "GET"


def _curl_headers(
    options: Mapping[str, list[str]], url: Url, body: bytes
) -> tuple[tuple[str, str], ...]:
    headers = {"host": ("Host", url.authority), "user-agent": ("User-Agent", CURL_AGENT)}
    headers["accept"] = ("Accept", "application/json" if "json" in options else "*/*")
    if "json" in options:
        headers["content-type"] = ("Content-Type", "application/json")
    elif body:
        headers["content-type"] = ("Content-Type", "application/x-www-form-urlencoded")
    if "user" in options:
        headers["authorization"] = ("Authorization", _basic(_last(options, "user", ""), "curl: -u"))
    for name, key in (("user-agent", "User-Agent"), ("referer", "Referer")):
        if name in options:
            headers[name] = (key, _last(options, name, ""))
    for text in options.get("header", []):
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise CommandError(f'curl: a header is "Name: value", not "{text}"')
        headers[name.strip().lower()] = (name.strip(), value.strip())
    return tuple(headers.values())


def _curl_redirects(options: Mapping[str, list[str]]) -> int:
    if "location" not in options:
        return 0
    wanted = int(float(_last(options, "max-redirs", str(MAX_REDIRECTS))))
    return MAX_REDIRECTS if wanted < 0 else min(wanted, MAX_REDIRECTS)


def parse_url(text: str) -> Url:
    """An http URL of a mesh service (http:// may be left out)."""
    try:
        parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    except ValueError as e:  # "Invalid IPv6 URL"
        raise CommandError(f"{text}: {e}") from e
    if parts.scheme != "http":
        raise CommandError(
            f"{text}: only http:// URLs of mesh services are supported "
            "(the sidecars add mTLS between them)"
        )
    if parts.username is not None:
        raise CommandError(f"{text}: credentials in the URL are not supported; use -u or -a")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise CommandError(f"{text}: {e}") from e
    if not parts.hostname:
        raise CommandError(f"{text}: the URL has no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Url(parts.hostname, port, target, parts.netloc)


def _bounded(load: Load) -> Load:
    """The load, if it stays within the load tester's bounds."""
    if load.duration_s > MAX_DURATION_S:
        raise CommandError(f"{load.tool}: -z is longer than the limit of {MAX_DURATION_S:.0f}s")
    if load.concurrency > MAX_CONCURRENCY:
        raise CommandError(f"{load.tool}: -c is above the limit of {MAX_CONCURRENCY} workers")
    if load.qps < 0:
        raise CommandError(f"{load.tool}: -q cannot be negative")
    if load.qps * load.concurrency > MAX_RATE:
        raise CommandError(
            f"{load.tool}: -q {load.qps:g} with -c {load.concurrency} is "
            f"{load.qps * load.concurrency:g} requests per second, above the limit of {MAX_RATE:g}"
        )
    if not load.duration_s and load.requests > MAX_REQUESTS:
        raise CommandError(f"{load.tool}: -n is above the limit of {MAX_REQUESTS} requests")
    if len(load.body) > MAX_BODY:
        raise CommandError(f"{load.tool}: the body is larger than {MAX_BODY} bytes")
    if load.retries > MAX_RETRIES:
        raise CommandError(f"{load.tool}: --retry is above the limit of {MAX_RETRIES}")
    _check_framing(load)
    return replace(load, timeout_s=min(load.timeout_s, MAX_TIMEOUT_S))


def _check_framing(load: Load) -> None:
    """The method is an HTTP token and no header holds CR, LF or NUL: what a
    command says must not turn into another request line or header."""
    if not _TOKEN.match(load.method):
        raise CommandError(f"{load.tool}: invalid method {load.method!r}: must be an HTTP token")
    for name, value in load.headers:
        if not _TOKEN.match(name) or _CTL.search(value):
            raise CommandError(f"{load.tool}: invalid header {name!r}: {value!r}")


def _only_url(tool: str, rest: list[str]) -> Url:
    if not rest:
        raise CommandError(f"{tool}: no URL given")
    if len(rest) > 1:
        raise CommandError(f"{tool}: unexpected {rest[1]!r} after the URL (flags go first)")
    return parse_url(rest[0])


def _basic(credentials: str, where: str) -> str:
    user, sep, password = credentials.partition(":")
    if not sep or not user:
        raise CommandError(f'{where}: credentials are "user:password"')
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _next(words: Iterator[str], what: str) -> str:
    value = next(words, None)
    if value is None:
        raise CommandError(f"{what} needs a value")
    return value


def _last(found: Mapping[str, list[str]], name: str, default: str) -> str:
    values = found.get(name)
    return values[-1] if values else default


def _int(found: Mapping[str, list[str]], name: str, default: int) -> int:
    return int(_last(found, name, str(default)), 0)


def _flag(found: Mapping[str, list[str]], name: str) -> bool:
    return _last(found, name, "false").lower() in ("1", "t", "true")
