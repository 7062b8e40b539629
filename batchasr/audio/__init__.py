"""Stage 3, audio: decoding and resampling to 16 kHz mono, and cutting a file into pieces (windows
or VAD segments)."""
