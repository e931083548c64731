"""The launch layer every command stands on: `dia2-infer` (dia2/cli.py), the speech server
(dia2/api_server.py), the studio (dia2/studio/app.py), `dia2-eval`, `dia2-prep`, the trainer and
`finetune.push` import it; no command imports another.

- `command`: `run_main`, the one shape of a command's `main` (parse and check, logging and stops,
  run, an error a user can fix as one line). Light: push runs it without torch.
- `flags`: the spellings every command shares (`--model` with its alias `--hf`, `--cfg`, the
  published generation flags, the server's `--merge-adapter`) and the checks of shared flags
  (`--port`, repeatable `NAME=VALUE` items such as `--adapter`).
- `model`: `ModelOptions` (which model, and how it loads), the `--tiny` and model-file checks
  made before anything loads, `load_tts` (the runtime), `read_voice_flag` (the voice folder a
  `--voice` names, checked), `offer_adapters` (adapters served as voices).

The serving engine's options are `dia2.serving.config.EngineConfig`, a section of the server's and
the studio's options. Nothing here imports the model stack at import time: a command refuses a bad
input before it loads anything.
"""
