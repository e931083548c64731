"""`python -m dia2.cli` / `dia2-infer`: speak a script to an audio file.

    dia2-infer --model nari-labs/Dia2-2B --input script.txt --cfg 6 --seed 0 out.wav
    dia2-infer --model tiny --text "[S1] Hello. [S2] Hi!" out.wav     # embedded demo model (or --tiny)

Flags follow the published CLI (--config, --weights, --input, --device, --dtype, --topk,
--temperature, --cfg, --tokenizer, --mimi, --prefix-speaker-1/2, --include-prefix, --verbose,
--cuda-graph, --torch-compile; its --hf is --model here, as on every command, and still works)
plus --low-vram, --seed, --adapter and a few more. Each flag is a documented field below or of
`GenerationConfig` / `SamplingConfig`: its help and default come from there (`dia2.options`).

--voice FOLDER takes any voice folder (`dia2.generation.voice`): a prefix, an adapter, or both,
e.g. a trained run's `runs/NAME/adapter`; its default seed, --cfg, --temperature and --topk apply
where no flag is given (a flag wins over the voice, the voice over the defaults, as in the speech
server). --save-voice writes the voice a run speaks with in the same format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dia2.audio.asr import DEFAULT_WHISPER_MODEL
from dia2.audio.encode import EXTENSIONS
from dia2.console import say
from dia2.device import AUTO
from dia2.errors import Dia2Error
from dia2.generation.config import GenerationConfig
from dia2.generation.voice import Voice, VoiceDefaults, created_now, read_voice, write_voice
from dia2.launch.command import run_main
from dia2.launch.flags import FLAG_ALIASES, PUBLISHED_SPELLING
from dia2.launch.model import ModelOptions, check_model_options, check_tiny, load_tts, read_voice_flag
from dia2.model.config import FRAME_RATE
from dia2.options import (
    FlagParser,
    OptionError,
    add_section_flags,
    build,
    field_docs,
    flag_values,
)
from dia2.output_paths import check_writable
from dia2.progress import progress_bar
from dia2.text.script import check_script, expected_seconds

if TYPE_CHECKING:
    from dia2.generation.tts import GenerationResult

logger = logging.getLogger("dia2.cli")


@dataclass(frozen=True)
class ScriptOptions:
    """What to say, given with exactly one of --input or --text."""

    input: Path | None = None
    """Script file ('-' for stdin)."""
    text: str | None = None
    """The script itself, e.g. '[S1] Hello. [S2] Hi!'."""


@dataclass(frozen=True)
class VoiceOptions:
    """The voice: a stored voice folder, or recordings whose voices the script continues."""

    prefix_speaker_1: Path | None = None
    """Recording of speaker 1's voice."""
    prefix_speaker_2: Path | None = None
    """Recording of speaker 2's voice (needs --prefix-speaker-1)."""
    prefix_transcript: str | None = None
    """What --prefix-speaker-1/2 say (speaker 1's words, then 2's), in place of the heard words: each
    word is timed from the heard words it matches or replaces (a split word shares its span);
    --verbose logs the aligned words."""
    voice: Path | None = None
    """A voice folder (from --save-voice, a voice in a speech server's or the studio's voices folder, or a trained
    run's adapter folder): its prefix (no transcription), its adapter and its default seed, --cfg, --temperature and
    --topk (a flag given wins)."""
    save_voice: Path | None = None
    """Store the voice this run speaks with in this folder for reuse: the prefix, the adapter, and as its defaults
    the seed and sampling flags that differ from the defaults."""
    whisper_model: str = DEFAULT_WHISPER_MODEL
    """faster-whisper model name or local folder that transcribes the prefix recordings."""


@dataclass(frozen=True)
class InferRunOptions:
    """Kernels, word timestamps and logging."""

    cuda_graph: bool = False
    """Replay each frame as CUDA graphs (CUDA only)."""
    torch_compile: bool = False
    """torch.compile the frame functions."""
    timestamps: Path | None = None
    """Write the word timestamps as JSON to this file."""
    verbose: bool = False
    """Log each stage as it starts and ends (loading, the voice prefix, generating, with timings) and the
    libraries' info messages."""


@dataclass(frozen=True)
class InferOptions:
    """A dia2-infer run: one script spoken to one audio file."""

    output: Path
    """Audio file to write."""
    model: ModelOptions = field(default_factory=ModelOptions)
    """Which model (`--model`, `--adapter`, ...)."""
    script: ScriptOptions = field(default_factory=ScriptOptions)
    """The script, from exactly one of `--input` or `--text`."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling and limits (`--cfg`, `--temperature`, `--seed`, ...)."""
    voice: VoiceOptions = field(default_factory=VoiceOptions)
    """The voice (`--voice`, `--prefix-speaker-1`, `--save-voice`, ...)."""
    run: InferRunOptions = field(default_factory=InferRunOptions)
    """Kernels and outputs (`--cuda-graph`, `--timestamps`, ...)."""


def build_parser() -> argparse.ArgumentParser:
    """The dia2-infer parser: the output file, then a group of flags per InferOptions section."""
    p = FlagParser(prog="dia2-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help=f"{field_docs(InferOptions)['output']} ({', '.join(EXTENSIONS)})")
    return add_section_flags(p, InferOptions, spellings={"generation": PUBLISHED_SPELLING}, aliases=FLAG_ALIASES)


def parse_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> InferOptions:
    """Parsed, typed and checked options; OptionError names the flag and the fix."""
    raw = flag_values(parser.parse_args(argv))
    check_tiny(raw.get("model", {}))
    options = build(InferOptions, raw)
    _check_files(options)
    _check_runtime(options)
    if options.voice.voice is not None:
        voice = read_voice_flag(options.voice.voice, adapter_given=options.model.adapter is not None)
        # The voice's defaults stand in for the dataclass defaults; the flags given still win.
        generation = build(GenerationConfig, raw.get("generation", {}), base=voice.defaults.over(GenerationConfig()))
        options = dataclasses.replace(options, generation=generation)
    return options


def _check_files(o: InferOptions) -> None:
    if o.output.suffix.lower() not in EXTENSIONS:
        raise OptionError(f"output {o.output}: unknown extension '{o.output.suffix}'; use {', '.join(EXTENSIONS)}")
    script, voice = o.script, o.voice
    if (script.input is None) == (script.text is None):
        raise OptionError("give the script with exactly one of --input FILE or --text '...'")
    if script.input is not None and str(script.input) != "-" and not script.input.is_file():
        raise OptionError(f"--input {script.input}: file not found")
    check_model_options(o.model)
    for flag, path in (("--prefix-speaker-1", voice.prefix_speaker_1), ("--prefix-speaker-2", voice.prefix_speaker_2)):
        if path is not None and not path.is_file():
            raise OptionError(f"{flag} {path}: file not found")
    if voice.prefix_speaker_2 and not voice.prefix_speaker_1:
        raise OptionError("--prefix-speaker-2 needs --prefix-speaker-1 (speaker 1's words come first)")
    if voice.voice and (voice.prefix_speaker_1 or voice.prefix_speaker_2):
        raise OptionError("give either --voice or --prefix-speaker-1/2, not both")
    if voice.prefix_transcript is not None and not voice.prefix_speaker_1:
        raise OptionError("--prefix-transcript is what --prefix-speaker-1/2 say: give those recordings too")
    if voice.prefix_transcript is not None and not voice.prefix_transcript.strip():
        raise OptionError("--prefix-transcript is empty: type the words the prefix recordings say, or leave it out")
    if voice.save_voice and not (voice.prefix_speaker_1 or voice.voice or o.model.adapter):
        raise OptionError("--save-voice stores the voice this run speaks with: give --prefix-speaker-1/2 recordings, "
                          "an --adapter or a --voice too")


def _check_outputs(o: InferOptions) -> None:
    """Every file the run writes can be written: refused now, not after the clip is generated."""
    check_writable(o.output, "output")
    if o.run.timestamps is not None:
        check_writable(o.run.timestamps, "--timestamps")
    if o.voice.save_voice is not None:
        check_writable(o.voice.save_voice, "--save-voice", folder=True)


def _check_runtime(o: InferOptions) -> None:
    if o.run.cuda_graph and o.model.device != AUTO and not o.model.device.startswith("cuda"):
        raise OptionError("--cuda-graph needs a CUDA device")
    if o.run.cuda_graph and o.model.device == AUTO and not torch.cuda.is_available():
        raise OptionError("--cuda-graph needs CUDA, and none is available here")
    if o.run.cuda_graph and o.model.low_vram == "8bit":
        # Refused before the model loads; dia2.generation.graphs.check_capturable says why.
        raise OptionError("--low-vram 8bit cannot run under --cuda-graph (its outlier search syncs with the host): "
                          "use --low-vram 4bit or drop --cuda-graph")


def _read_script(script: ScriptOptions) -> str:
    if script.text is not None:
        return script.text
    if str(script.input) == "-":
        return sys.stdin.read()
    return script.input.read_text(encoding="utf-8")


def _speak(o: InferOptions, script: str) -> GenerationResult:
    """Load the model (and the voice) and speak `script`."""
    from dia2.audio.asr import WhisperTranscriber
    from dia2.generation.graphs import kernel_wrapper
    from dia2.generation.prefix import with_transcript

    voice = read_voice(o.voice.voice) if o.voice.voice else Voice()
    adapter = o.model.adapter or voice.adapter  # --adapter wins over the voice's
    if o.model.adapter and voice.adapter and Path(voice.adapter).resolve() != Path(o.model.adapter).expanduser().resolve():
        logger.warning("--adapter %s is used in place of the voice's adapter %s", o.model.adapter, voice.adapter)
    tts = load_tts(dataclasses.replace(o.model, adapter=adapter), "using", tell=say,
                   kernel_wrapper=kernel_wrapper(o.run.cuda_graph, o.run.torch_compile))
    prefix = voice.prefix
    if o.voice.prefix_speaker_1:
        logger.info("transcribing the voice prefix with Whisper %s", o.voice.whisper_model)
        transcriber = WhisperTranscriber(o.voice.whisper_model, device="cuda" if tts.model.device.type == "cuda" else "cpu")
        prefix = tts.make_prefix(o.voice.prefix_speaker_1, o.voice.prefix_speaker_2, transcriber)
        if o.voice.prefix_transcript:
            prefix = with_transcript(prefix, o.voice.prefix_transcript)
        voice = Voice(prefix=prefix, transcript=o.voice.prefix_transcript)
    if o.voice.save_voice:
        # The run record of a trained voice stays with it: it describes the adapter kept.
        saved = dataclasses.replace(voice, adapter=adapter, defaults=VoiceDefaults.of(o.generation, GenerationConfig()),
                                    created=created_now())
        write_voice(saved, o.voice.save_voice)
    # The bar's total (and time left) is the frames this script is expected to take, not the limit.
    expected = math.ceil(expected_seconds(script) * FRAME_RATE) + max(tts.model.config.data.delays)
    logger.info("generating about %d frames (%.1f s of speech expected)", expected, expected / FRAME_RATE)
    with progress_bar(expected, "generating", "frame") as bar:
        def progress(frame: int, limit: int) -> None:
            bar.total = min(limit, max(expected, frame))
            bar.update(frame - bar.n)

        return tts.generate(script, o.generation, prefix=prefix, progress=progress)


def speak(options: InferOptions) -> int:
    """The whole command once the options are checked: refuse what can be refused, speak, write."""
    _check_outputs(options)
    script = _read_script(options.script)
    check_script(script)  # a typo is refused before the model loads
    result = _speak(options, script)
    path = result.save(options.output)
    if options.run.timestamps:
        stamps = [{"word": w, "start": t} for w, t in result.timestamps]
        options.run.timestamps.parent.mkdir(parents=True, exist_ok=True)
        options.run.timestamps.write_text(json.dumps(stamps, indent=1) + "\n")
    note = " (truncated at the frame limit)" if result.truncated else ""
    print(f"wrote {path}: {result.duration:.2f} s, {len(result.timestamps)} words{note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main("dia2-infer", lambda: parse_options(parser, argv), speak, parser=parser,
                    log_level=lambda o: logging.INFO if o.run.verbose else logging.WARNING,
                    errors=(Dia2Error, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
