"""The local stack: real nats-server and PostgreSQL plus every service, as processes."""
