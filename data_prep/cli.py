"""`dia2-prep` / `python -m data_prep`: speaker recordings -> a transcribed, Mimi-tokenized corpus.

    dia2-prep recordings/ corpus/                                 # one voice: every utterance [S1]
    dia2-prep podcast/ corpus/ --stereo --speakers alice,bob      # one speaker per channel
    dia2-prep podcast/ corpus/ --diarize --speakers alice,bob --enroll alice=alice.m4a   # two voices, one track
    dia2-prep memos/ corpus/ --loudness-target -16 --min-dnsmos 3 --vad-pad 0.2   # any container: m4a, mp4, webm ...
    dia2-prep recordings/ corpus/ --speaker-map speakers.json     # a speaker per file (or per channel)
    dia2-prep manifest.csv corpus/ --asr-model large-v3 --device cuda --asr-device cuda
    dia2-prep recordings/ corpus/ --model tiny --asr-model ./tiny.en   # embedded demo model (or --tiny; --hf is --model)
    dia2-prep de/ corpus/ --asr-model base-offline --language de --validation-folders anna   # another language
    accelerate launch --multi_gpu --num_processes 8 -m data_prep recordings/ corpus/   # a shard per GPU
    torchrun --nproc_per_node 8 -m data_prep recordings/ corpus/                       # the same

Under a launcher the recordings are shared out among the processes (balanced by size, the same
way on every run); each prepares its shard on its own GPU (cuda:LOCAL_RANK), and the corpus is
the one a single process writes. On several nodes the output folder must be on a filesystem
every node mounts at the same path (so must the input); this is checked before work starts.

Recordings may be in any container ffmpeg reads (wav, flac, aiff, mp3, ogg/opus, m4a/aac, a
video's sound from mp4/mov/webm/mkv, wma ...); a file that cannot be decoded, or a video without
sound, is skipped with its reason in the QC report. Each cut is brought to one loudness
(--loudness-target, true peaks limited; --no-loudness keeps levels), its boundaries refined by
silero-vad (--vad-pad of silence kept around the speech; --no-vad), scored by DNSMOS and dropped
below --min-dnsmos (0: no scoring); the gain, speech fraction and DNSMOS go into each row.

The corpus is a `datasets` folder (train / validation) with corpus_meta.json and a QC report
(qc_report.json, qc_report.txt: per recording and per speaker figures, and minutes kept and
dropped by reason) beside it. Run the same command again to continue an interrupted
run (under a launcher too, with any number of processes): recordings already prepared are
reused; Ctrl-C or SIGTERM stops it with one line. With --check it only checks the command line
and its inputs, writing nothing, and prints the files the run will write (the corpus, its QC
report, progress.json: the run's progress record) as JSON. Every option's default and meaning
below comes from data_prep/config.py.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from pathlib import Path

from data_prep.config import FLAG_SPELLING, PrepConfig, PrepConfigError
from dia2.console import CHECK_FLAG, CHECK_HELP, check_only
from dia2.errors import Dia2Error, PushError
from dia2.launch.command import run_main
from dia2.launch.flags import FLAG_ALIASES
from dia2.launch.model import check_tiny
from dia2.options import FlagParser, add_flags, build, flag_values, sections


def build_parser() -> argparse.ArgumentParser:
    """The dia2-prep parser: two positionals, then a group of flags per PrepConfig section."""
    p = FlagParser(prog="dia2-prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "input", type=Path,
        help="folder of recordings (searched recursively; NAME.txt beside a recording is its reference text), or a "
             "manifest (.csv / .jsonl: path, speaker, speaker_2, text)",
    )
    p.add_argument("output", type=Path, help="corpus folder to write, or to continue writing")
    p.add_argument(CHECK_FLAG, action="store_true", help=CHECK_HELP)
    for name, section in sections(PrepConfig).items():
        title, _, about = (section.__doc__ or section.__name__).strip().partition(":")
        add_flags(p.add_argument_group(title, about.strip() or None), section, dest=f"{name}.",
                  spelling=FLAG_SPELLING.get(name), aliases=FLAG_ALIASES)
    return p


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    """The frozen run config from parsed arguments (not yet validated); PrepConfigError names a bad flag.
    --check says what this invocation does, not what the run is: it is not part of the config."""
    raw = flag_values(args)
    raw.pop("check", None)
    check_tiny(raw.get("model", {}))
    return build(PrepConfig, raw, error=PrepConfigError)


def keep_freed_memory() -> None:
    """Let glibc reuse freed large blocks instead of handing them back to the OS (process-wide).

    Mimi's activations are hundreds of MB, above glibc's mmap threshold, so by default each one
    is a fresh mapping whose pages fault in on every encode: a third of the CPU time of a run went
    to the kernel. Kept in the heap, repeat encodes touch no new pages. Peak memory is unchanged;
    it is just not returned between encodes. A no-op where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check:
        from data_prep.pipeline import check_run

        try:
            config = config_from_args(args).validate()
        except PrepConfigError as exc:
            parser.error(str(exc))
        return check_only("dia2-prep", lambda: check_run(config))
    return run_main(
        "dia2-prep", lambda: config_from_args(args).validate(), _prepare, parser=parser,
        log_level=lambda config: logging.INFO if config.run.verbose else logging.WARNING,
        stopped=lambda config: "every recording prepared so far is kept in the cache; run the same command again "
                               "to continue",
    )


def _prepare(config: PrepConfig) -> int:
    """Prepare the corpus `config` describes and print its summary; the exit code."""
    import torch

    from data_prep.distributed import (
        cpu_share,
        launched_rank,
        launched_world_size,
        release_group,
    )
    from data_prep.pipeline import run_prep
    from data_prep.qc import TEXT_FILE
    from data_prep.work import NothingKeptError

    keep_freed_memory()
    if config.run.threads or launched_world_size() > 1:  # processes of one node share its cores
        torch.set_num_threads(config.run.threads or cpu_share())
    if not config.run.progress:
        import datasets

        datasets.disable_progress_bars()
    try:
        outcome = run_prep(config)
    except (NothingKeptError, PushError) as exc:
        print(f"dia2-prep: {exc}", file=sys.stderr)
        return 1
    except Dia2Error as exc:
        print(f"dia2-prep: error: {exc}", file=sys.stderr)
        return 2
    finally:
        release_group()
    if launched_rank() != 0:
        return 0  # the main process prints the run's summary
    report = outcome.report
    splits = ", ".join(f"{k} {v}" for k, v in report["utterances"].items() if k not in ("kept", "skipped"))
    print(
        f"corpus: {outcome.folder} ({report['utterances']['kept']} utterances, {report['hours']['kept']:.3f} h; {splits})\n"
        f"skipped: {report['files']['skipped']} recording(s), {report['utterances']['skipped']} utterance(s); "
        f"QC report: {outcome.folder / TEXT_FILE}"
    )
    for shard in report.get("shards", []):
        print(f"shard {shard['rank']} ({shard['host']}, {shard['device']}): {shard['files']} recording(s), "
              f"{shard['files_from_cache']} reused from the cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
