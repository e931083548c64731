"""The QC report: what was kept (hours per speaker, counts) and everything left out, with why.

Written beside the corpus as `qc_report.json` (every figure and every skip) and
`qc_report.txt` (the same, for reading). Kept time is the recordings' audio the utterances
cover (each moment once, the grids' silent padding left out); a dialogue utterance's time is
shared among its speakers in proportion to their words' durations. The tokenizer-coverage section (tokens per
word, byte fallback, the words split worst, frames per token against English) is
`dia2.text.coverage`'s, measured on the kept words.

Per recording: its level before normalisation (LUFS, the power mean of its kept cuts) and the
gains applied, its peak and clipped share, its speech fraction (silero-vad), its DNSMOS and, with
--diarize, each speaker's talk time and the clustering's confidence; recordings that were very
quiet, clipped or needed more gain than --max-gain-db are listed apart. Per speaker: kept hours,
and with --diarize talk time, turns and how sure their turns' labels are. Minutes: kept, dropped
by reason (an utterance's span of words; a whole file's length), and the rest (pauses, speech no
recogniser heard).
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
    report["recordings"] = [{**entry, **r.figures} for entry, r in zip(report["recordings"], results)]
    report["flagged"] = {r.source: r.figures["flags"] for r in results if r.figures.get("flags")}
    report["speakers"] = _speakers(results, report["hours"]["per_speaker"])
    report["minutes"] = _minutes(results, skips, kept_seconds)
    if extra:
        report.update(extra)
    return report


def _speakers(results: Sequence[FileResult], kept_hours: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each speaker's kept hours, and (from the diarised recordings) talk time, turns and the mean
    confidence of their turns' labels."""
    out = {}
    for name, hours in kept_hours.items():
        diarized = [r.figures["diarization"] for r in results if name in r.figures.get("diarization", {}).get("talk_seconds", {})]
        entry: dict[str, Any] = {"kept_hours": hours}
        if diarized:
            turns = sum(d["turns"][name] for d in diarized)
            confidences = [(d["turns"][name], d["turn_confidence"][name]) for d in diarized if d["turn_confidence"][name] is not None]
            entry |= {
                "talk_seconds": round(sum(d["talk_seconds"][name] for d in diarized), 3), "turns": turns,
                "turn_confidence": round(sum(n * c for n, c in confidences) / turns, 3) if turns and confidences else None,
            }
        out[name] = entry
    return out


def _minutes(results: Sequence[FileResult], skips: Sequence[Skip], kept_seconds: float) -> dict[str, Any]:
    """Minutes of the input kept, dropped by reason (an utterance's words' span; a skipped file's
    length), and the rest (pauses and speech nobody transcribed)."""
    seconds_of = {r.source: r.seconds for r in results}
    dropped: dict[str, float] = defaultdict(float)
    for s in skips:
        dropped[s.reason] += (s.end - s.start) if s.start is not None else seconds_of.get(s.source, 0.0)
    total = sum(seconds_of.values())
    return {
        "input": round(total / 60, 3), "kept": round(kept_seconds / 60, 3),
        "dropped": {reason: round(dropped[reason] / 60, 3) for reason in REASONS if reason in dropped},
        "rest": round(max(0.0, total - kept_seconds - sum(dropped.values())) / 60, 3),
    }


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
    lines += _minutes_text(report.get("minutes")) + _recordings_text(report) + _speakers_text(report.get("speakers", {}))
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


def _minutes_text(minutes: dict[str, Any] | None) -> list[str]:
    if not minutes:
        return []
    rows = [("kept", minutes["kept"])] + [(f"dropped: {reason}", m) for reason, m in minutes["dropped"].items()]
    rows.append(("pauses and untranscribed", minutes["rest"]))
    width = max(len(name) for name, _ in rows)
    return ["", f"minutes of {minutes['input']:.2f} read:"] + [f"  {name:<{width}}  {m:8.2f}" for name, m in rows]


def _recordings_text(report: dict[str, Any]) -> list[str]:
    """A line per recording with its figures (those measured), then the flagged ones."""
    lines = ["", "recordings (level before -> gain, peak, clipped, speech, DNSMOS SIG/BAK/OVRL):"]
    for r in report["recordings"]:
        parts = [f"{r['seconds']:.1f} s, {r['kept_seconds']:.1f} s kept"]
        if level := r.get("loudness"):
            parts.append(f"{level['input_lufs']:.1f} LUFS -> {level['gain_db']['min']:+.1f}..{level['gain_db']['max']:+.1f} dB")
        if r.get("peak_dbfs") is not None:
            parts.append(f"peak {r['peak_dbfs']:.1f} dBFS, clipped {r['clipped']:.2%}")
        if r.get("speech_fraction") is not None:
            parts.append(f"speech {r['speech_fraction']:.0%}")
        if score := r.get("dnsmos"):
            parts.append(f"DNSMOS {score['sig']:.2f}/{score['bak']:.2f}/{score['ovrl']:.2f}")
        if d := r.get("diarization"):
            talk = ", ".join(f"{name} {s:.1f} s" for name, s in d["talk_seconds"].items())
            parts.append(f"talk {talk}; clustering confidence {d['confidence']:.2f} (closest voices {d['separation']:.2f} cosine), "
                         f"{d['overlap_seconds']:.1f} s overlap cut out")
        lines.append(f"  {r['source']}: " + "; ".join(parts))
    if report.get("flagged"):
        lines += ["", "flagged recordings:"] + [f"  {name}: {'; '.join(flags)}" for name, flags in report["flagged"].items()]
    return lines


def _speakers_text(speakers: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, s in speakers.items():
        if "talk_seconds" in s:
            confidence = f", label confidence {s['turn_confidence']:.2f}" if s["turn_confidence"] is not None else ""
            lines.append(f"  {name}: {s['talk_seconds']:.1f} s of talk in {s['turns']} turn(s){confidence}")
    return ["", "speakers (diarised):"] + lines if lines else []


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
