"""Stage 7, running jobs: options, the worker's stages, job preparation, and the engines (one
process, N processes, Ray)."""
