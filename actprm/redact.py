"""Secrets never reach anything actprm writes or prints: one redaction function for every boundary.

`redact(text)` replaces, in any text about to be written (an answer before it is cached or put in
`raw_output`, an error row, a summary, a log line, the CLI's one-line error):

- every registered secret (`register`): the judge's API key, and the credentials of its
  `--base-url` (`http://user:SECRET@host/v1`, `https://TOKEN@host/v1`, and query values such as
  `?api_key=...`), each also in its percent-encoded and decoded form, wherever they occur (a
  password that is an ordinary word is redacted as a word too); secrets under 4 characters are
  not registered (they would mangle ordinary text, and no real key is that short);
- whatever looks like a credential even when it was never registered: the userinfo of any URL
  (`scheme://user:pass@` -> `scheme://[redacted]@`), `Bearer <token>` and `Basic <token>`;
- the `Authorization: Basic` value a client sends for a URL's `user:pass` (its base64), registered with
  the URL;
- what a judge might make of the API key when told to repeat it (`derived_forms`: reversed, base64, cut
  by a character, either half), matched whatever the case and with any whitespace between characters.

`display_url(url)` is a URL as it may be shown: userinfo and secret-looking query values removed.
The registry is per process: each Ray actor registers what it reads from its own environment.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4

_SECRETS: set[str] = set()
_GUARD = threading.Lock()
_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|pwd|sig|signature|credential|auth", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
_BEARER = re.compile(r"(?P<word>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{4,}")


def _forms(secret: str) -> set[str]:
    return {s for s in (secret, quote(secret, safe=""), unquote(secret)) if len(s) >= MIN_SECRET_CHARS}


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries: its password (or a user name standing alone, which is a token:
    `https://TOKEN@host`), and secret-looking query values (`?api_key=...`)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password or parts.username or ""]
    except ValueError:
        return []
    found += [value for name, value in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_PARAM.search(name)]
    if parts.username is not None and parts.password is not None:  # sent as `Authorization: Basic b64(u:p)`
        for pair in dict.fromkeys([f"{parts.username}:{parts.password}",
                                   f"{unquote(parts.username)}:{unquote(parts.password)}"]):
            found.append(base64.b64encode(pair.encode()).decode())
    return [s for s in found if s]


def register(*secrets: str | None) -> None:
    """Add secrets to this process's registry (each with its URL-encoded and decoded forms)."""
    with _GUARD:
        for secret in secrets:
            if secret:
                _SECRETS.update(_forms(secret))


#: an API key at least this long also has its derived forms redacted (derived_forms)
MIN_DERIVED_CHARS = 12


def derived_forms(key: str) -> list[str]:
    """What a judge told to repeat its key might write instead of the key: reversed, base64 (standard and
    URL-safe, padded or not), all but its first or last character, and either half (each at least 8
    characters). Matched case-insensitively with any whitespace between characters (`_derived_pattern`)."""
    if len(key) < MIN_DERIVED_CHARS:
        return []
    raw = key.encode()
    forms = {key[::-1], key[:-1], key[1:], base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    forms |= {f.rstrip("=") for f in list(forms)}
    half = len(key) // 2
    if half >= 8:
        forms |= {key[:half], key[half:]}
    return sorted(f for f in forms if len(f) >= 8)


def _derived_pattern(form: str) -> re.Pattern:
    return re.compile(r"\s*".join(re.escape(ch) for ch in form), re.IGNORECASE)


_DERIVED: dict[str, re.Pattern] = {}


def register_endpoint(api_key: str | None, base_url: str | None) -> None:
    """Register an endpoint's API key (and its derived forms) and the credentials in its URL."""
    register(api_key, *url_secrets(base_url))
    if api_key:
        with _GUARD:
            for form in [api_key, *derived_forms(api_key)]:
                if len(form) >= MIN_SECRET_CHARS:
                    _DERIVED.setdefault(form, _derived_pattern(form))


def redact(text: str | None, extra: Iterable[str | None] = ()) -> str | None:
    """`text` with every registered secret (and `extra`), URL userinfo and bearer tokens replaced."""
    if not text:
        return text
    with _GUARD:
        secrets = set(_SECRETS)
        derived = sorted(_DERIVED.items(), key=lambda kv: len(kv[0]), reverse=True)
    for secret in extra:
        if secret:
            secrets.update(_forms(secret))
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a secret inside another
        if secret in text:
            text = text.replace(secret, REDACTED)
    for _, pattern in derived:  # the key upper-cased, spaced out, reversed, in base64, cut short
        text = pattern.sub(REDACTED, text)
    if "://" in text:
        text = _USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    if "Bearer" in text or "Basic" in text:
        text = _BEARER.sub(lambda m: m.group("word") + REDACTED, text)
    return text


def display_url(url: str | None) -> str | None:
    """A URL as it may be printed: no userinfo, secret-looking query values replaced."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        if "@" in parts.netloc:
            netloc = f"{REDACTED}@{netloc}"
        query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="[]")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return redact(url)
