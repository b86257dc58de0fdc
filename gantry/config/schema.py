"""Generic, table-driven reading of config objects.

Each config dataclass declares its fields with :func:`spec` (JSON key, value kind, one-line doc,
default). That declaration is the single table that drives validation (:func:`read_object`),
serialisation (:func:`to_json`) and the generated reference (``gantry.config.reference``).
Cross-field rules are registered with :func:`rule` and documented from their text as well.

Readers never stop at the first problem: they record an issue, return :data:`INVALID` in place of
the bad value and carry on, so one run reports every problem of a file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from .errors import ConfigIssue

COMMENT_PREFIX = "//"
_META = "gantry"


class _Invalid:
    """Placeholder for a value that failed validation (its issue is already recorded)."""

    _instance: "_Invalid | None" = None

    def __new__(cls) -> "_Invalid":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


def valid(*values: Any) -> bool:
    """True when none of ``values`` is :data:`INVALID`."""
    return all(v is not INVALID for v in values)


def show(value: Any, limit: int = 60) -> str:
    """Render a user-supplied value for an error message (JSON-like, truncated)."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        # Non-string keys or self-referencing YAML anchors: fall back to Python's repr,
        # which itself refuses integers of more than 4300 digits.
        try:
            text = repr(value)
        except ValueError:
            text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def join(path: str, key: Any) -> str:
    """Path of ``key`` inside the object at ``path`` (``a.b``)."""
    return f"{path}.{key}" if path else str(key)


def index(path: str, i: int) -> str:
    """Path of item ``i`` of the list at ``path`` (``a[0]``)."""
    return f"{path}[{i}]"


def suggest(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``word`` most probably meant, if any (case/underscore slips first)."""
    squash = lambda s: s.replace("_", "").replace("-", "").lower()  # noqa: E731
    for candidate in candidates:
        if squash(candidate) == squash(word):
            return candidate
    import difflib  # only when a word is wrong

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


class Reader:
    """Collects the issues of one source while it is being read."""

    def __init__(self, source: str):
        self.source = source
        self.issues: list[ConfigIssue] = []

    def issue(self, path: str, message: str) -> Any:
        """Record a problem; returns :data:`INVALID` so callers can ``return ctx.issue(...)``."""
        self.issues.append(ConfigIssue(self.source, path, message))
        return INVALID

    def expected(self, path: str, expected: str, value: Any, hint: str | None = None) -> Any:
        """Record a type/range problem in the standard ``expected X, got Y`` form."""
        message = f"expected {expected}, got {show(value)}"
        return self.issue(path, message + (f'; did you mean "{hint}"?' if hint else ""))


# --- value kinds ------------------------------------------------------------------------------

class Kind:
    """How one JSON value is validated, converted and serialised."""

    #: noun phrase with article, used in errors: "expected <expected>, got ..."
    expected: str = "a value"
    #: type description for the reference table (Markdown)
    doc: str = "value"

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


class Scalar(Kind):
    """A single JSON value checked by a predicate; errors read ``expected <expected>``."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        return value

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        if not self.accepts(value):
            return ctx.expected(path, self.expected, value)
        return self.convert(value)


class Text(Scalar):
    """A string, optionally constrained by a regular expression (full match)."""

    def __init__(self, expected: str = "a non-empty string", doc: str = "string",
                 pattern: str | None = None, allow_empty: bool = False):
        self.expected, self.doc = expected, doc
        self.pattern = re.compile(pattern) if pattern else None
        self.allow_empty = allow_empty

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, str) and (self.allow_empty or value != "")
                and (self.pattern is None or self.pattern.fullmatch(value) is not None))


class Integer(Scalar):
    """An integer within ``[low, high]``; bools and floats are rejected."""

    def __init__(self, low: int, high: int | None, expected: str, doc: str):
        self.low, self.high, self.expected, self.doc = low, high, expected, doc

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and value >= self.low
                and (self.high is None or value <= self.high))


class Seconds(Scalar):
    """A duration in seconds: int or float, finite, > 0 (or >= 0 with ``allow_zero``)."""

    def __init__(self, allow_zero: bool = False):
        self.allow_zero = allow_zero
        self.expected = ("a number of seconds >= 0" if allow_zero
                         else "a number of seconds > 0")
        self.doc = "seconds >= 0" if allow_zero else "seconds > 0"

    def accepts(self, value: Any) -> bool:
        # bool is an int subclass; `true` silently becoming 1 s is exactly the bug to avoid.
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and (value > 0 or (value == 0 and self.allow_zero)))

    def convert(self, value: Any) -> Any:
        return float(value)


class Boolean(Scalar):
    """A real JSON boolean: ``"false"`` or ``0`` are errors, not false."""

    expected = "true or false"
    doc = "boolean"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Choice(Scalar):
    """One string out of a fixed set."""

    def __init__(self, *options: str):
        self.options = options
        self.expected = "one of " + ", ".join(f'"{o}"' for o in options)
        self.doc = " \\| ".join(f"`{o}`" for o in options)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        if not self.accepts(value):
            hint = suggest(value, self.options) if isinstance(value, str) else None
            return ctx.expected(path, self.expected, value, hint)
        return value


class Nullable(Kind):
    """``null`` or a value of the inner kind (a scalar, or an object read as its own)."""

    def __init__(self, inner: Kind):
        self.inner = inner
        self.expected = f"{inner.expected} or null"
        self.doc = f"{inner.doc} or null"

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        if value is None:
            return None
        if not isinstance(self.inner, Scalar):
            return self.inner.read(value, path, ctx)
        if not self.inner.accepts(value):
            return ctx.expected(path, self.expected, value)  # mention that null is fine too
        return self.inner.convert(value)

    def dump(self, value: Any) -> Any:
        return None if value is None else self.inner.dump(value)


class ListOf(Kind):
    """A JSON list, read item by item into a tuple."""

    def __init__(self, inner: Kind, min_items: int = 0, noun: str = "items"):
        self.inner, self.min_items = inner, min_items
        self.expected = (f"a list of at least {min_items} {noun}" if min_items
                         else f"a list of {noun}")
        self.doc = f"list of {inner.doc}" + (f" (at least {min_items})" if min_items else "")

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_items:
            return ctx.expected(path, self.expected, value)
        # Bad items stay in place as INVALID so later items keep their index in messages.
        return tuple(self.inner.read(item, index(path, i), ctx) for i, item in enumerate(value))

    def dump(self, value: Any) -> Any:
        return [self.inner.dump(item) for item in value]


class MapOf(Kind):
    """A JSON object of free keys (each a ``key`` scalar), read into a tuple of (key, value)
    pairs in file order; comment keys are skipped as in every object."""

    def __init__(self, key: Scalar, value: Kind, noun: str = "entries"):
        self.key, self.value = key, value
        self.expected = f"an object of {noun}"
        self.doc = f"object of {key.doc} to {value.doc}"

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        if not isinstance(value, dict):
            return ctx.expected(path, self.expected, value)
        for key in getattr(value, "duplicate_keys", ()):
            ctx.issue(join(path, key), "key appears more than once")
        pairs = []
        for key, item in value.items():
            if isinstance(key, str) and key.startswith(COMMENT_PREFIX):
                continue
            where = join(path, key)
            if not self.key.accepts(key):
                ctx.issue(where, f"expected {self.key.expected} as the key, got {show(key)}")
                continue
            pairs.append((key, self.value.read(item, where, ctx)))
        return tuple(pairs)

    def dump(self, value: Any) -> Any:
        return {key: self.value.dump(item) for key, item in value}


class Obj(Kind):
    """A nested config object (one of the spec'd dataclasses)."""

    def __init__(self, cls: type):
        self.cls = cls
        self.expected = f"an object ({cls.__name__})"
        self.doc = f"[{cls.__name__}](#{cls.__name__.lower()})"

    def read(self, value: Any, path: str, ctx: Reader) -> Any:
        return read_object(self.cls, value, path, ctx)

    def dump(self, value: Any) -> Any:
        return to_json(value)


# --- the field table --------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldSpec:
    """Metadata of one config field: JSON key, value kind and one-line documentation."""

    key: str
    kind: Kind
    doc: str


def spec(key: str, kind: Kind, doc: str, default: Any = dataclasses.MISSING) -> Any:
    """Declare a dataclass field read from JSON ``key``; no default means required."""
    return dataclasses.field(default=default, metadata={_META: FieldSpec(key, kind, doc)})


@dataclass(frozen=True)
class TableRow:
    """One field of a config object, as validation and the reference see it."""

    key: str
    attribute: str
    kind: Kind
    doc: str
    default: Any  # dataclasses.MISSING when required

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def table(cls: type) -> tuple[TableRow, ...]:
    """The field table of a config dataclass, in declaration order."""
    rows = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is not None:
            rows.append(TableRow(meta.key, f.name, meta.kind, meta.doc, f.default))
    return tuple(rows)


@dataclass(frozen=True)
class Rule:
    """A cross-field check of one object type; ``doc`` goes into the reference."""

    doc: str
    check: Callable[[Any, str, Reader], None]


RULES: dict[type, list[Rule]] = {}


def rule(cls: type, doc: str) -> Callable[[Callable[[Any, str, Reader], None]],
                                          Callable[[Any, str, Reader], None]]:
    """Register ``check(obj, path, ctx)`` to run on every (possibly partly invalid) ``cls``."""
    def register(check: Callable[[Any, str, Reader], None]) -> Callable[[Any, str, Reader], None]:
        RULES.setdefault(cls, []).append(Rule(doc, check))
        return check
    return register


def items(seq: Any) -> Iterator[tuple[int, Any]]:
    """(index, item) of the valid items of a possibly invalid sequence, for rules."""
    if seq is INVALID:
        return
    for i, item in enumerate(seq):
        if item is not INVALID:
            yield i, item


def read_object(cls: type, value: Any, path: str, ctx: Reader) -> Any:
    """Read a JSON object into ``cls`` following its field table; issues go to ``ctx``."""
    if not isinstance(value, dict):
        return ctx.expected(path, f"an object ({cls.__name__})", value)
    rows = table(cls)
    keys = [row.key for row in rows]
    for key in value:
        if isinstance(key, str) and key.startswith(COMMENT_PREFIX):
            continue  # comment keys: documented way to annotate JSON
        if key not in keys:
            hint = suggest(key, keys) if isinstance(key, str) else None
            where = f'did you mean "{hint}"?' if hint else "expected one of: " + ", ".join(keys)
            ctx.issue(join(path, key), f"unknown key {show(key)}; {where}")
    # The JSON reader marks keys that appeared twice (json.loads would silently keep the last).
    for key in getattr(value, "duplicate_keys", ()):
        ctx.issue(join(path, key), "key appears more than once")
    kwargs = {}
    for row in rows:
        where = join(path, row.key)
        if row.key in value:
            kwargs[row.attribute] = row.kind.read(value[row.key], where, ctx)
        elif row.required:
            kwargs[row.attribute] = ctx.issue(where, f"missing (expected {row.kind.expected})")
    obj = cls(**kwargs)
    for r in RULES.get(cls, ()):
        r.check(obj, path, ctx)
    return obj


def to_json(obj: Any) -> dict[str, Any]:
    """Canonical JSON-able dict of a config object: camelCase keys, defaults filled in.

    An optional key (default None, a kind without null) that was not given is left out:
    null is no value of its kind, and the dict of a config without it stays what it was
    before the key existed (its hashes too)."""
    out = {}
    for row in table(obj.__class__):
        value = getattr(obj, row.attribute)
        if value is None and not isinstance(row.kind, Nullable):
            continue
        out[row.key] = row.kind.dump(value)
    return out
