"""Backbone anomaly-detector service."""
