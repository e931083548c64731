"""Serving: many utterances at once on one model (`Engine`), for the server and the studio.
Imports generation and the layers below it, never evaluation or the studio.

    config.py         `EngineConfig`: how an engine is sized (a section of the server's and the
                      studio's options)
    requests.py       what a client holds: `Request`, `Handle`, and the `Channel` it shares with
                      the engine
    engine.py         `Engine`, the scheduler (as vLLM splits one): queue, admission, adapters,
                      each utterance's state machine
    executor.py, rows.py
                      `FrameExecutor`, a frame's model work, over `RowTable`, the dense cache rows
                      and their positions
    voices.py, voice_folder.py, voice_upload.py, prefix_maker.py, voice_adapters.py
                      stored voices (`dia2.generation.voice.Voice` folders under their names): the
                      folder replicas share, upload checks, making a voice's prefix from
                      recordings, adapter voices
    api.py, speech.py, openai_errors.py, operations.py
                      the OpenAI-compatible HTTP API (FastAPI): routes, speech streams, errors,
                      metrics and CORS
"""
