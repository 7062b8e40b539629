"""Stage 2, the job's state: the SQLite queue of items, the job lock, live progress files, status,
the local-disk check."""
