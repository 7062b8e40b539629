"""The local worker's stages, huey-consumer shaped (initialize / one short step / shutdown).

``work`` (the item and piece records every stage shares) -> ``progress`` (bar and progress
file) -> ``pool`` (pieces -> length-sorted batches) -> ``model`` (the batch in flight, the
one-by-one retry, the failure streak) -> ``completion`` (the result recorder: assembled
transcripts -> rows, subtitles, segment cache -> queue commit) -> ``feed`` (claiming,
reader threads, decoding, VAD feeding). A module imports only the ones before it;
``batchasr.runner.local`` composes them into the job loop.
"""
