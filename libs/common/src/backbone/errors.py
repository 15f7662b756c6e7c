"""The one exception tree of Backbone.

Every error raised on purpose by Backbone code derives from :class:`BackboneError`, and carries its
context as attributes so callers never have to parse messages::

    BackboneError
    ├── ConfigError (ValueError)             invalid setting / file; names the variable or key
    ├── EventError (ValueError)              a CloudEvent breaks the spec; names the attribute
    │   └── BindingError                     a NATS/HTTP message cannot be decoded as a CloudEvent
    ├── StreamError                          stream provisioning or lookup failed
    │   └── NoStreamForSubjectError          no stream captures an event's subject (never dropped)
    ├── PublishError                         a publish was not acknowledged by JetStream
    │   ├── MessageTooLargeError             refused before sending: over the stream/server limit
    │   └── PublishTimeoutError (TimeoutError)
    ├── ConsumeError                         consumer helper failures
    ├── ResilienceError                      (backbone.resilience) breaker open, bulkhead full, ...
    ├── SchemaError                          (backbone.schemas) registry / validation failures
    └── OutboxError                          (backbone.outbox) outbox failures

Sub-packages may add deeper subclasses; they always root here. Errors from nats-py, psycopg and
pydantic are mapped to these at the library boundary only.
"""

from __future__ import annotations


class BackboneError(Exception):
    """Root of every error Backbone raises on purpose."""


class ConfigError(BackboneError, ValueError):
    """A setting or configuration file is invalid.

    Attributes:
        variable: The environment variable, file key or option at fault, when known.
    """

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class EventError(BackboneError, ValueError):
    """A CloudEvent violates the specification.

    Attributes:
        attribute: The CloudEvents attribute (or JSON path) at fault, when known.
        event_id: The event's id, when it could be read.
    """

    def __init__(
        self, message: str, *, attribute: str | None = None, event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.attribute = attribute
        self.event_id = event_id


class BindingError(EventError):
    """A transport message cannot be decoded as a CloudEvent (bad headers, UTF-8 or JSON)."""


class StreamError(BackboneError):
    """A stream could not be created, updated or looked up.

    Attributes:
        stream: The stream's name, when known.
    """

    def __init__(self, message: str, *, stream: str | None = None) -> None:
        super().__init__(message)
        self.stream = stream


class NoStreamForSubjectError(StreamError):
    """No stream captures this subject, so the event is refused rather than silently dropped.

    Attributes:
        subject: The subject nobody captures.
    """

    def __init__(self, subject: str) -> None:
        super().__init__(
            f"no stream captures subject {subject!r}; add one to deploy/streams.yaml "
            "or publish under a captured prefix",
        )
        self.subject = subject


class PublishError(BackboneError):
    """JetStream did not acknowledge a publish.

    Attributes:
        subject: The subject published to.
        event_id: The CloudEvent id, when known.
    """

    def __init__(
        self, message: str, *, subject: str | None = None, event_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.subject = subject
        self.event_id = event_id


class MessageTooLargeError(PublishError):
    """The encoded event exceeds the stream's or the server's size limit; nothing was sent.

    Attributes:
        size_bytes: The encoded size.
        limit_bytes: The limit it exceeds.
    """

    def __init__(
        self,
        message: str,
        *,
        size_bytes: int,
        limit_bytes: int,
        subject: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message, subject=subject, event_id=event_id)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class PublishTimeoutError(PublishError, TimeoutError):
    """No PubAck arrived in time; the event may or may not be stored (a retry deduplicates)."""


class ConsumeError(BackboneError):
    """The consumer helper could not set up or run a consumer."""


class ResilienceError(BackboneError):
    """Root of the resilience patterns' errors (see `backbone.resilience`)."""


class SchemaError(BackboneError):
    """Root of schema registry and validation errors (see `backbone.schemas`)."""


class OutboxError(BackboneError):
    """Root of transactional outbox errors (see `backbone.outbox`)."""
