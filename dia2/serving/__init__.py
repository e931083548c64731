"""Serving: many utterances at once on one model (`Engine`), for the server and the studio.
Imports generation and the layers below it, never evaluation or the studio.

    engine.py, batch.py, requests.py   the engine, its batched frame kernels, what a client holds
    voices.py, voice_folder.py, voice_upload.py, voice_defaults.py, voice_maker.py, voice_adapters.py
                      stored voices: the folder replicas share, upload checks, per-voice settings,
                      making a voice from recordings, adapter voices
    api.py, speech.py, openai_errors.py, operations.py
                      the OpenAI-compatible HTTP API (FastAPI): routes, speech streams, errors,
                      metrics and CORS
"""
