"""The QC report: what was kept (hours per speaker, counts) and everything left out, with why.

Written beside the corpus as `qc_report.json` (every figure and every skip) and
`qc_report.txt` (the same, for reading). Kept time is the recordings' audio the utterances
cover (each moment once, the grids' silent padding left out); a dialogue utterance's time is
shared among its speakers in proportion to their words' durations. The tokenizer-coverage section (tokens per
word, byte fallback, the words split worst, frames per token against English) is
`dia2.text.coverage`'s, measured on the kept words.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from data_prep.results import NOT_AUDIO, REASONS, FileResult, Skip
from dia2.text.coverage import coverage_text

JSON_FILE = "qc_report.json"
TEXT_FILE = "qc_report.txt"


def build_report(
    results: Sequence[FileResult],
    ignored: Sequence[str],
    speaker_names: Sequence[str],
    splits: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict. splits: recording name -> split it went to."""
    skips = [Skip(name, NOT_AUDIO, "not an audio file extension; left out") for name in ignored]
    skips += [s for r in results for s in r.skips]
    per_speaker: dict[str, float] = defaultdict(float)
    split_rows: Counter = Counter()
    kept = {r.source: _kept_seconds(r.rows) for r in results}
    for result in results:
        for row, row_seconds in zip(result.rows, kept[result.source]):
            for speaker, seconds in _speaker_seconds(row, speaker_names, row_seconds).items():
                per_speaker[speaker] += seconds
            split_rows[splits.get(result.source, "none")] += 1
    kept_seconds = sum(sum(seconds) for seconds in kept.values())
    utterance_skips = [s for s in skips if s.start is not None]
    file_skips = [s for s in skips if s.start is None]
    report = {
        "files": {
            "found": len(results) + len(ignored),
            "kept": sum(1 for r in results if r.kept),
            "skipped": len(file_skips),
            "without_utterances": sum(1 for r in results if not r.kept and not any(s.start is None for s in r.skips)),
        },
        "utterances": {
            "kept": sum(len(r.rows) for r in results),
            "skipped": len(utterance_skips),
            **{k: split_rows[k] for k in sorted(split_rows)},
        },
        "hours": {
            "input": round(sum(r.seconds for r in results) / 3600, 6),
            "kept": round(kept_seconds / 3600, 6),
            "per_speaker": {name: round(per_speaker.get(name, 0.0) / 3600, 6) for name in speaker_names},
        },
        "skipped_by_reason": {reason: n for reason in REASONS if (n := sum(1 for s in skips if s.reason == reason))},
        "skipped": [s.to_dict() for s in skips],
        "notes": [{"source": r.source, "note": note} for r in results for note in r.notes],
        "recordings": [
            {"source": r.source, "seconds": round(r.seconds, 3), "utterances": len(r.rows), "split": splits.get(r.source),
             "kept_seconds": round(sum(kept[r.source]), 3), "wer": r.wer}
            for r in results
        ],
    }
    if extra:
        report.update(extra)
    return report


def _kept_seconds(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Each row's share of its recording's audio: its source span (not its grid, which silence pads
    past the audio) less what an earlier row already covers (neighbours may share a pause)."""
    shares = [0.0] * len(rows)
    covered = -math.inf
    for i in sorted(range(len(rows)), key=lambda i: float(rows[i]["source_start"])):
        start, end = float(rows[i]["source_start"]), float(rows[i]["source_end"])
        shares[i] = max(0.0, end - max(start, covered))
        covered = max(covered, end)
    return shares


def _speaker_seconds(row: dict[str, Any], speaker_names: Sequence[str], seconds: float) -> dict[str, float]:
    """The row's `seconds` shared among its speakers by their words' durations."""
    spoken: dict[int, float] = defaultdict(float)
    for word in row["words"]:
        spoken[int(word["speaker"])] += max(float(word["end"]) - float(word["start"]), 0.0)
    total = sum(spoken.values())
    if total <= 0:
        speakers = {int(w["speaker"]) for w in row["words"]} or {1}
        spoken = {s: 1.0 for s in speakers}
        total = float(len(speakers))
    return {speaker_names[s - 1]: seconds * t / total for s, t in spoken.items()}


def summary_text(report: dict[str, Any]) -> str:
    """The report for reading."""
    files, utts, hours = report["files"], report["utterances"], report["hours"]
    lines = [
        "dia2-prep QC report",
        "",
        f"files: {files['found']} found, {files['kept']} kept, {files['skipped']} skipped whole, "
        f"{files['without_utterances']} with no utterance kept",
        f"utterances: {utts['kept']} kept ({_splits_text(utts)}), {utts['skipped']} skipped",
        f"hours: {hours['input']:.3f} read, {hours['kept']:.3f} kept",
    ]
    lines += [f"  {name}: {value:.3f} h" for name, value in hours["per_speaker"].items()]
    if report["skipped_by_reason"]:
        lines += ["", "skipped, by reason:"] + [f"  {reason}: {n}" for reason, n in report["skipped_by_reason"].items()]
        lines += ["", "every skip:"]
        for s in report["skipped"]:
            where = "whole file" if s["start"] is None else f"{s['start']:.2f}-{s['end']:.2f} s"
            lines.append(f"  {s['source']} [{where}] {s['reason']}: {s['detail']}")
    if report["notes"]:
        lines += ["", "notes:"] + [f"  {n['source']}: {n['note']}" for n in report["notes"]]
    if report.get("shards"):
        lines += ["", f"processes: {report['processes']} (one shard each)"]
        lines += [
            f"  shard {s['rank']} on {s['host']} ({s['device']}): {s['files']} recording(s), {s['files_from_cache']} "
            f"from the cache, {s['utterances']} utterance(s), {s['audio_seconds']:.1f} s of audio in {s['wall_seconds']:.1f} s "
            f"(after {s['setup_seconds']:.1f} s loading models)"
            for s in report["shards"]
        ]
    if "tokenizer_coverage" in report:
        lines += [""] + coverage_text(report["tokenizer_coverage"])
    if "stage_seconds" in report:
        lines += ["", "time per stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report["stage_seconds"].items())]
    return "\n".join(lines) + "\n"


def _splits_text(utterances: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in utterances.items() if k not in ("kept", "skipped")) or "none"


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write qc_report.json and qc_report.txt into `folder` (each atomically)."""
    paths = (folder / JSON_FILE, folder / TEXT_FILE)
    for path, text in zip(paths, (json.dumps(report, indent=2) + "\n", summary_text(report))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths
