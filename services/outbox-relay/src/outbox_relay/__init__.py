"""outbox-relay: publishes committed ``backbone_outbox`` rows to JetStream (``backbone.outbox``)."""

from outbox_relay.app import RelayApp, create_app
from outbox_relay.settings import Settings

__all__ = ["RelayApp", "Settings", "create_app"]
