"""Building blocks the model families share: SAN-M, Qwen3, the fbank frontend, CIF, CTC,
generation, text rules, VAD and punctuation helpers."""
