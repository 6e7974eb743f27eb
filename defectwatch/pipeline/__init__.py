"""Pure science: arrays in, dataclasses out. No database, no daemon, no settings."""
