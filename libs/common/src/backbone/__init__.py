"""Backbone: CloudEvents on NATS JetStream with a resilience layer."""

__all__: list[str] = []
