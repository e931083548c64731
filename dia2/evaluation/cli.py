"""`dia2-eval`: does a model, an adapter, a voice prefix give a stable, faithful voice?

    dia2-eval --model nari-labs/Dia2-2B --adapter runs/my-voice/adapter \\
              --references my-voice/clips --voice my-voice/stored eval/my-voice
    dia2-eval --model tiny --references refs/ --asr-model tiny.en --seeds 0 out/   # embedded demo model
    dia2-eval --model nari-labs/Dia2-2B --adapter runs/de/adapter --references de-clips/ \\
              --language de --asr-model base-offline eval/de                     # another language

Speaks every prompt (--prompts, or the shipped set) with every seed and configuration (base,
base+prefix, each adapter, adapter+prefix), scores every clip (WER/CER, speaker similarity to
the references, DNSMOS quality, duration, silences, frame-limit hits, word coverage), measures the
toplines (the references and their Mimi resynthesis), and writes OUTPUT/eval.json, OUTPUT/report.html and
OUTPUT/clips/. Every input is checked before anything is generated; the output folder appears
only when the evaluation is complete. Exit status 1 with one message on any error, including an
adapter that changes nothing, and one whose recorded base is not --model (--allow-other-base
evaluates it anyway).

--voice takes any voice folder (`dia2.generation.voice`): its prefix gives the +prefix
configurations, its adapter is evaluated as one more adapter (unless --adapter names it already),
and its default --cfg, temperature and top-k are the generations' (--cfg given wins). Its seed is
not used: an evaluation speaks every clip with each of --seeds, to measure the spread across them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from dia2.audio.asr import DEFAULT_WHISPER_MODEL, AsrError, WhisperTranscriber, check_language
from dia2.console import say
from dia2.device import AUTO, resolve_device
from dia2.evaluation.inputs import (
    EvalInputError,
    adapter_labels,
    check_adapter_bases,
    check_adapters,
    check_output,
    read_prompts,
    read_references,
    where_found,
)
from dia2.evaluation.report import HTML_NAME, JSON_NAME, staged, write_report
from dia2.evaluation.scoring import ClipScorer, ClipTranscriber
from dia2.evaluation.speaker import DEFAULT_SPEAKER_ENCODER, load_speaker_encoder
from dia2.generation.config import GenerationConfig
from dia2.generation.voice import Voice
from dia2.launch.command import run_main
from dia2.launch.flags import FLAG_ALIASES
from dia2.launch.model import ModelOptions, load_tts, read_voice_flag
from dia2.model.adapter_files import check_adapter_path
from dia2.model.assets import DEFAULT_MODEL
from dia2.model.config import SAMPLE_RATE
from dia2.options import FlagParser, OptionError, add_flags, build, flag_values
from dia2.progress import progress_bar
from dia2.text.script import ScriptError

PROG = "dia2-eval"
READ_RATE = SAMPLE_RATE
"""Rate the references are read at (Mimi's); the scorer and the codec resample from it if needed."""


@dataclass(frozen=True)
class EvalOptions:
    """A dia2-eval run (the output folder is the positional argument)."""

    references: Path
    """Folder of recordings of the target voice, searched recursively as dia2-prep reads its input (the same
    formats; NAME.txt beside NAME.wav is its transcript)."""
    model: str = DEFAULT_MODEL
    """Hub repo id or local folder of the base model, or tiny (the embedded demo model)."""
    adapter: tuple[str, ...] = ()
    """PEFT LoRA adapter folders or Hub repo ids to evaluate, comma-separated."""
    voice: Path | None = None
    """A voice folder (dia2-infer --save-voice, a speech server's voice, a trained run's adapter folder): its prefix
    is the voice prefix, its adapter is evaluated too, its default cfg, temperature and top-k are used."""
    prefix: Path | None = None
    """A recording of the target voice used as the voice prefix (transcribed with --asr-model)."""
    prompts: Path | None = None
    """Prompt file, one prompt a line (default: the shipped set of --language, dia2/evaluation/prompts/<lang>.txt:
    de, es, fr; default.txt in English)."""
    language: str | None = None
    """Language the clips speak, a Whisper code (de, es, fr ...; default: detected): Whisper is told it, WER/CER
    normalise for it (numbers spelled out) and it picks the shipped prompts. Needs a multilingual --asr-model
    (e.g. base-offline) for any language but en."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds each prompt is spoken with (the spread across them measures stability)."""
    max_frames: int = 375
    """Most frames generated per clip (12.5 a second); a clip that reaches it counts as a frame-limit hit."""
    cfg_scale: float | None = None
    """Classifier-free guidance scale of the generations (default: the --voice's, else GenerationConfig's
    cfg_scale)."""
    asr_model: str = DEFAULT_WHISPER_MODEL
    """faster-whisper model name or local CTranslate2 folder for WER/CER (none: no WER/CER)."""
    speaker_encoder: str = DEFAULT_SPEAKER_ENCODER
    """Speaker encoder for similarity: resemblyzer or none."""
    dnsmos: bool = True
    """Score each clip's DNSMOS P.835 OVRL (1-5, speech quality without a reference; the references' score is the topline)."""
    toplines: bool = True
    """Also score the references and their Mimi resynthesis."""
    allow_other_base: bool = False
    """Evaluate an adapter whose recorded base model is not --model (refused otherwise)."""
    device: str = AUTO
    """cuda, cuda:1, cpu ... (auto: cuda when available, else cpu)."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise OptionError("--seeds needs at least one seed")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise OptionError(f"--seeds repeats {', '.join(map(str, repeated))}: give each seed once (a seed speaks "
                              "the same clip every time, so a repeat adds nothing to the spread across seeds)")
        if self.voice is not None and self.prefix is not None:
            raise OptionError("give either --voice or --prefix, not both")
        try:
            check_language(self.language)
        except AsrError as exc:
            raise OptionError(str(exc)) from exc
        if self.prefix is not None and self.asr_model == "none":
            raise OptionError("--prefix is transcribed with --asr-model: give a model, or a stored --voice instead")


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="Folder to write eval.json, report.html and clips/ to (new or empty).")
    add_flags(parser, EvalOptions, spelling={"cfg_scale": "--cfg"}, aliases=FLAG_ALIASES)
    return parser


def parse_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[Path, EvalOptions]:
    raw = flag_values(parser.parse_args(argv))
    output = raw.pop("output")
    return output, build(EvalOptions, raw)


def evaluate(output: Path, o: EvalOptions) -> Path:
    """The whole command: check inputs, load, speak, score, write; returns the report folder."""
    # Cheap checks first, before the model stack is imported: loading a 2B model takes minutes.
    check_output(output)
    prompts = read_prompts(o.prompts, o.language)
    references = read_references(o.references, READ_RATE)
    found = where_found(references, o.references)
    print(f"references: {found}", file=sys.stderr)
    if o.prefix is not None and not o.prefix.is_file():
        raise EvalInputError(f"--prefix {o.prefix}: file not found")
    voice = read_voice_flag(o.voice) if o.voice is not None else Voice()
    for adapter in o.adapter:
        check_adapter_path(adapter, "--adapter")
    adapter_list = with_voice_adapter(list(o.adapter), voice)
    if not o.allow_other_base:
        check_adapter_bases(adapter_list, o.model)
    from dia2.evaluation.run import EvalSetup, Evaluation, configurations, total_clips

    device = str(resolve_device(o.device))
    speaker = load_speaker_encoder(o.speaker_encoder, device)
    tts = load_tts(ModelOptions(model=o.model, device=device), "using", tell=say)
    check_adapters(tts.model, adapter_list)
    asr = None if o.asr_model == "none" else ClipTranscriber(
        o.asr_model, device=device, model_option="--asr-model", language=o.language
    )
    if asr is not None:
        asr.load()  # an unloadable model is refused now, not after the first clip
    scorer = ClipScorer([r.waveform for r in references], reference_rate=READ_RATE, asr=asr,
                        speaker=speaker, device=device, language=o.language, dnsmos=o.dnsmos)
    prefix = voice.prefix
    if o.prefix is not None:
        # The prefix needs word timings, which the scoring transcriber skips.
        prefix = tts.make_prefix(o.prefix, transcriber=WhisperTranscriber(
            o.asr_model, device=device, model_option="--asr-model", language=o.language
        ))
    generation = voice.defaults.over(GenerationConfig())  # the seed is each clip's, from --seeds
    cfg_scale = generation.cfg_scale if o.cfg_scale is None else o.cfg_scale
    generation = dataclasses.replace(generation, max_frames=o.max_frames, cfg_scale=cfg_scale)
    check_prompts(tts, prompts, generation, prefix)
    setup = EvalSetup(tuple(prompts), o.seeds, generation, o.toplines)
    adapters = dict(zip(adapter_labels(adapter_list), adapter_list))
    total = total_clips(setup, len(configurations(adapters, prefix is not None)), len(references))
    with staged(output) as work, progress_bar(total, "evaluating", "clip") as bar:
        evaluation = Evaluation(tts, setup, scorer, work, prefix, progress=lambda label: (bar.set_postfix_str(label), bar.update()))
        data = evaluation.run(adapters, references)
        data["settings"] = {
            "model": o.model, "adapters": adapter_list, "prompts": str(o.prompts or "shipped default"),
            "prompt_count": len(prompts), "seeds": list(o.seeds), "max_frames": o.max_frames,
            "cfg_scale": generation.cfg_scale,
            "references": str(o.references), "reference_count": len(references), "references_found": found,
            "voice_prefix": str(o.prefix or (o.voice if voice.prefix is not None else None) or "none"),
            "asr_model": o.asr_model,
            "speaker_encoder": o.speaker_encoder, "device": device, "language": o.language, "dnsmos": o.dnsmos,
        }
        write_report(data, work)
    return output


def with_voice_adapter(adapters: list[str], voice: Voice) -> list[str]:
    """The adapters to evaluate: --adapter's, then the voice's unless one of them is that folder."""
    if voice.adapter is None:
        return adapters
    given = {str(Path(a).expanduser().resolve()) if Path(a).expanduser().exists() else a for a in adapters}
    return adapters if voice.adapter in given else [*adapters, voice.adapter]


def check_prompts(tts, prompts: list[str], generation: GenerationConfig, prefix) -> None:
    """Refuse a prompt the model cannot speak within the frame limit, naming its line."""
    for i, prompt in enumerate(prompts, 1):
        try:
            tts.plan(tts.parse(prompt), generation, prefix, None)
        except ScriptError as exc:
            raise EvalInputError(f"prompt {i} ({prompt!r}) cannot be spoken: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def run(parsed: tuple[Path, EvalOptions]) -> int:
        folder = evaluate(*parsed)
        print(f"wrote {folder / JSON_NAME} and {folder / HTML_NAME}")
        return 0

    return run_main(PROG, lambda: parse_options(parser, argv), run, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
