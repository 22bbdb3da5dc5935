"""Redaction: remove credentials from any text before it is stored, published or logged.

imaged holds paid provider keys, broker and database passwords and its own signing secrets. Providers, gateways,
proxies and plugins echo credentials back in their error texts, whole or partly masked ("Incorrect API key
provided: sk-abc123***xyz9", "Authorization: Bearer ...", "AccessKey=AKID... Signature=..."). Every such text
passes through one :class:`Redactor` before it reaches a task's error, an HTTP answer, an event or a log line.
It applies, in this order:

1. **Configured secrets, whole** (and percent-encoded), wherever they occur: ``***``.
2. **Key-shaped tokens, configured or not** (case-insensitive): ``Bearer <token>`` / ``Basic <b64>`` when the
   token looks like a credential; ``sk-...`` keys; access key ids (``AKIA``, ``ASIA``, ``AKID``, ``LTAI``); a
   URL's password; and a *label* (a word ending in key, secret, token, signature, sig, password, passwd, pwd,
   authorization or credential(s), optionally followed by "id": ``api_key``, ``OSSAccessKeyId``,
   ``X-Amz-Signature``...) followed by ``=`` or ``:`` and a value, in query strings, JSON and headers. The label
   is kept: ``api_key=***``. A bare value after ``:`` is replaced only when it looks like a credential or the
   label is a strong one, so prose and error codes stay readable ("Invalid key: please check").
3. **Partial echoes of configured secrets** (:meth:`Redactor._partial_echoes`): a token holding 6+ consecutive
   characters of a secret next to a mask (``*``, ``…``, ``•``, ``...``), or 10+ that look random. Without a mask,
   6 shared characters happen by chance (a 32-hex key and an image URL's hex name share one about once in 20,000
   URLs); 10 random-looking ones do not.

Not caught: secrets shorter than :data:`MIN_SECRET_CHARS` (6: replacing "guest" everywhere would wreck text);
masked echoes keeping fewer than 6 characters, unmasked ones fewer than 10; secrets transformed otherwise than
percent-encoding; unlabelled unconfigured random strings; label values split over lines.

Speed: one regular expression whose alternatives start with a literal, possessive quantifiers and lookbehinds:
nothing backtracks, the work is linear (17 MB of ordinary text in about a second). Cut long texts first
(:func:`imaged.sanitize.clean_text`).

Logging: :class:`RedactingFilter` redacts every record; ``imaged.logs.configure_logging`` installs it on the root
*handler* (a logger's filter does not see records of child loggers). It leaves the redacted traceback in
``record.exc_text`` and clears ``record.exc_info``.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["MASK", "MIN_SECRET_CHARS", "RedactingFilter", "Redactor"]

MASK = "***"

#: Configured secrets shorter than this are ignored: replacing a 3-5 character value ("guest", "admin",
#: "1234") everywhere would redact ordinary words and numbers in every message, and so short a value is
#: not a credential worth the name.
MIN_SECRET_CHARS = 6

#: Length of the run of a secret's characters that makes a masked token a partial echo.
PARTIAL_RUN = 6
#: Length of the run of a secret's characters (looking random) that makes an unmasked token a partial echo.
UNMASKED_RUN = 10

#: Key-shaped tokens longer than this are not examined for partial echoes (keys are far shorter; a long
#: run of such characters is base64 data or a path, and scanning it would cost time for nothing).
MAX_TOKEN_CHARS = 1024

# Characters of keys, base64 and masks. "=" only as trailing padding, so that "api_key=abc" is two tokens.
_T = r"A-Za-z0-9_\-+/*.~…•"
# Finds the key-shaped tokens worth examining for partial echoes. Everything that cannot hold one is skipped
# inside the regular expression engine rather than by Python code: tokens of 1-5 characters, words of
# lower-case letters and "-" (optionally capitalized, optionally ending in dots), and non-token text. What
# remains has a digit, an upper-case letter inside, or one of "_+/*.~…•". The last match of a text is
# empty (``\Z``) so that a search never restarts inside skipped text (which would be quadratic).
_TOKEN_RE = re.compile(
    rf"(?:[{_T}]{{1,5}}+(?![{_T}])|[A-Z]?[a-z\-]++\.*+(?![{_T}])|[^{_T}]++)*+(?:([{_T}]++=*+)|\Z)"
)
_RANDOM_SYMBOLS = frozenset("_~+/*=")
_DIGITS = frozenset("0123456789")

# label (= or :) value, for the labels starting with letter {L}: the label's rest, an optional "id", the
# separator, an optional auth scheme, then the value in one of four shapes. Group names end in "_{L}".
_LABEL_TAIL = r"""
    (?P<label_{L}>{REST})(?:[_-]?id)?(?![a-z0-9_])
    \\?["']?[ \t]*(?P<sep_{L}>[:=])[ \t]*
    (?P<lscheme_{L}>{SCHEME})?
    (?:
        \\"(?:{SCHEME})?(?P<ev_{L}>(?:[^"\\\r\n]|\\[^"\r\n])*+)     # escaped JSON: \"value\"
      | "(?:{SCHEME})?(?P<dv_{L}>(?:[^"\\\r\n]|\\.)*+)              # JSON: "value"
      | '(?:{SCHEME})?(?P<qv_{L}>[^'\r\n]*+)                        # Python repr: 'value'
      | (?P<bv_{L}>[^\s"'&,;<>(){}\[\]\\]++)           # query strings, headers: value
    )
"""
_AUTH_SCHEME = r"(?:bearer|basic|digest|token|aws4-hmac-sha256|hmac-sha256)[ \t]+"
_LABELS = {
    "s": "ignature|ig|ecret",
    "p": "assword|asswd|wd",
    "a": "uthorization",
    "c": "redentials?",
    "t": "oken",
    "k": "ey",
}


def _label(letter: str) -> str:
    return (
        _LABEL_TAIL.replace("{L}", letter)
        .replace("{REST}", _LABELS[letter])
        .replace("{SCHEME}", _AUTH_SCHEME)
    )


# All configuration-independent rules in one expression, matched against the text lower-cased (a lower-case
# copy has the same length, see ``_lower``). Every alternative starts with a literal character, so the
# engine skips the positions where none can start without trying them. The match ends where the value
# ends; only the value is replaced.
_RULES = re.compile(
    rf"""
      # Bearer <token> / Basic <base64>, not part of a longer word
      b(?:earer(?<![a-z0-9_]bearer)|asic(?<![a-z0-9_]basic))[ \t]+(?P<scheme>[a-z0-9\-._~+/*]++=*+)
    | s(?:
          # sk-... (OpenAI-style keys, masked or not)
          k-(?<![a-z0-9_\-]sk-)(?P<sk>[a-z0-9\-_*.]{{8,}}+)
        | {_label("s")}
      )
    | a(?:
          # cloud access key ids: AKIA/ASIA (AWS), AKID (Tencent); LTAI (Aliyun) below
          (?:kia|sia|kid)(?<![a-z0-9_\-]....)(?P<akid>[a-z0-9*]{{8,}}+)
        | {_label("a")}
      )
    | ltai(?<![a-z0-9_\-]ltai)(?P<ltai>[a-z0-9*]{{8,}}+)
      # scheme://user:password@host
    | ://[^\s/:@]*+:(?P<url>[^\s/@]++)(?=@)
    | p{_label("p")}
    | c{_label("c")}
    | t{_label("t")}
    | k{_label("k")}
    """,
    re.X,
)
_RULES_ANY_CASE = re.compile(_RULES.pattern, re.X | re.I)
_STRONG_LABELS = frozenset(
    {"secret", "password", "passwd", "pwd", "authorization", "credential", "credentials"}
)
_STRONG_PREFIXES = ("api_", "api-", "access_", "access-", "secret_", "secret-")
_AKID_PREFIXES = frozenset({"AKIA", "ASIA", "AKID", "LTAI"})


def _credential_like(value: str) -> bool:
    """Whether a value after "Bearer", "Basic" or "label:" looks like a credential rather than a word.

    At least 6 characters and: a digit, one of ``_~+/*=``, or a lower-case letter followed by an upper-case
    one (random base64 and camel-case keys); or 20 characters or more.
    """
    value = value.rstrip(".")
    if len(value) < MIN_SECRET_CHARS:
        return False
    if len(value) >= 20:
        return True
    return _looks_random(value)


def _looks_random(run: str) -> bool:
    if any(c in _DIGITS for c in run) and any(c.isalpha() for c in run):
        return True
    if any(c in _RANDOM_SYMBOLS for c in run):
        return True
    return any(a.islower() and b.isupper() for a, b in itertools.pairwise(run))


def _secret_forms(value: str) -> set[str]:
    """A secret and the forms it takes inside URLs."""
    return {value, quote(value, safe=""), quote_plus(value, safe=""), quote(value)}


class Redactor:
    """Removes configured secrets and key-shaped tokens from text. Immutable and thread-safe.

    ``Redactor(secrets)`` takes the secret values (strings); empty ones and ones shorter than
    :data:`MIN_SECRET_CHARS` are ignored. ``Redactor()`` applies only the configuration-independent rules.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= MIN_SECRET_CHARS:
                forms |= _secret_forms(secret)
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets: tuple[str, ...] = tuple(
            sorted((f for f in forms if len(f) >= MIN_SECRET_CHARS), key=lambda f: (-len(f), f))
        )
        # Runs of PARTIAL_RUN characters of every secret, runs of UNMASKED_RUN characters that look random,
        # and the 4-character runs of either (see _partial_echoes).
        grams: set[str] = set()
        long_grams: set[str] = set()
        for secret in self._secrets:
            grams.update(secret[i : i + PARTIAL_RUN] for i in range(len(secret) - PARTIAL_RUN + 1))
            long_grams.update(secret[i : i + UNMASKED_RUN] for i in range(len(secret) - UNMASKED_RUN + 1))
        self._grams: frozenset[str] = frozenset(grams)
        self._long_grams: frozenset[str] = frozenset(g for g in long_grams if _looks_random(g))
        self._quads: frozenset[str] = frozenset(
            g[i : i + 4] for g in grams for i in range(PARTIAL_RUN - 4 + 1)
        )

    def __repr__(self) -> str:  # never shows the secrets
        return f"Redactor({len(self._secrets)} secret forms)"

    # --------------------------------------------------------------------------------------------- text

    def text(self, s: str) -> str:
        """``s`` with every configured secret, partial echo of one and key-shaped token replaced by ``***``."""
        if not s:
            return s
        for secret in self._secrets:
            if secret in s:
                s = s.replace(secret, MASK)
        s = _apply_rules(s)
        if self._grams:
            s = self._partial_echoes(s)
        return s

    def _partial_echoes(self, s: str) -> str:
        """Replace the tokens that carry a run of a configured secret (rule 3 of the module's documentation).

        Speed: a run of 6 characters always holds 4 characters starting at a position of the token divisible
        by 3, so only every third 4-character window is looked up in a set (without a Python-level loop);
        the rare token with a hit is then checked run by run. Tokens that cannot be echoes (short ones,
        lower-case words) are skipped inside the regular expression engine.
        """
        quads = self._quads
        out: list[str] = []
        last = 0
        for m in _TOKEN_RE.finditer(s):
            start, end = m.span(1)
            if start < 0:
                continue
            while end > start and s[end - 1] == ".":
                end -= 1
            n = end - start
            if n < PARTIAL_RUN or n > MAX_TOKEN_CHARS:
                continue
            token = s[start:end]
            # every third 4-character window, looked up without a Python-level loop
            if quads.isdisjoint(map(token.__getitem__, map(slice, range(0, n - 3, 3), range(4, n + 1, 3)))):
                continue
            if self._echoes(token):
                out.append(s[last:start])
                out.append("sk-" + MASK if token.startswith("sk-") else MASK)
                last = end
        if not out:
            return s
        out.append(s[last:])
        return "".join(out)

    def _echoes(self, token: str) -> bool:
        """Whether ``token`` holds a run of a secret that makes it a partial echo (see ``_partial_echoes``)."""
        masked = "*" in token or "…" in token or "•" in token or "..." in token
        size, grams = (PARTIAL_RUN, self._grams) if masked else (UNMASKED_RUN, self._long_grams)
        n = len(token)
        return not grams.isdisjoint(
            map(token.__getitem__, map(slice, range(n - size + 1), range(size, n + 1)))
        )

    # --------------------------------------------------------------------------------------------- value

    def value(self, v: Any) -> Any:
        """``v`` with :meth:`text` applied to every string inside dicts, lists and tuples, keys included.

        Returns new containers (tuples come back as lists; other values unchanged). Shared and cyclic
        containers are handled (each is copied once); nesting depth is not limited by the recursion limit.
        Keys that become equal after redaction are kept apart with a suffix ("***", "***_2").
        """
        if isinstance(v, str):
            return self.text(v)
        if not isinstance(v, dict | list | tuple):
            return v
        copies: dict[int, Any] = {}
        root = self._shell(v, copies)
        stack: list[tuple[Any, Any]] = [(v, root)]
        while stack:
            src, dst = stack.pop()
            items = src.items() if isinstance(src, dict) else enumerate(src)
            for key, item in items:
                if isinstance(item, str):
                    new: Any = self.text(item)
                elif isinstance(item, dict | list | tuple):
                    if id(item) in copies:
                        new = copies[id(item)]
                    else:
                        new = self._shell(item, copies)
                        stack.append((item, new))
                else:
                    new = item
                if isinstance(dst, dict):
                    new_key = self.text(key) if isinstance(key, str) else key
                    if new_key in dst:
                        n = 2
                        while f"{new_key}_{n}" in dst:
                            n += 1
                        new_key = f"{new_key}_{n}"
                    dst[new_key] = new
                else:
                    dst.append(new)
        return root

    @staticmethod
    def _shell(v: Any, copies: dict[int, Any]) -> Any:
        shell: Any = {} if isinstance(v, dict) else []
        copies[id(v)] = shell
        return shell

    # ------------------------------------------------------------------------------------------ settings

    @classmethod
    def from_settings(cls, settings: BaseModel, extra: Iterable[str | SecretStr] = ()) -> Redactor:
        """A redactor of every secret of ``settings`` plus ``extra`` (secrets known elsewhere: plugins).

        Walks ``type(settings).model_fields`` (so settings added later are covered) and takes every
        ``SecretStr``/``SecretBytes`` value, alone or inside lists, tuples, sets, dicts and nested models.
        Of each value it takes: the value itself, unless it is a URL (a URL is not secret, its password is);
        the password of a URL (``amqp://user:password@host``), raw and percent-decoded; and both parts of
        an ``"ACCESS:SECRET"`` pair. Plain ``str`` fields are not secrets and are not taken.
        """
        return cls.from_models([settings], extra)

    @classmethod
    def from_models(cls, models: Iterable[BaseModel], extra: Iterable[str | SecretStr] = ()) -> Redactor:
        """:meth:`from_settings` over several settings objects (the core's and each provider's)."""
        secrets: list[str] = []
        for model in models:
            _collect(model, secrets, depth=0)
        for item in extra:
            raw = item.get_secret_value() if isinstance(item, SecretStr) else item
            if isinstance(raw, str):
                secrets.extend(_secret_parts(raw))
        return cls(secrets)


def _collect(obj: Any, out: list[str], depth: int) -> None:
    if depth > 8:
        return
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            _collect(getattr(obj, name, None), out, depth + 1)
    elif isinstance(obj, SecretStr):
        out.extend(_secret_parts(obj.get_secret_value()))
    elif isinstance(obj, SecretBytes):
        out.extend(_secret_parts(obj.get_secret_value().decode("utf-8", "replace")))
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect(item, out, depth + 1)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            _collect(item, out, depth + 1)


def _secret_parts(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    if "://" in raw:
        try:
            parts = urlsplit(raw)
            password = parts.password
        except ValueError:
            return [raw]
        return [password, unquote(password)] if password else []
    if ":" in raw:
        access, _, secret = raw.partition(":")
        return [raw, access.strip(), secret.strip()]
    return [raw]


def _lower(s: str) -> str | None:
    """``s`` lower-cased, character for character (same length), or None if that cannot be had."""
    low = s.replace("\u0130", "i").lower()  # "İ" is the one character whose lower case is two characters
    return low if len(low) == len(s) else None


def _apply_rules(s: str) -> str:
    """Apply the configuration-independent rules (``_RULES``) to ``s``."""
    low = _lower(s)
    matches = _RULES.finditer(low) if low is not None else _RULES_ANY_CASE.finditer(s)
    out: list[str] = []
    last = 0
    for m in matches:
        span = _value_span(s, m)
        if span is None:
            continue
        start, end = span
        out.append(s[last:start])
        out.append(MASK)
        last = end
    if not out:
        return s
    out.append(s[last:])
    return "".join(out)


def _value_span(s: str, m: re.Match[str]) -> tuple[int, int] | None:
    """The span of ``s`` to replace for a match of ``_RULES``, or None to leave it."""
    kind = m.lastgroup or ""
    if kind == "scheme":
        start, end = m.span(kind)
        if not _credential_like(s[start:end]):
            return None
    elif kind in ("sk", "url"):
        start, end = m.span(kind)
    elif kind in ("akid", "ltai"):
        if s[m.start() : m.start() + 4] not in _AKID_PREFIXES:  # upper case only, as issued
            return None
        start, end = m.span(kind)
    else:  # a label's value: kind is "<shape>_<letter>"
        shape, _, letter = kind.partition("_")
        start, end = m.span(kind)
        value = s[start:end]
        if not value or value == MASK:
            return None
        if shape == "bv" and m.group(f"sep_{letter}") == ":" and m.start(f"lscheme_{letter}") < 0:
            label = s[m.start() : m.end(f"label_{letter}")].lower()
            before = s[max(0, m.start() - 7) : m.start()]
            strong = (label in _STRONG_LABELS or before.lower().endswith(_STRONG_PREFIXES)) and not (
                before[-1:].islower()  # the end of a CamelCase word: an error code ("InvalidPassword: The")
            )
            if not strong and not _credential_like(value):
                return None
    if kind != "url":
        while end > start and s[end - 1] == ".":  # the end of a sentence, not of the value
            end -= 1
    return (start, end) if end > start else None


_STANDARD_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_DROPPED = "<log message dropped: redaction failed>"
_DROPPED_FIELD = "<dropped>"


class RedactingFilter(logging.Filter):
    """Redacts log records in place, so every handler after it sees only redacted text.

    - the message: formatted once with ``record.getMessage()``, redacted, stored in ``record.msg`` (and
      ``record.message`` if a formatter already set it), with ``record.args`` cleared;
    - attributes added with ``extra=``: strings are redacted, dicts/lists/tuples redacted inside (see
      :meth:`Redactor.value`), other objects replaced by their redacted ``str()``; numbers, bools and None
      are kept;
    - the exception: ``record.exc_info`` is formatted to text (traceback, chained exceptions and the
      exception messages), redacted into ``record.exc_text``, and cleared; an ``exc_text`` an earlier
      handler formatted is redacted too; ``record.stack_info`` likewise.

    If redaction itself fails (an ``extra`` object whose ``str()`` raises), the message, the exception and
    every extra attribute are replaced by fixed texts rather than logged unredacted. The filter never
    raises and never drops a record. Install it on a handler (see the module's documentation).
    """

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # noqa: BLE001 - a logging call must not fail, nor fall back to the raw text
            record.msg, record.args = _DROPPED, None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            for key in list(record.__dict__):
                if key not in _STANDARD_RECORD_ATTRS and not key.startswith("_"):
                    record.__dict__[key] = _DROPPED_FIELD
            if "message" in record.__dict__:
                record.message = _DROPPED
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        redact = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep what there is, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact.text(message), None
        if isinstance(record.__dict__.get("message"), str):
            record.message = record.msg
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_RECORD_ATTRS or key.startswith("_"):
                continue
            if isinstance(value, str | dict | list | tuple):
                record.__dict__[key] = redact.value(value)
            elif value is not None and not isinstance(value, int | float):
                record.__dict__[key] = redact.text(str(value))
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = self._formatter.formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact.text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact.text(record.stack_info)
