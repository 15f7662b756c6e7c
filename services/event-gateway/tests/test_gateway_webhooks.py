"""GitHub and generic webhooks: signatures, mapping to CloudEvents, redelivery deduplication."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest

from event_gateway.problems import ProblemError
from event_gateway.testing import GITHUB_SECRET, HOOK_SECRET, stored_events
from event_gateway.webhooks import github_event, sign, verify_signature

PAYLOADS = Path(__file__).parent / "data" / "github"
REPO_URL = "https://github.com/octocat/Hello-World"


def test_github_documented_signature_test_vector():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    secret = b"It's a Secret to Everybody"
    body = b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert "sha256=" + sign(secret, body) == expected
    assert verify_signature(secret, body, expected)
    assert verify_signature(secret, body, expected.upper().replace("SHA256=", "sha256="))
    assert not verify_signature(secret, body + b" ", expected)
    assert not verify_signature(b"wrong", body, expected)
    assert not verify_signature(secret, body, None)
    assert not verify_signature(secret, body, "sha256=zz")
    assert not verify_signature(secret, body, "sha256=é")


def delivery(
    event: str, body: bytes, *, delivery_id: str | None = None, secret: str = GITHUB_SECRET
):
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "content-type": "application/json",
        "x-github-event": event,
        "x-github-delivery": delivery_id or str(uuid.uuid4()),
        "x-github-hook-id": "109948940",
        "x-hub-signature-256": signature,
        "user-agent": "GitHub-Hookshot/abc123",
    }


EXPECTED = {
    "push": ("github.push", REPO_URL, "refs/heads/main"),
    "pull_request": ("github.pull_request.opened", REPO_URL, "1347"),
    "issues": ("github.issues.labeled", REPO_URL, "1347"),
    "workflow_run": ("github.workflow_run.completed", REPO_URL, "30433642"),
    "release": ("github.release.published", REPO_URL, "v1.0.0"),
    "ping": ("github.ping", "https://github.com/octo-org", "109948940"),
}


@pytest.mark.parametrize("event", sorted(EXPECTED))
def test_github_delivery_maps_to_the_expected_cloudevent(event):
    body = (PAYLOADS / f"{event}.json").read_bytes()
    headers = delivery(event, body, delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    mapped = github_event(headers, body, secret=GITHUB_SECRET.encode())
    event_type, source, subject = EXPECTED[event]
    assert mapped.type == event_type
    assert mapped.source == source
    assert mapped.subject == subject
    assert mapped.id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert mapped.datacontenttype == "application/json"
    assert mapped.data == orjson.loads(body)
    assert mapped.extensions == {"githubhookid": "109948940"}


def test_github_form_encoded_delivery_is_decoded():
    payload = (PAYLOADS / "ping.json").read_text()
    body = urlencode({"payload": payload}).encode()
    headers = {**delivery("ping", body), "content-type": "application/x-www-form-urlencoded"}
    assert github_event(headers, body, secret=GITHUB_SECRET.encode()).data["zen"]


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda h: h.pop("x-hub-signature-256"), 401),
        (lambda h: h.update({"x-hub-signature-256": "sha256=" + "0" * 64}), 401),
        (lambda h: h.pop("x-github-event"), 400),
        (lambda h: h.pop("x-github-delivery"), 400),
        (lambda h: h.update({"content-type": "text/plain"}), 415),
    ],
)
def test_github_bad_deliveries_are_refused(mutate, status):
    body = (PAYLOADS / "push.json").read_bytes()
    headers = delivery("push", body)
    mutate(headers)
    with pytest.raises(ProblemError) as info:
        github_event(headers, body, secret=GITHUB_SECRET.encode())
    assert info.value.status == status


async def test_github_deliveries_are_stored_and_a_redelivery_only_once(gateway, streams):
    client, _ = gateway
    for event in sorted(EXPECTED):
        body = (PAYLOADS / f"{event}.json").read_bytes()
        resp = await client.post("/v1/webhooks/github", content=body, headers=delivery(event, body))
        assert resp.status_code == (200 if event == "ping" else 202), resp.text
        assert resp.json()["stream"] == "WEBHOOK_EVENTS"
        assert resp.json()["type"] == EXPECTED[event][0]
    body = (PAYLOADS / "push.json").read_bytes()
    headers = delivery("push", body, delivery_id="redelivered-1")
    first = await client.post("/v1/webhooks/github", content=body, headers=headers)
    again = await client.post("/v1/webhooks/github", content=body, headers=headers)
    assert first.json()["duplicate"] is False
    assert again.status_code == 202
    assert again.json()["duplicate"] is True
    assert again.json()["seq"] == first.json()["seq"]
    stored = [event for _, event in await stored_events(streams, "WEBHOOK_EVENTS")]
    assert len(stored) == len(EXPECTED) + 1
    assert [e.id for e in stored].count("redelivered-1") == 1
    assert {e.type for e in stored} == {t for t, _, _ in EXPECTED.values()}


async def test_github_bad_signature_stores_nothing(gateway, streams):
    client, _ = gateway
    body = (PAYLOADS / "push.json").read_bytes()
    headers = delivery("push", body, secret="not the secret")
    resp = await client.post("/v1/webhooks/github", content=body, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["attribute"] == "x-hub-signature-256"
    assert await stored_events(streams, "WEBHOOK_EVENTS") == []


async def test_generic_webhook_uses_its_configuration(gateway, streams):
    client, _ = gateway
    body = b'{"order": 17, "state": "paid"}'
    signature = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/json",
        "x-acme-signature": signature,
        "x-acme-event": "order.paid",
        "x-acme-delivery": "d-17",
    }
    resp = await client.post("/v1/webhooks/acme", content=body, headers=headers)
    assert resp.status_code == 202, resp.text
    assert resp.json()["type"] == "webhook.acme.order.paid"
    again = await client.post("/v1/webhooks/acme", content=body, headers=headers)
    assert again.json()["duplicate"] is True
    resp = await client.post(
        "/v1/webhooks/acme", content=body, headers={**headers, "x-acme-signature": "sha256=00"}
    )
    assert resp.status_code == 401
    resp = await client.post("/v1/webhooks/unknown", content=body, headers=headers)
    assert resp.status_code == 404
    [(_, event)] = await stored_events(streams, "WEBHOOK_EVENTS")
    assert event.source == "/webhooks/acme"
    assert event.id == "d-17"
    assert event.data == {"order": 17, "state": "paid"}
