"""`python -m dia2.cli` / `dia2-infer`: speak a script to an audio file.

    dia2-infer --hf nari-labs/Dia2-2B --input script.txt --cfg 6 --seed 0 out.wav
    dia2-infer --tiny --text "[S1] Hello. [S2] Hi!" out.wav        # embedded demo model

Flags follow the published CLI (--hf, --config, --weights, --input, --device, --dtype, --topk,
--temperature, --cfg, --tokenizer, --mimi, --prefix-speaker-1/2, --include-prefix, --verbose,
--cuda-graph, --torch-compile) plus --low-vram, --seed, --adapter and a few more. Every default
comes from `GenerationConfig` / `SamplingConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from dia2.audio.io import WRITABLE_FORMATS
from dia2.errors import Dia2Error, report
from dia2.generation.loop import GenerationConfig

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULTS = GenerationConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dia2-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help=f"audio file to write ({', '.join(WRITABLE_FORMATS)})")
    src = p.add_argument_group("model")
    src.add_argument("--hf", default=None, help="Hub repo id or local folder of the model (default nari-labs/Dia2-2B)")
    src.add_argument("--tiny", action="store_true", help="use the embedded tiny demo model (random weights, no download)")
    src.add_argument("--config", type=Path, help="config.json to use instead of the repo's")
    src.add_argument("--weights", type=Path, help="model.safetensors to use instead of the repo's")
    src.add_argument("--tokenizer", help="tokenizer folder or repo id (default: from the model repo)")
    src.add_argument("--mimi", help="Mimi codec folder or repo id (default: from the model config, kyutai/mimi)")
    src.add_argument("--adapter", help="PEFT LoRA adapter folder or Hub repo id (a trained voice)")
    src.add_argument("--unmerged-adapter", action="store_true", help="keep the adapter unmerged (switchable, slower)")
    src.add_argument("--low-vram", choices=["8bit", "4bit"], help="quantize linear layers with bitsandbytes")
    src.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available)")
    src.add_argument("--dtype", choices=list(DTYPES), default="auto", help="weights dtype (auto: bfloat16 on CUDA, else float32)")
    text = p.add_argument_group("script")
    text.add_argument("--input", type=Path, help="script file ('-' for stdin)")
    text.add_argument("--text", help="the script itself, e.g. '[S1] Hello. [S2] Hi!'")
    gen = p.add_argument_group("generation")
    gen.add_argument("--cfg", type=float, default=DEFAULTS.cfg_scale, help="CFG scale (1 disables guidance)")
    gen.add_argument("--temperature", type=float, default=DEFAULTS.audio.temperature, help="audio sampling temperature")
    gen.add_argument("--topk", type=int, default=DEFAULTS.audio.top_k, help="audio top-k")
    gen.add_argument("--text-temperature", type=float, default=DEFAULTS.text.temperature, help="action sampling temperature")
    gen.add_argument("--text-topk", type=int, default=DEFAULTS.text.top_k, help="action top-k")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed for reproducible output")
    gen.add_argument("--max-frames", type=int, default=None, help="most frames to generate (12.5 per second)")
    voice = p.add_argument_group("voice prefix")
    voice.add_argument("--prefix-speaker-1", type=Path, help="recording of speaker 1's voice")
    voice.add_argument("--prefix-speaker-2", type=Path, help="recording of speaker 2's voice")
    voice.add_argument("--voice", type=Path, help="a stored voice folder (from --save-voice): no transcription")
    voice.add_argument("--save-voice", type=Path, help="store the prefix voice here for reuse")
    voice.add_argument("--whisper-model", default="small.en", help="faster-whisper model name or local path")
    voice.add_argument("--include-prefix", action="store_true", help="keep the prefix audio in the output")
    run = p.add_argument_group("runtime")
    run.add_argument("--cuda-graph", action="store_true", help="replay each frame as CUDA graphs (CUDA only)")
    run.add_argument("--torch-compile", action="store_true", help="torch.compile the frame functions")
    run.add_argument("--timestamps", type=Path, help="write word timestamps as JSON here")
    run.add_argument("--verbose", action="store_true", help="log progress details")
    return p


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.output.suffix.lower() not in WRITABLE_FORMATS:
        p.error(f"output {args.output}: unknown extension '{args.output.suffix}'; use {', '.join(WRITABLE_FORMATS)}")
    if (args.input is None) == (args.text is None):
        p.error("give the script with exactly one of --input FILE or --text '...'")
    if args.input is not None and str(args.input) != "-" and not args.input.is_file():
        p.error(f"--input {args.input}: file not found")
    if args.tiny and (args.hf or args.config or args.weights):
        p.error("--tiny is the embedded demo model; it cannot be combined with --hf/--config/--weights")
    for flag in ("prefix_speaker_1", "prefix_speaker_2", "config", "weights"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            p.error(f"--{flag.replace('_', '-')} {path}: file not found")
    if args.prefix_speaker_2 and not args.prefix_speaker_1:
        p.error("--prefix-speaker-2 needs --prefix-speaker-1 (speaker 1's words come first)")
    if args.voice and (args.prefix_speaker_1 or args.prefix_speaker_2):
        p.error("give either --voice or --prefix-speaker-1/2, not both")
    if args.voice and not (args.voice / "voice.json").is_file():
        p.error(f"--voice {args.voice}: not a stored voice folder (no voice.json)")
    if args.cuda_graph and args.device is not None and not str(args.device).startswith("cuda"):
        p.error("--cuda-graph needs a CUDA device")
    if args.cuda_graph and args.device is None and not torch.cuda.is_available():
        p.error("--cuda-graph needs CUDA, and none is available here")
    if args.max_frames is not None and args.max_frames < 1:
        p.error("--max-frames must be at least 1")


def _generation_config(p: argparse.ArgumentParser, args: argparse.Namespace) -> GenerationConfig:
    try:
        return replace(
            DEFAULTS,
            text=replace(DEFAULTS.text, temperature=args.text_temperature, top_k=args.text_topk),
            audio=replace(DEFAULTS.audio, temperature=args.temperature, top_k=args.topk),
            cfg_scale=args.cfg,
            seed=args.seed,
            max_frames=args.max_frames,
            include_prefix=args.include_prefix,
        )
    except ValueError as exc:
        p.error(str(exc))


def _read_script(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if str(args.input) == "-":
        return sys.stdin.read()
    return args.input.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    config = _generation_config(parser, args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    script = _read_script(args)

    from tqdm import tqdm

    from dia2.generation.graphs import kernel_wrapper
    from dia2.generation.runtime import Dia2
    from dia2.generation.voice import Voice, WhisperTranscriber

    try:
        if args.tiny:
            from dia2.tiny import tiny_bundle

            print("using the embedded tiny demo model: random, untrained weights (noise, not speech)", file=sys.stderr)
            source = tiny_bundle()
        else:
            source = args.hf or "nari-labs/Dia2-2B"
        tts = Dia2.from_repo(
            source, device=args.device, dtype=DTYPES[args.dtype], config_path=args.config, weights_path=args.weights,
            tokenizer=args.tokenizer, mimi=args.mimi, low_vram=args.low_vram, adapter=args.adapter,
            merge_adapter=not args.unmerged_adapter,
            kernel_wrapper=kernel_wrapper(args.cuda_graph, args.torch_compile),
        )
        voice = Voice.load(args.voice) if args.voice else None
        if args.prefix_speaker_1:
            transcriber = WhisperTranscriber(args.whisper_model, device="cuda" if tts.model.device.type == "cuda" else "cpu")
            voice = tts.make_voice(args.prefix_speaker_1, args.prefix_speaker_2, transcriber)
            if args.save_voice:
                voice.save(args.save_voice)
        with tqdm(total=None, unit="frame", desc="generating", disable=None) as bar:
            def progress(frame: int, limit: int) -> None:
                bar.total = limit
                bar.update(frame - bar.n)

            result = tts.generate(script, config, voice=voice, progress=progress)
    except (Dia2Error, ValueError, OSError) as exc:
        return report("dia2-infer", exc)
    path = result.save(args.output)
    if args.timestamps:
        args.timestamps.write_text(json.dumps([{"word": w, "start": t} for w, t in result.timestamps], indent=1) + "\n")
    note = " (truncated at the frame limit)" if result.truncated else ""
    print(f"wrote {path}: {result.duration:.2f} s, {len(result.timestamps)} words{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
