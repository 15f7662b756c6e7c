"""Loads the shared pytest plugin with the real-server fixtures (nats-server, PostgreSQL)."""

pytest_plugins = ("backbone.testing",)
