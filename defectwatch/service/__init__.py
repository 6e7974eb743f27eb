"""The composition root: configuration, use cases and the command line."""
