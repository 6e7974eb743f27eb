"""The watch-folder daemon: watcher, readiness, start-up reconcile, worker loop, signals.

It is handed a `JobQueue`, a ``process(job)`` callable and an ``expected_size(path)`` callable
(see `defectwatch.daemon.ports`); it never imports the pipeline or the database.
``run_daemon`` (in `defectwatch.daemon.runner`) is the entry point.
"""
