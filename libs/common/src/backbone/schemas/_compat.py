"""JSON Schema compatibility: does every instance a *writer* schema allows pass the *reader*?

The checker answers the set question "writer ⊆ reader" structurally, for draft-07 and
draft 2020-12 (a pair may mix them). It is *sound* for what it reports as compatible: when it
cannot prove inclusion (a changed ``pattern``, an unknown keyword, a ``not``), it reports a
breaking change with the reason. Each :class:`BreakingChange` names the JSON path of the data
that could be rejected (``$.metrics.*``, ``$.tags[*]``), the reader's keyword at fault and why.

Modes map onto it as Confluent defines them: BACKWARD checks ``writer=old, reader=new``;
FORWARD ``writer=new, reader=old``; FULL both; the transitive modes repeat that for every live
version. The one deliberate relaxation is :class:`~backbone.schemas.CompatibilityPolicy.LENIENT`
(the default): an optional property a reader declares on a name the writer did not declare, in a
model the writer left open by default, is assumed *fresh* (the writer never sent it), so adding
an optional property is compatible. ``STRICT`` keeps JSON Schema's literal reading.

Approximations, all on the safe side (they may report a harmless change, never miss one):
``allOf`` on the writer side is merged shallowly; a reader ``anyOf``/``oneOf`` must contain
each writer alternative in one of its branches (``oneOf`` branches are assumed disjoint, which
discriminated unions are); ``unevaluatedProperties``/``unevaluatedItems`` are read as
``additionalProperties``/``additionalItems``; ``pattern``, ``propertyNames``, ``contains``,
``not``, ``if``/``then``/``else`` and ``dependentSchemas`` must be unchanged; ``format`` is
checked only for draft-07 readers, where the validator asserts it (2020-12 makes it an
annotation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema_rs

from backbone.schemas._naming import CompatibilityMode, CompatibilityPolicy, canonical_json

DRAFT7_URIS: Final = frozenset(
    {"http://json-schema.org/draft-07/schema#", "http://json-schema.org/draft-07/schema"}
)
DRAFT2020_URIS: Final = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    }
)
MAX_DEPTH: Final = 64

_ALL_TYPES: Final = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
_NUMERIC: Final = frozenset({"number", "integer"})
# Keywords this checker reasons about; any other *constraining* keyword of a reader must be
# equal to the writer's, or the change is reported (never silently accepted).
_HANDLED: Final = frozenset(
    {
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "format",
        "items",
        "prefixItems",
        "additionalItems",
        "unevaluatedItems",
        "maxItems",
        "minItems",
        "uniqueItems",
        "contains",
        "maxContains",
        "minContains",
        "maxProperties",
        "minProperties",
        "required",
        "properties",
        "patternProperties",
        "additionalProperties",
        "unevaluatedProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "propertyNames",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "$ref",
    }
)
_ANNOTATIONS: Final = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$comment",
        "$defs",
        "definitions",
        "$vocabulary",
        "$dynamicAnchor",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
    }
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class BreakingChange:
    """One reason why a reader may reject data a writer produces.

    Attributes:
        path: JSON path of the data concerned (``$``, ``$.error``, ``$.tags[*]``, ``$.meta.*``).
        keyword: The reader's schema keyword at fault (``required``, ``type``, ``maximum``...).
        reason: A sentence a producer can act on.
    """

    path: str
    keyword: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"path": self.path, "keyword": self.keyword, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class VersionedChange:
    """A breaking change found against one previous version, in one direction.

    Attributes:
        version: The previous version compared with.
        direction: ``"backward"`` (new reader, old data) or ``"forward"`` (old reader, new data).
        change: The change itself.
    """

    version: int
    direction: str
    change: BreakingChange

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the change's fields plus ``version`` and ``direction``."""
        return {**self.change.to_dict(), "version": self.version, "direction": self.direction}


@dataclass(frozen=True, slots=True)
class CompatibilityReport:
    """Outcome of checking a candidate against a type's history.

    Attributes:
        mode: The mode applied.
        policy: The policy applied.
        compatible: Whether no breaking change was found.
        checked_versions: The previous versions the candidate was compared with.
        changes: Every breaking change found.
    """

    mode: CompatibilityMode
    policy: CompatibilityPolicy
    compatible: bool
    checked_versions: tuple[int, ...]
    changes: tuple[VersionedChange, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "compatible": self.compatible,
            "mode": self.mode.value,
            "policy": self.policy.value,
            "checked_versions": list(self.checked_versions),
            "changes": [c.to_dict() for c in self.changes],
        }


def dialect_of(schema: Any) -> str:  # noqa: ANN401 - any JSON value
    """``"draft7"`` or ``"2020-12"`` (the default when ``$schema`` is absent).

    Raises:
        ValueError: For any other ``$schema``.
    """
    if not isinstance(schema, Mapping) or "$schema" not in schema:
        return "2020-12"
    uri = schema["$schema"]
    if uri in DRAFT7_URIS:
        return "draft7"
    if uri in DRAFT2020_URIS:
        return "2020-12"
    msg = f"unsupported $schema {uri!r}: use draft-07 or draft 2020-12"
    raise ValueError(msg)


def find_breaking_changes(
    writer: Any,  # noqa: ANN401 - any JSON Schema document
    reader: Any,  # noqa: ANN401 - any JSON Schema document
    *,
    policy: CompatibilityPolicy = CompatibilityPolicy.LENIENT,
) -> list[BreakingChange]:
    """Why data valid under ``writer`` may be rejected by ``reader`` (empty: compatible).

    Args:
        writer: Schema of the data's producer.
        reader: Schema of the consumer.
        policy: How to treat optional properties added to an open model.
    """
    checker = _Checker(_Side(writer), _Side(reader), policy)
    checker.sub(writer, "#", reader, "#", path="$", depth=0)
    # Deterministic and de-duplicated: the same change can be reached along two routes.
    unique = {(c.path, c.keyword, c.reason): c for c in checker.changes}
    return sorted(unique.values(), key=lambda c: (c.path, c.keyword, c.reason))


def check_compatibility(
    candidate: Any,  # noqa: ANN401 - any JSON Schema document
    history: Sequence[tuple[int, Any]],
    *,
    mode: CompatibilityMode = CompatibilityMode.BACKWARD,
    policy: CompatibilityPolicy = CompatibilityPolicy.LENIENT,
) -> CompatibilityReport:
    """Check a candidate against a type's live versions under a mode.

    Args:
        candidate: The new schema.
        history: ``(version, schema)`` of the live (not deleted) versions, oldest first.
        mode: Which directions and how far back to check.
        policy: See :class:`~backbone.schemas.CompatibilityPolicy`.
    """
    if mode is CompatibilityMode.NONE or not history:
        return CompatibilityReport(mode, policy, compatible=True, checked_versions=())
    against = list(history) if mode.transitive else [history[-1]]
    changes: list[VersionedChange] = []
    for version, previous in against:
        if mode.backward:
            changes.extend(
                VersionedChange(version, "backward", change)
                for change in find_breaking_changes(previous, candidate, policy=policy)
            )
        if mode.forward:
            changes.extend(
                VersionedChange(version, "forward", change)
                for change in find_breaking_changes(candidate, previous, policy=policy)
            )
    return CompatibilityReport(
        mode,
        policy,
        compatible=not changes,
        checked_versions=tuple(v for v, _ in against),
        changes=tuple(changes),
    )


# --------------------------------------------------------------------------------------------
# Implementation


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape_pointer(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _child_path(path: str, name: str) -> str:
    return (
        f"{path}.{name}" if _IDENTIFIER.match(name) else f"{path}[{canonical_json(name).decode()}]"
    )


def _same(a: Any, b: Any) -> bool:  # noqa: ANN401 - JSON values
    # Canonical bytes keep JSON's distinction between true and 1 that Python's == loses.
    return canonical_json(a) == canonical_json(b)


class _Side:
    """One schema document: its dialect, $ref resolution and lazily compiled sub-validators."""

    def __init__(self, root: Any) -> None:  # noqa: ANN401 - any JSON Schema document
        self.root = root
        self.dialect = dialect_of(root)
        self._validators: jsonschema_rs.ValidatorMap | None = None
        self._compiled = False
        self._anchors: dict[str, str] | None = None

    def validator(self, pointer: str | None) -> jsonschema_rs.Validator | None:
        if pointer is None:
            return None
        if not self._compiled:
            self._compiled = True
            try:
                self._validators = jsonschema_rs.validator_map_for(self.root, offline=True)
            except (jsonschema_rs.ValidationError, ValueError):
                self._validators = None
        return self._validators.get(pointer) if self._validators is not None else None

    def resolve(self, ref: str) -> tuple[Any, str | None]:
        """Resolve a local ``$ref``; ``(None, None)`` when it cannot be resolved."""
        if not ref.startswith("#"):
            return (None, None)
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            pointer = self._anchor_pointers().get(fragment)
            if pointer is None:
                return (None, None)
            fragment = pointer[1:]
        node: Any = self.root
        for raw in fragment.split("/")[1:] if fragment else []:
            token = _unescape_pointer(raw)
            if isinstance(node, Mapping) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return (None, None)
        return (node, "#" + fragment)

    def _anchor_pointers(self) -> dict[str, str]:
        if self._anchors is None:
            self._anchors = {}
            self._collect_anchors(self.root, "#")
        return self._anchors

    def _collect_anchors(self, node: Any, pointer: str) -> None:  # noqa: ANN401 - JSON value
        if isinstance(node, Mapping):
            anchor = node.get("$anchor")
            if isinstance(anchor, str):
                self._anchors[anchor] = pointer  # type: ignore[index]
            node_id = node.get("$id")
            if isinstance(node_id, str) and node_id.startswith("#") and len(node_id) > 1:
                self._anchors[node_id[1:]] = pointer  # type: ignore[index]
            for key, value in node.items():
                self._collect_anchors(value, f"{pointer}/{_escape_pointer(str(key))}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._collect_anchors(value, f"{pointer}/{i}")


def _constraining(node: Mapping[str, Any], *, format_asserted: bool) -> list[str]:
    keys = [k for k in node if k not in _ANNOTATIONS]
    if not format_asserted:
        keys = [k for k in keys if k != "format"]
    return keys


def _types_of(node: Mapping[str, Any]) -> frozenset[str] | None:
    """The JSON types a node allows (None: any); ``number`` implies ``integer``."""
    declared = node.get("type")
    types: set[str] | None = None
    if isinstance(declared, str):
        types = {declared}
    elif isinstance(declared, list):
        types = {t for t in declared if isinstance(t, str)}
    if types is not None and "number" in types:
        types.add("integer")
    values = _finite_values(node)
    if values is not None:
        inferred = {_json_type(v) for v in values}
        types = inferred if types is None else inferred & types
    return frozenset(types) if types is not None else None


def _json_type(value: Any) -> str:  # noqa: ANN401, PLR0911 - JSON value, one return per type
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _finite_values(node: Mapping[str, Any]) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    enum = node.get("enum")
    if isinstance(enum, list):
        return list(enum)
    return None


def _lower_bound(node: Mapping[str, Any]) -> tuple[float, bool] | None:
    """Tightest lower bound as ``(value, exclusive)``."""
    bounds: list[tuple[float, bool]] = []
    if isinstance(node.get("minimum"), int | float) and not isinstance(node["minimum"], bool):
        bounds.append((float(node["minimum"]), False))
    exclusive = node.get("exclusiveMinimum")
    if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
        bounds.append((float(exclusive), True))
    # Highest value wins; at equal values the exclusive bound is tighter.
    return max(bounds, key=lambda b: (b[0], b[1])) if bounds else None


def _upper_bound(node: Mapping[str, Any]) -> tuple[float, bool] | None:
    bounds: list[tuple[float, bool]] = []
    if isinstance(node.get("maximum"), int | float) and not isinstance(node["maximum"], bool):
        bounds.append((float(node["maximum"]), False))
    exclusive = node.get("exclusiveMaximum")
    if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
        bounds.append((float(exclusive), True))
    return min(bounds, key=lambda b: (b[0], not b[1])) if bounds else None


def _number(node: Mapping[str, Any], key: str) -> float | None:
    value = node.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _is_multiple(value: float, divisor: float) -> bool:
    quotient = value / divisor
    return math.isclose(quotient, round(quotient), rel_tol=0, abs_tol=1e-9)


class _Checker:
    def __init__(self, writer: _Side, reader: _Side, policy: CompatibilityPolicy) -> None:
        self.w = writer
        self.r = reader
        self.policy = policy
        self.changes: list[BreakingChange] = []
        # Keyed by identity; the values keep the nodes alive so an id is never reused.
        self._seen: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._reader_formats = reader.dialect == "draft7"

    def report(self, path: str, keyword: str, reason: str) -> None:
        self.changes.append(BreakingChange(path, keyword, reason))

    # -- dereferencing ------------------------------------------------------------------------

    def _deref(self, side: _Side, node: Any, ptr: str | None, path: str) -> tuple[Any, str | None]:  # noqa: ANN401
        """Follow ``$ref`` chains; in 2020-12 a ``$ref`` with siblings becomes an ``allOf``."""
        for _ in range(MAX_DEPTH):
            if not isinstance(node, Mapping) or not isinstance(node.get("$ref"), str):
                return (node, ptr)
            target, target_ptr = side.resolve(node["$ref"])
            if target is None:
                self.report(path, "$ref", f"cannot resolve $ref {node['$ref']!r} (only local refs)")
                return (True, None)
            siblings = {k: v for k, v in node.items() if k != "$ref" and k not in _ANNOTATIONS}
            if siblings and side.dialect == "2020-12":
                return ({"allOf": [target, siblings]}, None)
            node, ptr = target, target_ptr
        self.report(path, "$ref", "$ref chain too long")
        return (True, None)

    # -- the recursion ------------------------------------------------------------------------

    def sub(  # noqa: C901, PLR0911, PLR0912, PLR0915 - one dispatch over JSON Schema's shapes
        self,
        w: Any,  # noqa: ANN401
        wp: str | None,
        r: Any,  # noqa: ANN401
        rp: str | None,
        *,
        path: str,
        depth: int,
    ) -> None:
        """Record why ``w``'s instances may fail ``r`` (data at ``path``)."""
        if depth > MAX_DEPTH:
            self.report(path, "$ref", f"schema nested deeper than {MAX_DEPTH} levels")
            return
        w, wp = self._deref(self.w, w, wp, path)
        r, rp = self._deref(self.r, r, rp, path)
        # Recursive schemas: a pair already under examination is assumed fine (coinduction).
        if isinstance(w, Mapping) and isinstance(r, Mapping):
            if (id(w), id(r)) in self._seen:
                return
            self._seen[(id(w), id(r))] = (w, r)
        if r is True or w is False:
            return
        if r is False:
            self.report(path, "false", "the reader accepts nothing here (schema `false`)")
            return
        if w is True:
            w = {}
        if not isinstance(w, Mapping) or not isinstance(r, Mapping):
            self.report(path, "type", "schema is neither an object nor a boolean")
            return
        if not _constraining(r, format_asserted=self._reader_formats):
            return

        # Writer alternatives: each one must be accepted on its own.
        for comb in ("anyOf", "oneOf"):
            branches = w.get(comb)
            if isinstance(branches, list) and branches:
                base = {k: v for k, v in w.items() if k != comb}
                only = not _constraining(base, format_asserted=True)
                for i, branch in enumerate(branches):
                    bnode, bptr = self._deref(
                        self.w, branch, None if wp is None else f"{wp}/{comb}/{i}", path
                    )
                    merged = _merge_all([base, bnode]) if not only else bnode
                    self.sub(merged, bptr if only else None, r, rp, path=path, depth=depth + 1)
                return
        if isinstance(w.get("allOf"), list) and w["allOf"]:
            parts = [self._deref(self.w, b, None, path)[0] for b in w["allOf"]]
            base = {k: v for k, v in w.items() if k != "allOf"}
            self.sub(_merge_all([base, *parts]), None, r, rp, path=path, depth=depth + 1)
            return

        # A finite writer (enum/const) is checked value by value against the real validator.
        values = _finite_values(w)
        if values is not None and self._values_check(values, w, wp, r, rp, path=path):
            return

        # Reader conjunctions and alternatives.
        if isinstance(r.get("allOf"), list):
            for i, branch in enumerate(r["allOf"]):
                self.sub(
                    w,
                    wp,
                    branch,
                    None if rp is None else f"{rp}/allOf/{i}",
                    path=path,
                    depth=depth + 1,
                )
        for comb in ("anyOf", "oneOf"):
            if isinstance(r.get(comb), list):
                self._reader_alternatives(w, wp, r, rp, comb=comb, path=path, depth=depth)
        for keyword in ("not", "if", "then", "else", "dependentSchemas", "propertyNames"):
            if keyword in r and (keyword not in w or not _same(w[keyword], r[keyword])):
                self.report(path, keyword, f"reader's `{keyword}` was added or changed")

        writer_types = self._check_type(w, r, path)
        if writer_types is None or writer_types & _NUMERIC:
            self._check_numeric(w, r, path)
        if writer_types is None or "string" in writer_types:
            self._check_string(w, r, path)
        if writer_types is None or "array" in writer_types:
            self._check_array(w, wp, r, rp, path=path, depth=depth)
        if writer_types is None or "object" in writer_types:
            self._check_object(w, wp, r, rp, path=path, depth=depth)
        r_values = _finite_values(r)
        if r_values is not None:
            keyword = "enum" if "enum" in r else "const"
            if values is None:
                self.report(path, keyword, "reader restricts the values the writer left open")
            for value in values or []:
                if not any(_same(value, allowed) for allowed in r_values):
                    shown = canonical_json(value).decode()
                    self.report(path, keyword, f"value {shown} allowed by the writer is rejected")

        for keyword in _constraining(r, format_asserted=True):
            if keyword not in _HANDLED and (keyword not in w or not _same(w[keyword], r[keyword])):
                self.report(path, keyword, f"unsupported keyword `{keyword}` was added or changed")

    def _values_check(
        self,
        values: list[Any],
        w: Mapping[str, Any],
        wp: str | None,
        r: Mapping[str, Any],
        rp: str | None,
        *,
        path: str,
    ) -> bool:
        """Check a finite writer exactly; False when no validator is at hand (fall back)."""
        reader_validator = self.r.validator(rp)
        if reader_validator is None:
            return False
        writer_validator = self.w.validator(wp)
        del w
        for value in values:
            if writer_validator is not None and not writer_validator.is_valid(value):
                continue  # the writer never produces it
            if not reader_validator.is_valid(value):
                keyword = "enum" if "enum" in r else "const" if "const" in r else "type"
                shown = canonical_json(value).decode()
                self.report(path, keyword, f"value {shown} allowed by the writer is rejected")
        return True

    def _reader_alternatives(
        self,
        w: Mapping[str, Any],
        wp: str | None,
        r: Mapping[str, Any],
        rp: str | None,
        *,
        comb: str,
        path: str,
        depth: int,
    ) -> None:
        best: list[BreakingChange] | None = None
        for i, branch in enumerate(r[comb]):
            trial = _Checker(self.w, self.r, self.policy)
            trial._seen = dict(self._seen)
            trial.sub(
                w,
                wp,
                branch,
                None if rp is None else f"{rp}/{comb}/{i}",
                path=path,
                depth=depth + 1,
            )
            if not trial.changes:
                return
            if best is None or len(trial.changes) < len(best):
                best = trial.changes
        closest = "; ".join(f"{c.path}: {c.reason}" for c in (best or [])[:3])
        self.report(
            path, comb, f"no `{comb}` branch of the reader accepts the writer's shape ({closest})"
        )

    def _check_type(
        self, w: Mapping[str, Any], r: Mapping[str, Any], path: str
    ) -> frozenset[str] | None:
        writer_types = _types_of(w)
        reader_types = _types_of(r)
        if reader_types is None or "type" not in r:
            return writer_types
        if writer_types is None:
            allowed = "/".join(sorted(reader_types))
            self.report(path, "type", f"type restricted to {allowed}; the writer allowed any type")
            return writer_types
        missing = sorted(writer_types - reader_types)
        if missing:
            if missing == ["number"] and "integer" in reader_types:
                reason = "reader accepts only integers; the writer allows any number"
            else:
                reason = f"reader does not accept {', '.join(missing)}, which the writer allows"
            self.report(path, "type", reason)
        return writer_types & reader_types or writer_types

    def _check_numeric(self, w: Mapping[str, Any], r: Mapping[str, Any], path: str) -> None:
        # draft-07 and 2020-12 agree: exclusiveMinimum/Maximum are numbers, not draft-04 booleans.
        r_low, w_low = _lower_bound(r), _lower_bound(w)
        if r_low is not None and (
            w_low is None or w_low[0] < r_low[0] or (w_low[0] == r_low[0] and r_low[1] > w_low[1])
        ):
            keyword = "exclusiveMinimum" if r_low[1] else "minimum"
            self.report(
                path,
                keyword,
                f"reader's lower bound ({_fmt_bound(r_low, '>')}) is tighter than the writer's"
                f" ({_fmt_bound(w_low, '>')})",
            )
        r_high, w_high = _upper_bound(r), _upper_bound(w)
        if r_high is not None and (
            w_high is None
            or w_high[0] > r_high[0]
            or (w_high[0] == r_high[0] and r_high[1] > w_high[1])
        ):
            keyword = "exclusiveMaximum" if r_high[1] else "maximum"
            self.report(
                path,
                keyword,
                f"reader's upper bound ({_fmt_bound(r_high, '<')}) is tighter than the writer's"
                f" ({_fmt_bound(w_high, '<')})",
            )
        r_mult = _number(r, "multipleOf")
        if r_mult is not None:
            w_mult = _number(w, "multipleOf")
            w_types = _types_of(w)
            writer_integer = w_types is not None and w_types <= {"integer"}
            ok = (w_mult is not None and _is_multiple(w_mult, r_mult)) or (
                writer_integer and _is_multiple(1.0, r_mult)
            )
            if not ok:
                self.report(
                    path,
                    "multipleOf",
                    f"reader requires a multiple of {r_mult:g}; the writer does not guarantee it",
                )

    def _check_bounds(
        self,
        w: Mapping[str, Any],
        r: Mapping[str, Any],
        *,
        path: str,
        low_key: str,
        high_key: str,
        what: str,
    ) -> None:
        r_low, w_low = _number(r, low_key), _number(w, low_key)
        if r_low is not None and r_low > 0 and (w_low is None or w_low < r_low):
            self.report(
                path,
                low_key,
                f"reader's {low_key} ({r_low:g}) is tighter than the writer's"
                f" ({'none' if w_low is None else f'{w_low:g}'}) for the {what}",
            )
        r_high, w_high = _number(r, high_key), _number(w, high_key)
        if r_high is not None and (w_high is None or w_high > r_high):
            self.report(
                path,
                high_key,
                f"reader's {high_key} ({r_high:g}) is tighter than the writer's"
                f" ({'none' if w_high is None else f'{w_high:g}'}) for the {what}",
            )

    def _check_string(self, w: Mapping[str, Any], r: Mapping[str, Any], path: str) -> None:
        self._check_bounds(
            w, r, path=path, low_key="minLength", high_key="maxLength", what="string length"
        )
        if "pattern" in r and w.get("pattern") != r["pattern"]:
            self.report(
                path,
                "pattern",
                f"reader's pattern {r['pattern']!r} differs from the writer's"
                " (regex inclusion is not decided)",
            )
        if self._reader_formats and "format" in r and w.get("format") != r["format"]:
            self.report(
                path,
                "format",
                f"reader asserts format {r['format']!r} (draft-07), the writer does not",
            )

    def _array_parts(self, side: _Side, node: Mapping[str, Any]) -> tuple[list[Any], Any]:
        if side.dialect == "draft7":
            items = node.get("items", True)
            if isinstance(items, list):
                rest = node.get("additionalItems", node.get("unevaluatedItems", True))
                return (list(items), rest)
            return ([], items)
        prefix = node.get("prefixItems", [])
        rest = node.get("items", node.get("unevaluatedItems", True))
        return (list(prefix) if isinstance(prefix, list) else [], rest)

    def _check_array(
        self,
        w: Mapping[str, Any],
        wp: str | None,
        r: Mapping[str, Any],
        rp: str | None,
        *,
        path: str,
        depth: int,
    ) -> None:
        self._check_bounds(
            w, r, path=path, low_key="minItems", high_key="maxItems", what="number of items"
        )
        if r.get("uniqueItems") is True and w.get("uniqueItems") is not True:
            self.report(
                path, "uniqueItems", "reader requires unique items; the writer allows repeats"
            )
        for keyword in ("contains", "minContains", "maxContains"):
            if keyword in r and (keyword not in w or not _same(w[keyword], r[keyword])):
                self.report(path, keyword, f"`{keyword}` added or changed")
        w_prefix, w_rest = self._array_parts(self.w, w)
        r_prefix, r_rest = self._array_parts(self.r, r)
        w_prefix_key = "items" if self.w.dialect == "draft7" else "prefixItems"
        r_prefix_key = "items" if self.r.dialect == "draft7" else "prefixItems"
        w_rest_key = "additionalItems" if self.w.dialect == "draft7" and w_prefix else "items"
        r_rest_key = "additionalItems" if self.r.dialect == "draft7" and r_prefix else "items"
        w_max = _number(w, "maxItems")
        for i in range(max(len(w_prefix), len(r_prefix))):
            if w_max is not None and i >= w_max:
                break
            if i < len(w_prefix):
                wi, wip = w_prefix[i], _ptr(wp, f"{w_prefix_key}/{i}")
            else:
                wi, wip = w_rest, _ptr(wp, w_rest_key) if w_rest_key in w else None
            if i < len(r_prefix):
                ri, rip = r_prefix[i], _ptr(rp, f"{r_prefix_key}/{i}")
            else:
                ri, rip = r_rest, _ptr(rp, r_rest_key) if r_rest_key in r else None
            self.sub(wi, wip, ri, rip, path=f"{path}[{i}]", depth=depth + 1)
        n = max(len(w_prefix), len(r_prefix))
        if w_max is None or w_max > n:
            self.sub(
                w_rest,
                _ptr(wp, w_rest_key) if w_rest_key in w else None,
                r_rest,
                _ptr(rp, r_rest_key) if r_rest_key in r else None,
                path=f"{path}[*]",
                depth=depth + 1,
            )

    def _check_object(  # noqa: C901, PLR0912, PLR0915 - the object rules are many but flat
        self,
        w: Mapping[str, Any],
        wp: str | None,
        r: Mapping[str, Any],
        rp: str | None,
        *,
        path: str,
        depth: int,
    ) -> None:
        self._check_bounds(
            w,
            r,
            path=path,
            low_key="minProperties",
            high_key="maxProperties",
            what="number of properties",
        )
        w_req = set(w.get("required", [])) if isinstance(w.get("required"), list) else set()
        r_req = set(r.get("required", [])) if isinstance(r.get("required"), list) else set()
        for name in sorted(r_req - w_req):
            self.report(
                _child_path(path, name),
                "required",
                f"reader requires {name!r}; the writer may omit it",
            )
        self._check_dependencies(w, r, path)

        w_props: Mapping[str, Any] = w.get("properties", {}) or {}
        r_props: Mapping[str, Any] = r.get("properties", {}) or {}
        w_pats: Mapping[str, Any] = w.get("patternProperties", {}) or {}
        r_pats: Mapping[str, Any] = r.get("patternProperties", {}) or {}
        w_add_key = (
            "additionalProperties" if "additionalProperties" in w else "unevaluatedProperties"
        )
        r_add_key = (
            "additionalProperties" if "additionalProperties" in r else "unevaluatedProperties"
        )
        w_add = w.get(w_add_key, True)
        r_add = r.get(r_add_key, True)
        w_add_ptr = _ptr(wp, w_add_key) if w_add_key in w else None
        r_add_ptr = _ptr(rp, r_add_key) if r_add_key in r else None

        for name in sorted(set(w_props) | set(r_props)):
            child = _child_path(path, name)
            w_ptr = _ptr(wp, f"properties/{_escape_pointer(name)}")
            r_ptr = _ptr(rp, f"properties/{_escape_pointer(name)}")
            if name in w_props and name in r_props:
                self.sub(w_props[name], w_ptr, r_props[name], r_ptr, path=child, depth=depth + 1)
                for pat in (p for p in r_pats if p not in w_pats and _matches(p, name)):
                    pat_ptr = _ptr(rp, f"patternProperties/{_escape_pointer(pat)}")
                    self.sub(
                        w_props[name], w_ptr, r_pats[pat], pat_ptr, path=child, depth=depth + 1
                    )
            elif name in w_props:
                # Removed by the reader: the writer's values now meet the reader's catch-alls.
                matching = [p for p in r_pats if _matches(p, name)]
                for pat in matching:
                    pat_ptr = _ptr(rp, f"patternProperties/{_escape_pointer(pat)}")
                    self.sub(
                        w_props[name], w_ptr, r_pats[pat], pat_ptr, path=child, depth=depth + 1
                    )
                if not matching:
                    if r_add is False:
                        self.report(
                            child,
                            "additionalProperties",
                            f"writer may send {name!r}; the reader's closed model refuses it",
                        )
                    else:
                        self.sub(
                            w_props[name], w_ptr, r_add, r_add_ptr, path=child, depth=depth + 1
                        )
            else:
                # Declared by the reader only: the writer may have sent it as an extra.
                matching = [p for p in w_pats if _matches(p, name)]
                for pat in matching:
                    pat_ptr = _ptr(wp, f"patternProperties/{_escape_pointer(pat)}")
                    self.sub(
                        w_pats[pat], pat_ptr, r_props[name], r_ptr, path=child, depth=depth + 1
                    )
                if matching or w_add is False:
                    continue
                if w_add is True and self.policy is CompatibilityPolicy.LENIENT:
                    continue  # fresh-name assumption, see CompatibilityPolicy.LENIENT
                before = len(self.changes)
                self.sub(w_add, w_add_ptr, r_props[name], r_ptr, path=child, depth=depth + 1)
                if len(self.changes) > before and w_add is True:
                    self.changes[before:] = [
                        BreakingChange(
                            child,
                            "properties",
                            f"property {name!r} added to an open content model: the"
                            " previous schema allowed any value under this name"
                            " (STRICT policy)",
                        )
                    ]

        for pat in sorted(set(w_pats) | set(r_pats)):
            child = f"{path}[/{pat}/]"
            w_ptr = _ptr(wp, f"patternProperties/{_escape_pointer(pat)}")
            r_ptr = _ptr(rp, f"patternProperties/{_escape_pointer(pat)}")
            if pat in w_pats and pat in r_pats:
                self.sub(w_pats[pat], w_ptr, r_pats[pat], r_ptr, path=child, depth=depth + 1)
            elif pat in w_pats:
                if r_add is False:
                    self.report(
                        child,
                        "additionalProperties",
                        f"writer may send keys matching /{pat}/; the closed reader refuses them",
                    )
                else:
                    self.sub(w_pats[pat], w_ptr, r_add, r_add_ptr, path=child, depth=depth + 1)
            elif w_add is not False:
                self.sub(w_add, w_add_ptr, r_pats[pat], r_ptr, path=child, depth=depth + 1)

        if r_add is False and w_add is not False:
            self.report(
                f"{path}.*",
                "additionalProperties",
                "reader's content model is closed; the writer's open model may add properties",
            )
        elif r_add is not True:
            self.sub(w_add, w_add_ptr, r_add, r_add_ptr, path=f"{path}.*", depth=depth + 1)

    def _check_dependencies(self, w: Mapping[str, Any], r: Mapping[str, Any], path: str) -> None:
        def required_deps(node: Mapping[str, Any]) -> dict[str, set[str]]:
            deps: dict[str, set[str]] = {}
            for key in ("dependentRequired", "dependencies"):
                for name, value in (node.get(key) or {}).items():
                    if isinstance(value, list):
                        deps.setdefault(name, set()).update(str(v) for v in value)
            return deps

        w_deps, r_deps = required_deps(w), required_deps(r)
        for name, needed in sorted(r_deps.items()):
            extra = needed - w_deps.get(name, set())
            if extra:
                self.report(
                    _child_path(path, name),
                    "dependentRequired",
                    f"reader requires {sorted(extra)} whenever {name!r} is present",
                )
        w_schema_deps = {
            k: v for k, v in (w.get("dependencies") or {}).items() if not isinstance(v, list)
        }
        for name, value in (r.get("dependencies") or {}).items():
            if not isinstance(value, list) and (
                name not in w_schema_deps or not _same(w_schema_deps[name], value)
            ):
                self.report(
                    _child_path(path, name),
                    "dependencies",
                    f"schema dependency of {name!r} added or changed",
                )


def _ptr(base: str | None, suffix: str) -> str | None:
    return None if base is None else f"{base}/{suffix}"


def _fmt_bound(bound: tuple[float, bool] | None, op: str) -> str:
    if bound is None:
        return "none"
    return f"{op}{'' if bound[1] else '='} {bound[0]:g}"


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True  # cannot tell: assume it matches, which checks more, never less


def _merge_all(parts: Iterable[Any]) -> Any:  # noqa: ANN401, C901, PLR0912 - JSON values
    """Shallow conjunction of schemas, used on the writer side only.

    Dropping a writer constraint is safe: it can only make the checker report more, never less.
    """
    merged: dict[str, Any] = {}
    for part in parts:
        if part is False:
            return False
        if not isinstance(part, Mapping):
            continue
        for key, value in part.items():
            if key not in merged:
                merged[key] = value
                continue
            current = merged[key]
            if key == "required" and isinstance(value, list) and isinstance(current, list):
                merged[key] = sorted(set(current) | set(value))
            elif key in {"properties", "patternProperties"} and isinstance(value, Mapping):
                props = dict(current)
                for name, sub in value.items():
                    props[name] = {"allOf": [props[name], sub]} if name in props else sub
                merged[key] = props
            elif key == "type":
                a = {current} if isinstance(current, str) else set(current)
                b = {value} if isinstance(value, str) else set(value)
                if "number" in a:
                    a.add("integer")
                if "number" in b:
                    b.add("integer")
                merged[key] = sorted(a & b)
            elif key in {"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"}:
                merged[key] = max(current, value)
            elif key in {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"}:
                merged[key] = min(current, value)
            elif key in {"additionalProperties", "items", "additionalItems"}:
                merged[key] = False if False in (current, value) else {"allOf": [current, value]}
            # Other keywords: the first one is kept (dropping a writer constraint is safe).
    return merged
