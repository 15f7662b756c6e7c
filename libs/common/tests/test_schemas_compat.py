"""Table-driven proof of the compatibility checker.

Each pair is (old, new) with the expected verdict of BACKWARD (new reads old data) and FORWARD
(old reads new data); FULL is their conjunction and is asserted too. A failing direction names
the keyword the checker must blame, and every case says why in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from backbone.schemas import (
    CompatibilityMode,
    CompatibilityPolicy,
    check_compatibility,
    find_breaking_changes,
)

D7 = "http://json-schema.org/draft-07/schema#"
D2020 = "https://json-schema.org/draft/2020-12/schema"


def obj(props: dict[str, Any], *required: str, extra: Any = None, **more: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if extra is not None:
        schema["additionalProperties"] = extra
    schema.update(more)
    return schema


S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741 - reads like the type it stands for
N = {"type": "number"}


def arr(items: Any, **more: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **more}


def tree(leaf: Any) -> dict[str, Any]:
    return {
        "$defs": {
            "node": obj({"value": leaf, "children": arr({"$ref": "#/$defs/node"})}, "value"),
        },
        "$ref": "#/$defs/node",
    }


@dataclass(frozen=True)
class Case:
    name: str
    old: Any
    new: Any
    backward: str | None  # None = compatible; else the keyword blamed
    forward: str | None
    why: str
    policy: CompatibilityPolicy = CompatibilityPolicy.LENIENT


OK = None

CASES = [
    # -- properties and content models ---------------------------------------------------------
    Case("identical", obj({"a": S}, "a"), obj({"a": S}, "a"), OK, OK, "no change"),
    Case(
        "add optional to open model (lenient)",
        obj({"a": S}),
        obj({"a": S, "b": I}),
        OK,
        OK,
        "new optional names are assumed fresh under the LENIENT policy",
    ),
    Case(
        "add optional to open model (strict)",
        obj({"a": S}),
        obj({"a": S, "b": I}),
        "properties",
        OK,
        "STRICT: old writers could send any value under 'b' via additionalProperties",
        CompatibilityPolicy.STRICT,
    ),
    Case(
        "add required property",
        obj({"a": S}, "a"),
        obj({"a": S, "b": I}, "a", "b"),
        "required",
        OK,
        "old data lacks 'b'; old readers ignore the extra 'b'",
    ),
    Case(
        "remove optional from open model",
        obj({"a": S, "b": I}),
        obj({"a": S}),
        OK,
        OK,
        "new readers accept 'b' as an extra; old readers see 'b' absent (lenient)",
    ),
    Case(
        "remove optional from open model (strict)",
        obj({"a": S, "b": I}),
        obj({"a": S}),
        OK,
        "properties",
        "STRICT: new writers may send anything as 'b', old readers want int",
        CompatibilityPolicy.STRICT,
    ),
    Case(
        "remove required property",
        obj({"a": S, "b": I}, "a", "b"),
        obj({"a": S}, "a"),
        OK,
        "required",
        "old readers require 'b' that new data may lack",
    ),
    Case(
        "optional becomes required",
        obj({"a": S}),
        obj({"a": S}, "a"),
        "required",
        OK,
        "old data may omit 'a'",
    ),
    Case(
        "required becomes optional",
        obj({"a": S}, "a"),
        obj({"a": S}),
        OK,
        "required",
        "new data may omit 'a' that old readers require",
    ),
    Case(
        "close an open model",
        obj({"a": S}),
        obj({"a": S}, extra=False),
        "additionalProperties",
        OK,
        "old data may carry extra properties",
    ),
    Case(
        "open a closed model",
        obj({"a": S}, extra=False),
        obj({"a": S}),
        OK,
        "additionalProperties",
        "new data may carry extras old readers refuse",
    ),
    Case(
        "remove property from closed model",
        obj({"a": S, "b": I}, extra=False),
        obj({"a": S}, extra=False),
        "additionalProperties",
        OK,
        "old data may carry 'b', which the new closed model refuses",
    ),
    Case(
        "add optional to closed model",
        obj({"a": S}, extra=False),
        obj({"a": S, "b": I}, extra=False),
        OK,
        "additionalProperties",
        "old closed readers refuse the new 'b'",
    ),
    Case(
        "narrow additionalProperties",
        obj({}, extra=N),
        obj({}, extra=I),
        "type",
        OK,
        "map values narrowed from number to integer",
    ),
    Case(
        "widen additionalProperties",
        obj({}, extra=N),
        obj({}, extra={"type": ["number", "string"]}),
        OK,
        "type",
        "map values widened: old readers refuse strings",
    ),
    Case(
        "patternProperties added on open model",
        obj({"a": S}),
        obj({"a": S}, patternProperties={"^x-": S}),
        "type",
        OK,
        "old data may hold 'x-…' keys of any type",
    ),
    Case(
        "patternProperties removed",
        obj({"a": S}, patternProperties={"^x-": S}),
        obj({"a": S}),
        OK,
        "type",
        "new data may hold 'x-…' keys of any type",
    ),
    Case(
        "minProperties added",
        obj({"a": S}),
        obj({"a": S}, minProperties=1),
        "minProperties",
        OK,
        "old data may be an empty object",
    ),
    Case(
        "maxProperties loosened",
        obj({}, maxProperties=2),
        obj({}, maxProperties=5),
        OK,
        "maxProperties",
        "new data may hold more properties",
    ),
    Case(
        "dependentRequired added",
        obj({"a": S, "b": S}),
        obj({"a": S, "b": S}, dependentRequired={"a": ["b"]}),
        "dependentRequired",
        OK,
        "old data may have 'a' without 'b'",
    ),
    Case(
        "propertyNames added",
        obj({}),
        obj({}, propertyNames={"pattern": "^[a-z]+$"}),
        "propertyNames",
        OK,
        "old data may use any key",
    ),
    # -- types ---------------------------------------------------------------------------------
    Case(
        "integer widened to number",
        obj({"n": I}),
        obj({"n": N}),
        OK,
        "type",
        "every integer is a number, not the reverse",
    ),
    Case(
        "number narrowed to integer",
        obj({"n": N}),
        obj({"n": I}),
        "type",
        OK,
        "old data may hold 1.5",
    ),
    Case(
        "string made nullable",
        obj({"s": S}),
        obj({"s": {"type": ["string", "null"]}}),
        OK,
        "type",
        "new data may hold null",
    ),
    Case(
        "nullable made string",
        obj({"s": {"type": ["string", "null"]}}),
        obj({"s": S}),
        "type",
        OK,
        "old data may hold null",
    ),
    Case(
        "type changed",
        obj({"s": S}),
        obj({"s": I}),
        "type",
        "type",
        "no value is both a string and an integer",
    ),
    Case(
        "type added to untyped",
        {"properties": {"a": S}},
        obj({"a": S}),
        "type",
        OK,
        "the old schema allowed any JSON type at the root",
    ),
    Case(
        "type removed",
        obj({"a": S}),
        {"properties": {"a": S}},
        OK,
        "type",
        "new data may be a non-object",
    ),
    Case(
        "integer schema to number with same bounds",
        {"type": "integer", "minimum": 0},
        {"type": "number", "minimum": 0},
        OK,
        "type",
        "widening keeps the bound",
    ),
    # -- enum / const --------------------------------------------------------------------------
    Case(
        "enum value added",
        {"enum": ["a", "b"]},
        {"enum": ["a", "b", "c"]},
        OK,
        "enum",
        "old readers do not know 'c'",
    ),
    Case(
        "enum value removed",
        {"enum": ["a", "b"]},
        {"enum": ["a"]},
        "enum",
        OK,
        "old data may hold 'b'",
    ),
    Case(
        "const to enum containing it",
        {"const": "v1"},
        {"enum": ["v1", "v2"]},
        OK,
        "const",
        "new data may hold 'v2'",
    ),
    Case("const changed", {"const": "v1"}, {"const": "v2"}, "const", "const", "disjoint constants"),
    Case(
        "enum added to free string",
        S,
        {"type": "string", "enum": ["x"]},
        "enum",
        OK,
        "old data may hold any string",
    ),
    Case(
        "integer enum to integer type",
        {"enum": [1, 2]},
        I,
        OK,
        "enum",
        "any integer is wider than {1, 2}",
    ),
    Case(
        "boolean enum vs integer",
        {"enum": [True]},
        {"enum": [1]},
        "enum",
        "enum",
        "JSON true is not 1",
    ),
    # -- numeric bounds ------------------------------------------------------------------------
    Case(
        "minimum tightened",
        {"type": "number", "minimum": 0},
        {"type": "number", "minimum": 10},
        "minimum",
        OK,
        "old data may hold 5",
    ),
    Case(
        "minimum loosened",
        {"type": "number", "minimum": 10},
        {"type": "number", "minimum": 0},
        OK,
        "minimum",
        "new data may hold 5",
    ),
    Case(
        "maximum tightened",
        {"type": "number", "maximum": 10},
        {"type": "number", "maximum": 1},
        "maximum",
        OK,
        "old data may hold 5",
    ),
    Case(
        "maximum added", N, {"type": "number", "maximum": 1}, "maximum", OK, "old data is unbounded"
    ),
    Case(
        "minimum made exclusive",
        {"type": "number", "minimum": 0},
        {"type": "number", "exclusiveMinimum": 0},
        "exclusiveMinimum",
        OK,
        "old data may hold exactly 0",
    ),
    Case(
        "exclusive maximum made inclusive",
        {"type": "number", "exclusiveMaximum": 1},
        {"type": "number", "maximum": 1},
        OK,
        "exclusiveMaximum",
        "new data may hold exactly 1",
    ),
    Case(
        "severity range widened",
        obj({"severity": {"type": "number", "minimum": 0, "maximum": 1}}),
        obj({"severity": {"type": "number", "minimum": 0, "maximum": 10}}),
        OK,
        "maximum",
        "new data may hold severity 5",
    ),
    Case(
        "multipleOf relaxed 10 to 5",
        {"type": "integer", "multipleOf": 10},
        {"type": "integer", "multipleOf": 5},
        OK,
        "multipleOf",
        "multiples of 10 are multiples of 5, not the reverse",
    ),
    Case(
        "multipleOf 1 on integers",
        I,
        {"type": "integer", "multipleOf": 1},
        OK,
        OK,
        "every integer is a multiple of 1",
    ),
    # -- strings -------------------------------------------------------------------------------
    Case(
        "maxLength tightened",
        {"type": "string", "maxLength": 100},
        {"type": "string", "maxLength": 10},
        "maxLength",
        OK,
        "old data may be 50 chars",
    ),
    Case(
        "minLength loosened",
        {"type": "string", "minLength": 3},
        {"type": "string", "minLength": 1},
        OK,
        "minLength",
        "new data may be 2 chars",
    ),
    Case(
        "pattern added",
        S,
        {"type": "string", "pattern": "^[a-z]+$"},
        "pattern",
        OK,
        "old data may hold 'ABC'",
    ),
    Case(
        "pattern changed",
        {"type": "string", "pattern": "^a"},
        {"type": "string", "pattern": "^b"},
        "pattern",
        "pattern",
        "regex inclusion is not decided: reported",
    ),
    Case(
        "format added (2020-12 annotation)",
        S,
        {"type": "string", "format": "email"},
        OK,
        OK,
        "format is an annotation in 2020-12 and not asserted by the validator",
    ),
    Case(
        "format added (draft-07 asserted)",
        {"$schema": D7, "type": "string"},
        {"$schema": D7, "type": "string", "format": "email"},
        "format",
        OK,
        "draft-07 validators assert format",
    ),
    Case(
        "annotations changed only",
        {"type": "string", "description": "a", "default": "x"},
        {"type": "string", "description": "b", "default": "y", "title": "T"},
        OK,
        OK,
        "annotations do not validate",
    ),
    # -- arrays --------------------------------------------------------------------------------
    Case("items widened", arr(I), arr(N), OK, "type", "new data may hold 1.5 items"),
    Case("items narrowed", arr(N), arr(I), "type", OK, "old data may hold 1.5 items"),
    Case("minItems added", arr(S), arr(S, minItems=1), "minItems", OK, "old data may be []"),
    Case(
        "maxItems loosened",
        arr(S, maxItems=3),
        arr(S, maxItems=10),
        OK,
        "maxItems",
        "new data may hold 5 items",
    ),
    Case(
        "uniqueItems added",
        arr(S),
        arr(S, uniqueItems=True),
        "uniqueItems",
        OK,
        "old data may repeat items",
    ),
    Case(
        "array of objects: item field required",
        arr(obj({"id": S})),
        arr(obj({"id": S}, "id")),
        "required",
        OK,
        "old items may omit id",
    ),
    Case(
        "draft-07 tuple to 2020-12 prefixItems",
        {"$schema": D7, "type": "array", "items": [S, I], "additionalItems": False},
        {"$schema": D2020, "type": "array", "prefixItems": [S, I], "items": False},
        OK,
        OK,
        "the same tuple in both dialects",
    ),
    Case(
        "tuple position narrowed",
        {"type": "array", "prefixItems": [S, N]},
        {"type": "array", "prefixItems": [S, I]},
        "type",
        OK,
        "old data may hold 1.5 second",
    ),
    Case(
        "contains added",
        arr(S),
        arr(S, contains={"const": "x"}),
        "contains",
        OK,
        "old data need not contain 'x'",
    ),
    # -- nesting and references ----------------------------------------------------------------
    Case(
        "nested required added",
        obj({"meta": obj({"id": S})}),
        obj({"meta": obj({"id": S}, "id")}),
        "required",
        OK,
        "old nested objects may omit id",
    ),
    Case(
        "nested type widened",
        obj({"meta": obj({"n": I})}),
        obj({"meta": obj({"n": N})}),
        OK,
        "type",
        "new nested data may hold 1.5",
    ),
    Case(
        "refactor into $defs",
        obj({"a": obj({"x": S}, "x")}),
        {"$defs": {"A": obj({"x": S}, "x")}, **obj({"a": {"$ref": "#/$defs/A"}})},
        OK,
        OK,
        "same shape through a local $ref",
    ),
    Case(
        "$ref target narrowed",
        {"$defs": {"A": N}, **obj({"a": {"$ref": "#/$defs/A"}})},
        {"$defs": {"A": I}, **obj({"a": {"$ref": "#/$defs/A"}})},
        "type",
        OK,
        "the referenced schema narrowed",
    ),
    Case(
        "draft-07 definitions to 2020-12 $defs",
        {"$schema": D7, "definitions": {"A": S}, **obj({"a": {"$ref": "#/definitions/A"}})},
        {"$defs": {"A": S}, **obj({"a": {"$ref": "#/$defs/A"}})},
        OK,
        OK,
        "same shape in both dialects",
    ),
    Case("recursive schema unchanged", tree(S), tree(S), OK, OK, "coinductive recursion"),
    Case(
        "recursive schema leaf narrowed",
        tree(N),
        tree(I),
        "type",
        OK,
        "every node's value narrowed",
    ),
    # -- combinators ---------------------------------------------------------------------------
    Case(
        "anyOf widened",
        {"anyOf": [S, I]},
        {"anyOf": [S, I, {"type": "null"}]},
        OK,
        "anyOf",
        "new data may hold null",
    ),
    Case(
        "anyOf narrowed",
        {"anyOf": [S, I]},
        {"anyOf": [S]},
        "anyOf",
        OK,
        "old data may hold integers",
    ),
    Case(
        "oneOf variant added",
        {"oneOf": [obj({"kind": {"const": "a"}}, "kind"), obj({"kind": {"const": "b"}}, "kind")]},
        {
            "oneOf": [
                obj({"kind": {"const": "a"}}, "kind"),
                obj({"kind": {"const": "b"}}, "kind"),
                obj({"kind": {"const": "c"}}, "kind"),
            ]
        },
        OK,
        "oneOf",
        "old readers do not know kind 'c'",
    ),
    Case(
        "oneOf variant removed",
        {"oneOf": [obj({"kind": {"const": "a"}}, "kind"), obj({"kind": {"const": "b"}}, "kind")]},
        {"oneOf": [obj({"kind": {"const": "a"}}, "kind")]},
        "oneOf",
        OK,
        "old data may hold kind 'b'",
    ),
    Case(
        "string made nullable via anyOf",
        obj({"s": S}),
        obj({"s": {"anyOf": [S, {"type": "null"}]}}),
        OK,
        "type",
        "new data may hold null",
    ),
    Case(
        "allOf flattened",
        {"allOf": [obj({"a": S}), {"required": ["a"]}]},
        obj({"a": S}, "a"),
        OK,
        OK,
        "allOf of the same constraints",
    ),
    Case(
        "not added",
        S,
        {"type": "string", "not": {"const": ""}},
        "not",
        OK,
        "old data may be the empty string",
    ),
    Case(
        "if/then added",
        obj({"a": S}),
        obj({"a": S}, **{"if": {"required": ["a"]}, "then": {"required": ["b"]}}),
        "if",
        OK,
        "conditional constraints are compared verbatim",
    ),
    # -- boolean schemas -----------------------------------------------------------------------
    Case(
        "true to object schema",
        True,  # noqa: FBT003 - a boolean schema
        obj({"a": S}),
        "type",
        OK,
        "old data may be anything",
    ),
    Case(
        "object schema to true",
        obj({"a": S}),
        True,  # noqa: FBT003 - a boolean schema
        OK,
        "type",
        "new data may be anything",
    ),
    Case(
        "false to anything",
        False,  # noqa: FBT003 - a boolean schema
        S,
        OK,
        "false",
        "no old data; old reader accepts nothing",
    ),
]

assert len(CASES) >= 60, len(CASES)


def _keywords(old: Any, new: Any, policy: CompatibilityPolicy) -> tuple[set[str], set[str]]:
    backward = {c.keyword for c in find_breaking_changes(old, new, policy=policy)}
    forward = {c.keyword for c in find_breaking_changes(new, old, policy=policy)}
    return backward, forward


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_compatibility_table(case: Case) -> None:
    backward, forward = _keywords(case.old, case.new, case.policy)
    assert (case.backward is None) == (not backward), (case.why, backward)
    assert (case.forward is None) == (not forward), (case.why, forward)
    if case.backward:
        assert case.backward in backward, (case.why, backward)
    if case.forward:
        assert case.forward in forward, (case.why, forward)
    for mode, expected in (
        (CompatibilityMode.BACKWARD, case.backward is None),
        (CompatibilityMode.FORWARD, case.forward is None),
        (CompatibilityMode.FULL, case.backward is None and case.forward is None),
        (CompatibilityMode.NONE, True),
    ):
        report = check_compatibility(case.new, [(1, case.old)], mode=mode, policy=case.policy)
        assert report.compatible is expected, (mode, case.why, report.to_dict())


def test_every_change_has_path_keyword_and_reason() -> None:
    changes = find_breaking_changes(
        obj({"meta": obj({"tags": arr(S)})}),
        obj({"meta": obj({"tags": arr(I, minItems=1)}, "tags")}),
    )
    assert {(c.path, c.keyword) for c in changes} == {
        ("$.meta.tags", "required"),
        ("$.meta.tags", "minItems"),
        ("$.meta.tags[*]", "type"),
    }
    assert all(c.reason for c in changes)


# -- transitive modes over 3-version histories ------------------------------------------------

V1 = obj({"a": S, "b": S}, "a")  # b: string
V2 = obj({"a": S}, "a")  # b dropped (open model: still allowed as an extra)
V3 = obj({"a": S, "b": I}, "a")  # b re-added as an integer: clashes with v1 only

MAX1 = obj({"x": {"type": "number", "maximum": 1}})
MAX5 = obj({"x": {"type": "number", "maximum": 5}})
MAX10 = obj({"x": {"type": "number", "maximum": 10}})

HISTORIES = [
    (
        "field re-added with another type",
        [V1, V2],
        V3,
        {
            CompatibilityMode.BACKWARD: True,
            CompatibilityMode.BACKWARD_TRANSITIVE: False,
            CompatibilityMode.FORWARD: True,
            CompatibilityMode.FORWARD_TRANSITIVE: False,
            CompatibilityMode.FULL: True,
            CompatibilityMode.FULL_TRANSITIVE: False,
            CompatibilityMode.NONE: True,
        },
        "v3 is fine next to v2 but its 'b: integer' contradicts v1's 'b: string'",
    ),
    (
        "bound widened step by step",
        [MAX1, MAX5],
        MAX10,
        {
            CompatibilityMode.BACKWARD: True,
            CompatibilityMode.BACKWARD_TRANSITIVE: True,
            CompatibilityMode.FORWARD: False,
            CompatibilityMode.FORWARD_TRANSITIVE: False,
            CompatibilityMode.FULL: False,
            CompatibilityMode.FULL_TRANSITIVE: False,
            CompatibilityMode.NONE: True,
        },
        "widening is backward-compatible with every version, never forward",
    ),
    (
        "bound tightened back",
        [MAX10, MAX5],
        MAX1,
        {
            CompatibilityMode.BACKWARD: False,
            CompatibilityMode.BACKWARD_TRANSITIVE: False,
            CompatibilityMode.FORWARD: True,
            CompatibilityMode.FORWARD_TRANSITIVE: True,
            CompatibilityMode.FULL: False,
            CompatibilityMode.FULL_TRANSITIVE: False,
            CompatibilityMode.NONE: True,
        },
        "narrowing is forward-compatible with every version, never backward",
    ),
    (
        "required added then made optional",
        [obj({"a": S}), obj({"a": S}, "a")],
        obj({"a": S, "c": I}, "a"),
        {
            CompatibilityMode.BACKWARD: True,
            CompatibilityMode.BACKWARD_TRANSITIVE: False,
            CompatibilityMode.FORWARD: True,
            CompatibilityMode.FORWARD_TRANSITIVE: True,
            CompatibilityMode.FULL: True,
            CompatibilityMode.FULL_TRANSITIVE: False,
            CompatibilityMode.NONE: True,
        },
        "v1 data may omit 'a', which v3 requires; v2 data always has it",
    ),
]


@pytest.mark.parametrize(
    ("name", "history", "candidate", "verdicts", "why"), HISTORIES, ids=[h[0] for h in HISTORIES]
)
def test_transitive_modes_over_three_versions(name, history, candidate, verdicts, why) -> None:
    numbered = list(enumerate(history, start=1))
    for mode, expected in verdicts.items():
        report = check_compatibility(candidate, numbered, mode=mode)
        assert report.compatible is expected, (name, mode, why, report.to_dict())
        if mode.transitive:
            assert report.checked_versions == (1, 2)
        elif mode is not CompatibilityMode.NONE:
            assert report.checked_versions == (2,)


def test_transitive_report_names_the_old_version_at_fault() -> None:
    report = check_compatibility(V3, [(1, V1), (2, V2)], mode=CompatibilityMode.FULL_TRANSITIVE)
    assert {(c.version, c.direction) for c in report.changes} == {(1, "backward"), (1, "forward")}
    assert all(c.change.path == "$.b" for c in report.changes)


def test_first_version_is_always_compatible() -> None:
    report = check_compatibility(S, [], mode=CompatibilityMode.FULL_TRANSITIVE)
    assert report.compatible
    assert report.checked_versions == ()


def test_unsupported_dialect_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        find_breaking_changes({"$schema": "http://json-schema.org/draft-04/schema#"}, S)
