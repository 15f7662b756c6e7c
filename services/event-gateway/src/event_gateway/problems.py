"""RFC 9457 problem details: the one error shape of the gateway's HTTP API.

Every refusal is a :class:`ProblemError` (a :class:`~backbone.errors.BackboneError`) raised by the
plain logic and rendered once, at the HTTP boundary, as ``application/problem+json``::

    {"type": "https://backbone.dev/problems/invalid-attribute", "title": "Invalid attribute",
     "status": 400, "detail": "source 'a b' is not an RFC 3986 URI-reference",
     "attribute": "source", "event_id": "A234"}

Extension members: ``attribute`` (CloudEvents attribute or header at fault), ``path`` (JSON path
inside ``data``), ``event_id``, ``reason`` (machine-readable rejection reason, also the metrics
label), ``retry_after_s``.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson
from starlette.responses import Response

from backbone.errors import BackboneError

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_BASE: Final = "https://backbone.dev/problems/"

_TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    503: "Service unavailable",
}


class ProblemError(BackboneError):
    """A refused request (or batch item), with everything its problem document needs.

    Attributes:
        status: HTTP status.
        reason: Machine-readable reason (``invalid-attribute``, ``schema``, ``rate-limited``...),
            the last segment of ``type`` and the ``reason`` label of the rejection metric.
        detail: Human-readable explanation.
        attribute: CloudEvents attribute (or header) at fault.
        path: JSON path inside ``data`` at fault.
        event_id: The event's id, when known.
        retry_after_s: Seconds before a retry can succeed (sets ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        attribute: str | None = None,
        path: str | None = None,
        event_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.attribute = attribute
        self.path = path
        self.event_id = event_id
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str | None:
        """``Retry-After`` in whole seconds (at least 1), when a retry hint exists."""
        if self.retry_after_s is None:
            return None
        wait = self.retry_after_s
        if not math.isfinite(wait):
            wait = 60.0
        return str(max(1, math.ceil(wait)))

    def to_dict(self) -> dict[str, Any]:
        """The problem document."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.reason,
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
        }
        if self.attribute is not None:
            body["attribute"] = self.attribute
        if self.path is not None:
            body["path"] = self.path
        if self.event_id is not None:
            body["event_id"] = self.event_id
        if self.retry_after_s is not None:
            body["retry_after_s"] = int(self.retry_after_header or "1")
        return body

    def response(self, headers: dict[str, str] | None = None) -> Response:
        """The ``application/problem+json`` response."""
        out = dict(headers or {})
        retry = self.retry_after_header
        if retry is not None:
            out["Retry-After"] = retry
        return Response(
            orjson.dumps(self.to_dict()),
            status_code=self.status,
            media_type=PROBLEM_CONTENT_TYPE,
            headers=out,
        )
