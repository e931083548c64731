"""Serving: many utterances at once on one model, for the server and the studio.

The engine, as vLLM splits one: `requests` (what a client holds: `Request`, `Handle`, and the
`Channel` it shares with the engine) -> `engine` (`Engine`, the scheduler: queue, admission,
adapters, each utterance's state machine) -> `executor` (`FrameExecutor`, a frame's model work)
over `rows` (`RowTable`, the dense cache rows and their positions).

The OpenAI-compatible server over it: `api` (routes), `speech` (a request read from the event
loop), `openai_errors`, `operations` (metrics, CORS, health); its stored voices: `voices`,
`voice_folder`, `voice_upload`, `voice_maker`, `voice_defaults`, `voice_adapters`.
"""
