from __future__ import annotations

import inspect

import backbone.ops
import backbone.telemetry


def _isort_key(name):
    # "Sorted" as ruff's RUF022 sorts: CONSTANTS, then Classes, then functions.
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_complete():
    exported = backbone.telemetry.__all__
    assert exported == sorted(exported, key=_isort_key)
    public = {
        name
        for name, value in vars(backbone.telemetry).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(exported)


def test_ops_all_is_sorted_and_names_exist():
    assert backbone.ops.__all__ == sorted(backbone.ops.__all__)
    for name in backbone.ops.__all__:
        assert hasattr(backbone.ops, name)
