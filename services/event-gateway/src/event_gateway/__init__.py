"""Backbone event-gateway: CloudEvents over HTTP and webhooks into JetStream."""
