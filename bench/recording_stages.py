"""Cost of the real-recording stages of data prep, as x real time on this machine, and the DNSMOS
table behind the default --min-dnsmos.

    python bench/recording_stages.py [--minutes 2] [--threads 0] [--repeats 2]

Audio: the repository's mono espeak-ng dialogue (tests/fixtures/make_recordings.py: a female and a
male voice, five turns, 19 s) repeated to --minutes, as an m4a (AAC) file. Each stage runs as
prep would run it, models loaded beforehand (load seconds reported apart), best of --repeats
after a warm-up run:
- decode: the whole m4a to 24 kHz mono (PyAV + soxr; `dia2.audio.io.decode_audio_file`);
- vad: silero-vad regions of the whole recording (`data_prep.vad`);
- loudness: every turn-sized cut (2-6 s) normalised to -23 LUFS with true-peak limiting (`data_prep.loudness`);
- dnsmos: every cut scored as prep scores it (non-overlapping windows, `data_prep.quality`), and
  apart, with the reference's 1 s hop (as dia2-eval would);
- diarize: the whole recording, given its VAD regions (`data_prep.diarize`, resemblyzer).
x real time is audio seconds / wall seconds; "share" is each stage's part of their sum.

`stage_speeds(minutes)` and `dnsmos_table()` return the figures as dicts, for bench/data_prep.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
from machine import best_time, describe  # noqa: E402

from data_prep.diarize import Diarizer  # noqa: E402
from data_prep.loudness import normalize_loudness  # noqa: E402
from data_prep.quality import quality_scorer  # noqa: E402
from data_prep.vad import SpeechDetector  # noqa: E402
from dia2.audio.dnsmos import INPUT_SECONDS, DnsmosScorer  # noqa: E402
from dia2.audio.io import decode_audio_file  # noqa: E402
from tests.fixtures import make_recordings as fixtures  # noqa: E402

RATE = 24000
SNRS = (30, 20, 10, 5, 0)
TABLE_CLIPS = ["audio/voice_a.flac", "audio/voice_b.flac", "prep/alice/weather.flac", "prep/bob/time.flac"]


def stage_speeds(minutes: float = 2.0, repeats: int = 2) -> dict:
    """x real time of each stage on `minutes` of mono dialogue (see the module docstring)."""
    dialogue, turns = fixtures.mono_dialogue()
    copies = max(1, round(minutes * 60 / (len(dialogue) / fixtures.RATE)))
    with tempfile.TemporaryDirectory() as tmp:
        m4a = fixtures.write_container(np.tile(dialogue, copies), Path(tmp) / "podcast.m4a", "m4a")
        decode = best_time(lambda: decode_audio_file(m4a, RATE), repeats)
        audio = decode_audio_file(m4a, RATE).waveform
    seconds = len(audio) / RATE
    cut_spans = [(t["start"] + k * len(dialogue) / fixtures.RATE, t["end"] + k * len(dialogue) / fixtures.RATE)
                 for k in range(copies) for t in turns]
    cuts = [audio[round(a * RATE) : round(b * RATE)] for a, b in cut_spans]
    cut_seconds = sum(len(c) for c in cuts) / RATE

    start = time.perf_counter()
    detector, scorer, diarizer = SpeechDetector(), quality_scorer(), Diarizer()
    detector.load(), scorer.load(), diarizer.load()
    load = time.perf_counter() - start
    regions = detector.regions(audio, RATE)
    reference = DnsmosScorer()
    walls = {
        "decode": decode,
        "vad": best_time(lambda: detector.regions(audio, RATE), repeats),
        "loudness": best_time(lambda: [normalize_loudness(c, RATE) for c in cuts], repeats),
        "dnsmos": best_time(lambda: [scorer.score(c, RATE) for c in cuts], repeats),
        "diarize": best_time(lambda: diarizer.diarize(audio, RATE, ["alice", "bob"], regions=regions), repeats),
    }
    dnsmos_reference = best_time(lambda: [reference.score(c, RATE) for c in cuts], repeats)
    audio_of = {"decode": seconds, "vad": seconds, "loudness": cut_seconds, "dnsmos": cut_seconds, "diarize": seconds}
    per_audio_second = {k: walls[k] / audio_of[k] for k in walls}
    total = sum(per_audio_second.values())
    return {
        "audio_seconds": round(seconds, 1), "cuts": len(cuts), "cut_seconds": round(cut_seconds, 1),
        "model_load_seconds": round(load, 2),
        "x_real_time": {k: round(1 / v, 1) for k, v in per_audio_second.items()},
        "x_real_time_all_stages": round(1 / total, 2),
        "share": {k: round(v / total, 3) for k, v in per_audio_second.items()},
        "dnsmos_reference_hop_x_real_time": round(cut_seconds / dnsmos_reference, 1),
    }


def dnsmos_table(hop_seconds: float = 1.0) -> dict:
    """DNSMOS OVRL of the clean espeak fixtures and of each with seeded white noise at SNRS dB."""
    scorer, rows = DnsmosScorer(hop_seconds=hop_seconds), {}
    dialogue, _ = fixtures.mono_dialogue()
    clips = {name: fixtures.load(name) for name in TABLE_CLIPS} | {"mono dialogue": dialogue}
    for name, clip in clips.items():
        row = {"seconds": round(len(clip) / fixtures.RATE, 1), "clean": round(scorer.score(clip, fixtures.RATE).ovrl, 2)}
        for snr in SNRS:
            row[f"{snr} dB"] = round(scorer.score(fixtures.add_noise(clip, snr), fixtures.RATE).ovrl, 2)
        rows[name] = row
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="minutes of dialogue to time the stages on")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--skip-table", action="store_true", help="only time the stages")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = {"machine": describe(), "stages": stage_speeds(args.minutes, args.repeats)}
    if not args.skip_table:
        out["dnsmos_ovrl"] = dnsmos_table()
        out["dnsmos_ovrl_non_overlapping_windows"] = dnsmos_table(INPUT_SECONDS)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
