"""Stage 6, results: rows and Parquet parts, the segment resume cache, per-format writers (SRT,
VTT, TXT, JSONL, Parquet) and export."""
