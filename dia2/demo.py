"""The README demo: the embedded tiny default, end to end, with no downloads.

Builds (once, cached) the tiny bundle - a tiny Dia2, tokenizer and Mimi with random, untrained
demo weights - loads it through the same path as a published checkpoint, speaks a two-speaker
script to a wav file with word timestamps, streams the same script, and checks that streaming
gave exactly the same audio codes.

    python -m dia2.demo [--out outputs/demo] [--seed 0] [--text "[S1] ... [S2] ..."]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dia2.generation.config import GenerationConfig
from dia2.generation.tts import Dia2
from dia2.tiny import tiny_bundle

SCRIPT = '[S1] Hello there, how are you today? [S2] I am doing well. <break time="0.3s"/> [S1] Good to hear.'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for the demo's files")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--text", default=SCRIPT, help="the script to speak, with [S1]/[S2] tags (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.text.strip():
        parser.error("--text is empty: give a script such as '[S1] Hello. [S2] Hi.'")

    bundle = tiny_bundle()
    print(f"tiny demo bundle (random, untrained weights: noise, not speech): {bundle}")
    tts = Dia2.from_repo(bundle, device="cpu")
    config = GenerationConfig(seed=args.seed)

    start = time.perf_counter()
    result = tts.generate(args.text, config)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    wav = result.save(args.out / "speech.wav")
    (args.out / "timestamps.json").write_text(json.dumps(result.timestamps, indent=1) + "\n")

    chunks = list(tts.stream(args.text, config))
    streamed = torch.cat([c.codes for c in chunks], dim=1)
    same = torch.equal(streamed, result.audio_tokens)
    summary = {
        "script": args.text,
        "wav": str(wav),
        "audio_seconds": round(result.duration, 2),
        "frames": result.audio_tokens.shape[1],
        "generation_seconds": round(seconds, 2),
        "words": [[w, round(t, 2)] for w, t in result.timestamps],
        "stream_chunks": len(chunks),
        "stream_matches_generate": same,
    }
    print(json.dumps(summary, indent=2))
    if not same:
        print("streaming produced different audio codes than generate()", file=sys.stderr)
        return 1
    print(f"ok: wrote {wav}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
