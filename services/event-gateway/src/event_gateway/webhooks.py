"""Webhooks into CloudEvents: GitHub deliveries and generic HMAC-signed senders.

GitHub (``/v1/webhooks/github``): ``X-Hub-Signature-256`` is ``sha256=`` + hex HMAC-SHA256 of the
raw body with the hook's secret, compared in constant time. Each delivery becomes::

    type     github.<X-GitHub-Event>[.<payload.action>]     e.g. github.pull_request.opened
    source   the repository's html_url, else https://github.com/<organization>, else the
             sender's, else https://github.com
    id       X-GitHub-Delivery (a redelivery reuses it, so JetStream drops the repeat)
    subject  push/create/delete: the ref; pull_request*: the PR number; issues/issue_comment:
             the issue number; workflow_run/workflow_job/check_run: the run/job id; release:
             the tag; ping: the hook id; otherwise none
    data     the JSON payload (form-encoded ``payload=`` bodies are decoded first)
    extensions githubhookid (X-GitHub-Hook-ID) when present

Generic senders (``/v1/webhooks/<name>``): configured per hook (secret, signature header and
prefix, digest, type prefix under ``webhook.<name>``, optional event and delivery-id headers).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import orjson

from backbone.errors import EventError
from backbone.events import CloudEvent
from event_gateway.problems import ProblemError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from event_gateway.settings import WebhookHookSettings

GITHUB_SIGNATURE_HEADER: Final = "x-hub-signature-256"
GITHUB_EVENT_HEADER: Final = "x-github-event"
GITHUB_DELIVERY_HEADER: Final = "x-github-delivery"
GITHUB_HOOK_ID_HEADER: Final = "x-github-hook-id"
GITHUB_TYPE_PREFIX: Final = "github"
GITHUB_URL: Final = "https://github.com"
# One subject token: what backbone.messaging.subject_for accepts, minus nothing.
_TOKEN_BAD: Final = re.compile(r"[^A-Za-z0-9_\-:+=@~]")
_MAX_TOKEN: Final = 64


def sign(secret: bytes, body: bytes, *, algorithm: str = "sha256") -> str:
    """Hex HMAC of ``body`` (what a sender puts after ``sha256=``)."""
    return hmac.new(secret, body, algorithm).hexdigest()


def verify_signature(
    secret: bytes,
    body: bytes,
    header: str | None,
    *,
    prefix: str = "sha256=",
    algorithm: str = "sha256",
) -> bool:
    """Whether ``header`` is ``prefix`` + the hex HMAC of ``body``; constant-time comparison."""
    if header is None:
        return False
    expected = (prefix + sign(secret, body, algorithm=algorithm)).encode("ascii")
    try:
        presented = header.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    # Hex digits may come in either case; the prefix is compared case-insensitively too.
    return hmac.compare_digest(expected.lower(), presented.lower())


def type_token(value: str) -> str:
    """A value (event name, action) as one subject token: odd characters become ``_``."""
    token = _TOKEN_BAD.sub("_", value.strip())[:_MAX_TOKEN]
    return token or "_"


def _decode_payload(body: bytes, content_type: str) -> Any:  # noqa: ANN401 - any JSON value
    media = content_type.split(";", 1)[0].strip().lower()
    raw: bytes | str = body
    if media == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise ProblemError(400, "invalid-body", "form body is not valid") from None
        values = fields.get("payload")
        if not values:
            raise ProblemError(400, "invalid-body", "form body has no 'payload' field")
        raw = values[0]
    elif media != "application/json" and not media.endswith("+json"):
        raise ProblemError(
            415,
            "unsupported-media-type",
            f"webhook bodies must be application/json or form-encoded, not {media!r}",
            attribute="content-type",
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(400, "invalid-body", f"webhook body is not JSON: {exc}") from None


def _str_or_none(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str) and str(value):
        return str(value)
    return None


def _get(payload: Mapping[str, Any], *path: str) -> object:
    value: object = payload
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def github_source(payload: Mapping[str, Any]) -> str:
    """The repository (or organisation, or sender) URL a delivery is about."""
    repo_url = _get(payload, "repository", "html_url")
    if isinstance(repo_url, str) and repo_url.startswith("https://"):
        return repo_url
    for owner in ("organization", "sender"):
        login = _get(payload, owner, "login")
        if isinstance(login, str) and login and not _TOKEN_BAD.search(login):
            return f"{GITHUB_URL}/{login}"
    return GITHUB_URL


def github_subject(event: str, payload: Mapping[str, Any]) -> str | None:  # noqa: PLR0911 - one case per event family
    """The CloudEvents ``subject`` of a delivery (see the module doc)."""
    if event in {"push", "create", "delete"}:
        return _str_or_none(payload.get("ref"))
    if event.startswith("pull_request"):
        return _str_or_none(_get(payload, "pull_request", "number") or payload.get("number"))
    if event in {"issues", "issue_comment"}:
        return _str_or_none(_get(payload, "issue", "number"))
    if event in {"workflow_run", "workflow_job", "check_run", "check_suite"}:
        return _str_or_none(_get(payload, event, "id"))
    if event == "release":
        return _str_or_none(_get(payload, "release", "tag_name"))
    if event == "ping":
        return _str_or_none(payload.get("hook_id"))
    return None


def github_event(
    headers: Mapping[str, str], body: bytes, *, secret: bytes | None, now: datetime | None = None
) -> CloudEvent:
    """Verify a GitHub delivery and map it to a CloudEvent.

    Raises:
        ProblemError: 401 bad/missing signature (or no secret configured: 503 would leak nothing
            useful, so 401 too), 400 missing headers or bad body, 415 unsupported body type.
    """
    if secret is None:
        raise ProblemError(
            401, "unauthorized", "no GitHub webhook secret is configured; deliveries are refused"
        )
    if not verify_signature(secret, body, headers.get(GITHUB_SIGNATURE_HEADER)):
        raise ProblemError(
            401,
            "bad-signature",
            "X-Hub-Signature-256 does not match the body",
            attribute=GITHUB_SIGNATURE_HEADER,
        )
    event_name = headers.get(GITHUB_EVENT_HEADER, "").strip()
    delivery = headers.get(GITHUB_DELIVERY_HEADER, "").strip()
    if not event_name:
        raise ProblemError(
            400, "missing-header", "X-GitHub-Event is required", attribute=GITHUB_EVENT_HEADER
        )
    if not delivery:
        raise ProblemError(
            400, "missing-header", "X-GitHub-Delivery is required", attribute=GITHUB_DELIVERY_HEADER
        )
    payload = _decode_payload(body, headers.get("content-type", "application/json"))
    if not isinstance(payload, dict):
        raise ProblemError(400, "invalid-body", "a GitHub payload must be a JSON object")
    event_type = f"{GITHUB_TYPE_PREFIX}.{type_token(event_name)}"
    action = payload.get("action")
    if isinstance(action, str) and action:
        event_type += "." + type_token(action)
    extensions: dict[str, str] = {}
    hook_id = headers.get(GITHUB_HOOK_ID_HEADER, "").strip()
    if hook_id.isdigit():
        extensions["githubhookid"] = hook_id
    try:
        return CloudEvent.create(
            id=delivery,
            type=event_type,
            source=github_source(payload),
            subject=github_subject(event_name, payload),
            time=now or datetime.now(UTC),
            datacontenttype="application/json",
            data=payload,
            extensions=extensions,
        )
    except EventError as exc:
        raise ProblemError(
            400, "invalid-attribute", str(exc), attribute=exc.attribute, event_id=delivery
        ) from None


def generic_event(
    name: str,
    hook: WebhookHookSettings,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime | None = None,
) -> CloudEvent:
    """Verify a generic sender's delivery and map it to a CloudEvent.

    Raises:
        ProblemError: 401 bad signature, 400 bad body or header values.
    """
    secret = hook.secret.get_secret_value().encode("utf-8")
    signature_header = hook.signature_header.lower()
    if not verify_signature(
        secret,
        body,
        headers.get(signature_header),
        prefix=hook.signature_prefix,
        algorithm=hook.algorithm,
    ):
        raise ProblemError(
            401,
            "bad-signature",
            f"{hook.signature_header} does not match the body",
            attribute=signature_header,
        )
    prefix = hook.type_prefix or f"webhook.{name}"
    event_name = "received"
    if hook.event_header:
        given = headers.get(hook.event_header.lower(), "").strip()
        if given:
            event_name = ".".join(type_token(part) for part in given.split(".") if part) or "_"
    delivery = None
    if hook.id_header:
        delivery = headers.get(hook.id_header.lower(), "").strip() or None
    content_type = headers.get("content-type", "application/octet-stream").strip()
    media = content_type.split(";", 1)[0].strip().lower()
    data: Any
    if media == "application/json" or media.endswith("+json"):
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise ProblemError(
                400, "invalid-body", f"body is declared JSON but is not: {exc}"
            ) from None
    else:
        data = body
    try:
        return CloudEvent.create(
            id=delivery or hashlib.sha256(body).hexdigest(),
            type=f"{prefix}.{event_name}",
            source=hook.source or f"/webhooks/{name}",
            time=now or datetime.now(UTC),
            datacontenttype=content_type or None,
            data=data,
        )
    except EventError as exc:
        raise ProblemError(400, "invalid-attribute", str(exc), attribute=exc.attribute) from None
