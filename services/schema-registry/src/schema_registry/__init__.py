"""Backbone schema-registry service."""
