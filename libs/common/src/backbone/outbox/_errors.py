"""Errors of the outbox, rooted at :class:`backbone.errors.OutboxError`."""

from __future__ import annotations

from backbone.errors import OutboxError


class MigrationError(OutboxError):
    """The outbox schema could not be created or upgraded."""


class NotInTransactionError(OutboxError):
    """``enqueue`` was called on an autocommit connection outside a transaction block.

    The event would be committed on its own, which is exactly what the outbox exists to prevent.
    """


__all__ = ["MigrationError", "NotInTransactionError", "OutboxError"]
