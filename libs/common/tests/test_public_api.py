import importlib

import pytest

from backbone import errors

PACKAGES = [
    "backbone.events",
    "backbone.messaging",
    "backbone.outbox",
    "backbone.resilience",
    "backbone.schemas",
    "backbone.service",
    "backbone.telemetry",
]


def isort_key(name):
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    exported = module.__all__
    # "Sorted" as ruff's RUF022 sorts: CONSTANTS, then Classes, then functions.
    assert exported == sorted(exported, key=isort_key)
    missing = [symbol for symbol in exported if not hasattr(module, symbol)]
    assert missing == []
    public = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (
            getattr(value, "__module__", "") == name
            or getattr(value, "__module__", "").startswith(name + "._")
        )
        and not isinstance(value, type(importlib))
    }
    assert public <= set(exported) | {"annotations"}


def test_every_error_roots_at_backbone_error():
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, errors.BackboneError)
