"""Stage 4, batches: pieces grouped by length into padded batches, and transcribed pieces put back
into one transcript per file."""
