"""Shared pieces of the configuration models (exception classes given by dotted name)."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = ["ExceptionTypes", "resolve_exception_type"]


def resolve_exception_type(value: Any) -> type[BaseException]:  # noqa: ANN401 - raw config input
    """Turn ``"builtins.ConnectionError"`` or ``"httpx.ConnectError"`` into the class."""
    if isinstance(value, type) and issubclass(value, BaseException):
        return value
    if not isinstance(value, str):
        msg = f"expected an exception class or its dotted name, got {value!r}"
        raise TypeError(msg)
    module_name, _, attr = value.rpartition(".")
    module = importlib.import_module(module_name or "builtins")
    found = getattr(module, attr, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        msg = f"{value!r} is not an exception class"
        raise ValueError(msg)  # noqa: TRY004 - pydantic wants ValueError for a validation failure
    return found


def _resolve_all(value: Any) -> Any:  # noqa: ANN401 - raw config input
    if isinstance(value, (str, type)):
        value = [value]
    return tuple(resolve_exception_type(item) for item in value)


def _dotted(types: tuple[type[BaseException], ...]) -> list[str]:
    return [f"{t.__module__}.{t.__qualname__}" for t in types]


ExceptionTypes = Annotated[
    tuple[type[BaseException], ...],
    BeforeValidator(_resolve_all),
    PlainSerializer(_dotted, return_type=list[str]),
]
"""A tuple of exception classes; YAML/env give dotted names, JSON dumps give them back."""
