"""Implementation of `backbone.events` (private; import from `backbone.events`)."""
