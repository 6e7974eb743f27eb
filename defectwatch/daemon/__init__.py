"""The watch-folder daemon (watcher, readiness, worker). Filled in by the daemon issue."""
