"""Sanitizing: make provider-controlled data safe to store in MongoDB/FerretDB and to publish.

What a provider returns (a ``usage`` object, an error message, raw response fields) is stored in the task,
published in events and returned by the HTTP API. Stored unchecked, some of it makes the database refuse
the whole document, and a job that retries the write crash-loops:

- a key starting with ``$`` or containing ``.`` is refused (operators and dotted paths), an empty key or one
  with NUL cannot be written (BSON keys are NUL-terminated C strings);
- a string with a lone UTF-16 surrogate ("\\ud800", from a JSON escape) cannot be encoded as UTF-8, which
  BSON requires; NUL inside strings is refused by FerretDB's SQL backends;
- an integer beyond 64 bits has no BSON type; NaN and infinities are not JSON;
- a 17 MB message or a 10,000-item list exceeds the 16 MiB BSON document limit or wastes memory in every
  event and answer; deep nesting exceeds the server's nesting limit and recursion limits.

:func:`clean` returns a bounded, JSON- and BSON-compatible copy of any value; :func:`clean_text` makes an
error message safe; :func:`has_lone_surrogate` lets request validation refuse such input up front. All
three cut long strings *before* any other work on them, so a 17 MB input costs little more than a 2 KB one.

Sanitizing does not remove credentials: combine with :class:`imaged.redact.Redactor`, e.g.
``redactor.value(clean(usage))`` and ``redactor.text(clean_text(message))`` (cleaning first bounds the work
of redaction; redaction only replaces values of 6 characters or more, and short label values, by ``***``, so
the size grows by a few bytes at most).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

__all__ = [
    "DROPPED_KEYS",
    "MAX_KEY_CHARS",
    "TOO_DEEP",
    "TRUNCATED",
    "clean",
    "clean_text",
    "has_lone_surrogate",
    "json_size",
]

#: Appended to a string that was cut (the result, marker included, is at most ``max_str`` characters).
TRUNCATED = "…[truncated]"
#: Replaces a container nested deeper than ``max_depth``.
TOO_DEEP = "…[nested too deep]"
#: Key added to a dict that had more than ``max_items`` entries; its value is how many were dropped.
DROPPED_KEYS = "_dropped_keys"
#: Keys are cut to this many characters (a key is a name, not data; long keys cost memory in every index
#: and document).
MAX_KEY_CHARS = 128
#: ``max_depth`` is clamped to this: cleaning recurses once per level.
_DEPTH_CEILING = 100
_INT64 = (-(2**63), 2**63 - 1)  # BSON has no larger integer type

_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# C0 and C1 control characters except tab and newline (handled separately), and DEL.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]+")


def _dropped_items(n: int) -> str:
    return f"…[{n} more items]"


def _too_large(max_bytes: int) -> str:
    return f"…[dropped: larger than {max_bytes} bytes]"


def json_size(value: Any) -> int:
    """The size in bytes of ``value`` as UTF-8 JSON (``json.dumps(value, ensure_ascii=False)``)."""
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass"))


# ------------------------------------------------------------------------------------------------ strings


def _fix_surrogates(s: str) -> str:
    """Join surrogate pairs into their character and replace lone surrogates by U+FFFD.

    A Python string can hold surrogate code points (``json.loads('"\\ud800"')``), which UTF-8 and therefore
    BSON cannot encode. They are the only code points UTF-8 cannot encode.
    """
    if s.isascii() or not _SURROGATE_RE.search(s):
        return s
    return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _cut(s: str, limit: int) -> str:
    """``s`` cut to at most ``limit`` characters, ending with :data:`TRUNCATED` if it was cut."""
    if len(s) <= limit:
        return s
    if limit <= len(TRUNCATED):
        return s[:limit]
    return s[: limit - len(TRUNCATED)] + TRUNCATED


def _clean_str(s: str, max_str: int) -> str:
    """Cut to ``max_str`` first (cheap on any size), then fix surrogates and remove NUL."""
    s = _cut(_as_str(s), max_str)
    s = _fix_surrogates(s)
    return s.replace("\x00", "") if "\x00" in s else s


def _as_str(value: Any) -> str:
    """A plain ``str``: strings as they are (a subclass's text, not its ``__str__``), else :func:`_safe_str`."""
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    return _safe_str(value)


def _safe_str(value: Any) -> str:
    """``str(value)``, or the type's name if that fails (a broken ``__str__`` must not break a job)."""
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - any failure of foreign code gives the placeholder
        return f"<{type(value).__name__}>"


def _bytes_text(value: bytes | bytearray | memoryview, max_chars: int) -> str:
    """Bytes as text (UTF-8, invalid sequences replaced), decoding no more than needed."""
    limit = max_chars * 4 + 4  # a character takes at most 4 bytes
    head = bytes(value[:limit])
    text = head.decode("utf-8", "replace")
    return text + TRUNCATED if len(value) > limit else text


# ------------------------------------------------------------------------------------------------- clean


@dataclass(frozen=True)
class _Limits:
    max_depth: int
    max_items: int
    max_str: int
    budget: int  # approximate output bytes after which containers stop taking entries


class _Cleaner:
    """One pass of :func:`clean`; records what it produced so that a next pass can shrink the right limit."""

    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.spent = 0
        self.longest_str = 0
        self.widest = 0
        self.deepest = 0

    def value(self, v: Any, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            self.spent += 5
            return v
        if isinstance(v, int):
            self.spent += 8
            if _INT64[0] <= v <= _INT64[1]:
                return int(v)
            return self.string(_int_text(v))
        if isinstance(v, float):
            self.spent += 8
            return float(v) if math.isfinite(v) else None
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, bytes | bytearray | memoryview):
            return self.string(_bytes_text(v, self.limits.max_str))
        if isinstance(v, Mapping | list | tuple | set | frozenset):
            if depth > self.limits.max_depth:
                return self.string(TOO_DEEP)
            self.deepest = max(self.deepest, depth)
            if isinstance(v, Mapping):
                return self.mapping(v, depth)
            return self.sequence(v, depth)
        return self.string(_safe_str(v))

    def string(self, s: str) -> str:
        s = _clean_str(s, self.limits.max_str)
        self.longest_str = max(self.longest_str, len(s))
        self.spent += len(s) + 2
        return s

    def sequence(self, v: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any], depth: int) -> list[Any]:
        out: list[Any] = []
        self.spent += 2
        for item in islice(v, self.limits.max_items):
            if self.spent > self.limits.budget:
                break
            out.append(self.value(item, depth + 1))
            self.spent += 2
        self.widest = max(self.widest, len(out))
        if len(out) < len(v):
            out.append(self.string(_dropped_items(len(v) - len(out))))
        return out

    def mapping(self, v: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        self.spent += 2
        entries = list(islice(v.items(), self.limits.max_items))
        names = _plain_keys([key for key, _ in entries])
        out: dict[str, Any] = {}
        for name, (_, item) in zip(names, entries, strict=True):
            if self.spent > self.limits.budget:
                break
            self.spent += len(name) + 6
            out[name] = self.value(item, depth + 1)
        self.widest = max(self.widest, len(out))
        if len(out) < len(v):
            out[_unique(DROPPED_KEYS, out)] = len(v) - len(out)
        return out


def _int_text(v: int) -> str:
    try:
        return str(v)
    except ValueError:  # more digits than int-to-str conversion allows
        return f"<int of {v.bit_length()} bits>"


def _plain_key(key: Any) -> str:
    """A key MongoDB accepts: a non-empty string without NUL or ".", not starting with "$", at most
    :data:`MAX_KEY_CHARS` characters. Offending characters become "_"."""
    name = _fix_surrogates(_as_str(key)[: MAX_KEY_CHARS * 2])
    if "\x00" in name or "." in name:
        name = name.replace("\x00", "_").replace(".", "_")
    if name.startswith("$"):
        name = "_" + name[1:]
    return name[:MAX_KEY_CHARS] or "_"


def _unique(name: str, taken: Container[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... (within :data:`MAX_KEY_CHARS`) if taken."""
    if name not in taken:
        return name
    n = 2
    while True:
        suffix = f"_{n}"
        candidate = name[: MAX_KEY_CHARS - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def _plain_keys(keys: list[Any]) -> list[str]:
    """Plain names for ``keys``, in order, all distinct. Keys that were already plain keep their name;
    renamed ones give way to them and take a suffix ("a.b" next to "a_b" becomes "a_b_2")."""
    names = [_plain_key(key) for key in keys]
    kept = {name for key, name in zip(keys, names, strict=True) if type(key) is str and key == name}
    taken: set[str] = set(kept)
    result: list[str] = []
    for key, name in zip(keys, names, strict=True):
        if not (type(key) is str and key == name):
            name = _unique(name, taken)
            taken.add(name)
        result.append(name)
    return result


def clean(
    value: Any, *, max_depth: int = 6, max_items: int = 100, max_str: int = 2000, max_bytes: int = 16384
) -> Any:
    """A JSON- and BSON-compatible, bounded copy of ``value`` (the input is not modified).

    The result is made of dict (str keys), list, str, int (64-bit), finite float, bool and None, and:

    - **dict keys** are plain names: not empty, no NUL, no ".", no leading "$" (offending characters become
      "_"), surrogates fixed, at most :data:`MAX_KEY_CHARS` characters, non-string keys converted with
      ``str()``; names stay unique (a renamed key that collides takes a suffix "_2", "_3"...) —
      MongoDB/FerretDB refuse the others (operators, dotted paths, C-string keys);
    - **strings** are cut to ``max_str`` characters (ending in :data:`TRUNCATED`), *then* lone surrogates
      become U+FFFD (a valid pair is joined) and NUL is removed — BSON strings must be UTF-8, FerretDB's SQL
      backends refuse NUL;
    - **dicts and lists** keep their first ``max_items`` entries; a dict then gets the key
      :data:`DROPPED_KEYS` with the number dropped, a list a last item "…[N more items]" — memory, and the
      16 MiB document limit;
    - **containers nested deeper than** ``max_depth`` (the top-level container is level 1) become the string
      :data:`TOO_DEEP` — the server's nesting limit, and recursion here (``max_depth`` is clamped to 100);
    - **other types**: tuples and sets become lists; bytes are decoded as UTF-8 (invalid sequences
      replaced); NaN and infinities become None (not JSON); integers beyond 64 bits become strings (no BSON
      type); anything else becomes ``str(value)`` (or "<TypeName>" if that fails), cleaned as a string;
    - **the whole** is at most ``max_bytes`` bytes as UTF-8 JSON (:func:`json_size`): if it is larger, the
      largest parts are reduced and the copy made again — first strings are shortened, then containers
      narrowed, then nesting cut; if it still does not fit, the result is the string
      "…[dropped: larger than N bytes]". Work is bounded too: a container stops taking entries once about
      twice ``max_bytes`` has been produced, so a huge input costs no more than a small one.

    Raises ValueError for negative limits or ``max_bytes`` below 64.
    """
    if min(max_depth, max_items, max_str) < 0 or max_bytes < 64:
        raise ValueError("limits must not be negative, and max_bytes at least 64")
    limits = _Limits(min(max_depth, _DEPTH_CEILING), max_items, max_str, budget=2 * max_bytes)
    for _ in range(16):
        cleaner = _Cleaner(limits)
        result = cleaner.value(value, 1)
        size = json_size(result)
        if size <= max_bytes:
            return result
        ratio = max_bytes / size
        if cleaner.longest_str > 32:
            limits = replace(limits, max_str=max(32, int(min(limits.max_str, cleaner.longest_str) * ratio)))
        elif cleaner.widest > 4:
            limits = replace(limits, max_items=max(4, int(min(limits.max_items, cleaner.widest) * ratio)))
        elif cleaner.deepest > 1:
            limits = replace(limits, max_depth=cleaner.deepest - 1)
        else:
            break
    marker = _too_large(max_bytes)
    return marker if json_size(marker) <= max_bytes else ""


# -------------------------------------------------------------------------------------------- clean_text


def clean_text(s: Any, max_chars: int = 2000) -> str:
    """An error message safe to store, publish and log: a ``str`` of at most ``max_chars`` characters.

    ``s`` is coerced to ``str`` (bytes decoded as UTF-8 with replacement; other objects with ``str()``, or
    "<TypeName>" if that fails); it is cut early (before any other work) and then: lone surrogates become
    U+FFFD, NUL is removed, "\\r\\n" and "\\r" become "\\n", U+2028/U+2029 become "\\n", and every run of other
    control characters (C0 except tab and newline, DEL, C1 — terminal escapes, form feeds) becomes one space.
    A text that was cut ends with :data:`TRUNCATED`.
    """
    if max_chars < 0:
        raise ValueError("max_chars must not be negative")
    text = _bytes_text(s, max_chars) if isinstance(s, bytes | bytearray | memoryview) else _as_str(s)
    # Only the start is worked on: a little more than max_chars, because collapsing control characters and
    # CRLF shortens the text; what lies beyond could not be shown anyway. A 17 MB text costs a slice.
    early = 4 * max_chars + 16
    cut = len(text) > early
    text = _fix_surrogates(text[:early])
    if "\x00" in text:
        text = text.replace("\x00", "")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    text = _CONTROL_RE.sub(" ", text)
    if not cut and len(text) <= max_chars:
        return text
    keep = min(len(text), max(0, max_chars - len(TRUNCATED)))
    return (text[:keep] + TRUNCATED)[:max_chars]


# ------------------------------------------------------------------------------------- has_lone_surrogate


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` — itself, or inside nested dicts, lists, tuples and sets, keys
    included — holds a surrogate code point (U+D800-U+DFFF).

    Such a string cannot be encoded as UTF-8 (so not stored in BSON). ``json.loads`` joins a valid escaped
    pair ("\\ud83d\\ude00") into one character, so in parsed input every surrogate left is a lone one. The
    walk is iterative and visits each container once (no recursion limit, cycles are fine).
    """
    stack: list[Any] = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE_RE.search(item):
                return True
        elif isinstance(item, Mapping | list | tuple | set | frozenset):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
    return False
