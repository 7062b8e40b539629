"""Stage 1, what to transcribe: manifests (CSV, TSV, JSON Lines) and scanned folders as validated
rows, and static shards."""
