"""The writers of the voice folder layouts from before the one format (`dia2.generation.voice`),
as they were, for the tests that check those layouts still read: `dia2-infer --save-voice`'s
folder, the speech server's voice folder (meta.json), and a training run's adapter folder
(dia2_voice.json)."""

import dataclasses
import json
from pathlib import Path

import numpy as np

from dia2.generation.prefix import VoicePrefix


def peft_files(folder: Path) -> Path:
    """An adapter folder's two PEFT files (their content is not read by a voice's reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def old_save_voice(prefix: VoicePrefix, folder: Path) -> Path:
    """`Voice.save` before the one format: `dia2-infer --save-voice`'s folder, the prefix alone."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "codes.npy", prefix.codes.cpu().numpy().astype(np.int16))
    record = {"codec_fingerprint": prefix.codec_fingerprint, "speaker_2_frame": prefix.speaker_2_frame,
              "words": [dataclasses.asdict(w) for w in prefix.words]}
    (folder / "voice.json").write_text(json.dumps(record, indent=1) + "\n")
    return folder


def old_server_voice(folder: Path, prefix: VoicePrefix | None, adapter: str | None, defaults: dict,
                     transcript: str | None) -> Path:
    """The speech server's voice folder before the one format: meta.json, and the prefix as
    `Voice.save` wrote it, beside the recording."""
    if prefix is not None:
        old_save_voice(prefix, folder)
        (folder / "speaker_1.flac").write_bytes(b"fLaC")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"adapter": adapter, "seed": None, "cfg": None, "temperature": None, "top_k": None, **defaults,
            "speakers": 0 if prefix is None else 2, "transcript": transcript, "created": "2026-12-01T10:00:00+00:00"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def old_run_adapter(folder: Path, run: dict) -> Path:
    """A training run's adapter folder before the one format: PEFT's files (stand-ins where the
    folder has none) + dia2_voice.json."""
    if not (folder / "adapter_config.json").is_file():
        peft_files(folder)
    (folder / "dia2_voice.json").write_text(json.dumps({"format": "dia2-voice/1", **run}, indent=2) + "\n")
    return folder
