"""Stage 5, the networks: the loader (official folders, known names, dummy weights) and one module
per family; blocks/ holds what families share."""
