"""The decorator form shared by the patterns: ``@pattern`` on a coroutine or a plain function.

Each pattern defines ``call`` and ``call_sync``; this mixin turns them into ``__call__``. A
pattern whose success path matters overrides ``_decorate_async`` / ``_decorate_sync`` with an
inlined wrapper, so the shared plumbing never adds a call level where the benchmark measures.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["CallDecorator"]

P = ParamSpec("P")
R = TypeVar("R")


class CallDecorator:
    """Mixin giving a pattern with ``call`` and ``call_sync`` its decorator form."""

    __slots__ = ()

    if TYPE_CHECKING:

        async def call(
            self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
        ) -> R: ...

        def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a coroutine function or a plain function."""
        if inspect.iscoroutinefunction(fn):
            return self._decorate_async(cast("Callable[P, Awaitable[Any]]", fn))
        return self._decorate_sync(fn)

    def _decorate_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        call = self.call  # bound once: the wrapper skips an attribute lookup per call

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return await call(fn, *args, **kwargs)

        return wrapper

    def _decorate_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        call_sync = self.call_sync

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return call_sync(fn, *args, **kwargs)

        return wrapper
