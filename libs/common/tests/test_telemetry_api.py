from __future__ import annotations

import inspect

import backbone.ops
import backbone.telemetry


def test_all_is_sorted_and_complete():
    exported = backbone.telemetry.__all__
    assert exported == sorted(exported)
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
