"""The evaluation's outputs: `eval.json` (every clip, every aggregate) and `report.html`.

The HTML page is self-contained apart from the clips it plays: a summary table (one row per
configuration and topline), strip plots drawn as inline SVG (similarity and WER per clip, duration
over the expected duration), then a table per configuration with an <audio> player per clip,
linked relatively (clips/GROUP/FILE.wav), so the folder can be moved or zipped as a whole.

`staged(folder)` gives a temporary sibling folder that is renamed to `folder` only when the
block completes: a failed evaluation leaves no half-written report.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

JSON_NAME = "eval.json"
HTML_NAME = "report.html"
COLUMNS = {
    "clips": ("clips", "{:d}"), "wer": ("WER", "{:.3f}"), "cer": ("CER", "{:.3f}"), "similarity": ("similarity", "{:.3f}"),
    "dnsmos": ("DNSMOS", "{:.2f}"),
    "similarity_spread": ("sim. spread", "{:.3f}"), "duration_s": ("duration s", "{:.2f}"),
    "duration_ratio": ("dur./expected", "{:.2f}"), "leading_silence_s": ("lead sil. s", "{:.2f}"),
    "trailing_silence_s": ("trail sil. s", "{:.2f}"), "frame_limit_hits": ("frame limit", "{:d}"),
    "word_coverage": ("word cov.", "{:.2f}"),
}
"""Aggregate columns of the summary table: key -> (heading, format)."""
CLIP_COLUMNS = ("wer", "cer", "similarity", "dnsmos", "duration_s", "expected_duration_s", "leading_silence_s",
                "trailing_silence_s", "hit_frame_limit", "word_coverage")


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder`, renamed to it when the block succeeds, removed otherwise."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield work
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # an empty folder the user made for it: rename needs the name free
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_report(data: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write eval.json and report.html into `folder`; returns their paths."""
    json_path = folder / JSON_NAME
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    html_path = folder / HTML_NAME
    html_path.write_text(render_html(data), encoding="utf-8")
    return json_path, html_path


def render_html(data: dict[str, Any]) -> str:
    """The report page of an evaluation's data (as `Evaluation.run` returns it, plus settings)."""
    groups = _groups(data)
    clips = data["clips"] + [c for t in data.get("toplines", {}).values() for c in t["clips"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>dia2-eval report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>dia2-eval report</h1>",
        _settings(data.get("settings", {})),
        "<h2 id='summary'>Summary</h2>", _summary_table(groups),
        "<h2 id='adapter-effect'>Adapter effect</h2>", _effect(data.get("adapter_effect", [])),
        "<h2 id='plots'>Plots</h2>",
        strip_plot("Speaker similarity per clip", _values(clips, groups, "similarity")),
        strip_plot("WER per clip", _values(clips, groups, "wer")),
        strip_plot("Duration / expected duration per clip", _values(clips, groups, "duration_ratio"), reference=1.0),
    ]
    for name, _ in groups:
        rows = [c for c in clips if c["group"] == name]
        parts += [f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2>", _clip_table(rows)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _groups(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, aggregate) of each configuration, then each topline."""
    out = [(c["name"], c["aggregate"]) for c in data["configurations"]]
    out += [(name, t["aggregate"]) for name, t in data.get("toplines", {}).items()]
    return out


def _values(clips: Sequence[dict[str, Any]], groups: Sequence[tuple[str, Any]], key: str) -> dict[str, list[float]]:
    return {name: [c[key] for c in clips if c["group"] == name and c[key] is not None] for name, _ in groups}


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and pattern == "{:d}":
        pattern = "{:.0f}"
    return pattern.format(value)


def _settings(settings: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items())
    return f"<table class='settings'>{rows}</table>"


def _summary_table(groups: Sequence[tuple[str, dict[str, Any]]]) -> str:
    head = "<tr><th>configuration</th>" + "".join(f"<th>{h}</th>" for h, _ in COLUMNS.values()) + "</tr>"
    rows = [
        f"<tr><td><a href='#{html.escape(name)}'>{html.escape(name)}</a></td>"
        + "".join(f"<td>{_fmt(agg.get(k), f)}</td>" for k, (_, f) in COLUMNS.items()) + "</tr>"
        for name, agg in groups
    ]
    return f"<table class='summary'>{head}{''.join(rows)}</table>"


def _effect(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return "<p>No adapters evaluated.</p>"
    items = "".join(
        f"<li class='{'pass' if r['passed'] else 'fail'}'>{html.escape(r['configuration'])}: "
        f"{r['identical_clips']} of {r['clips']} clips identical to {html.escape(r['compared_with'])} "
        f"({'the adapter changes the output' if r['passed'] else 'THE ADAPTER CHANGES NOTHING'})</li>"
        for r in records
    )
    return f"<ul>{items}</ul>"


def _clip_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "<tr><th>audio</th><th>text</th><th>seed</th>" + "".join(f"<th>{k}</th>" for k in CLIP_COLUMNS) + "<th>heard</th></tr>"
    body = []
    for c in rows:
        audio = f"<audio controls preload='none' src='{html.escape(c['file'], quote=True)}'></audio>"
        cells = "".join(f"<td>{_fmt(c[k])}</td>" for k in CLIP_COLUMNS)
        body.append(
            f"<tr><td>{audio}</td><td>{html.escape(c['text'] or '')}</td><td>{_fmt(c['seed'], '{:d}')}</td>{cells}"
            f"<td>{html.escape(c['transcript'] or '')}</td></tr>"
        )
    return f"<table class='clips'>{head}{''.join(body)}</table>"


def strip_plot(title: str, groups: dict[str, list[float]], reference: float | None = None) -> str:
    """An inline SVG strip plot: one column per group, one dot per value, the group mean as a bar."""
    width, height, left, bottom, top = max(360, 110 * len(groups) + 70), 240, 50, 40, 30
    values = [v for vs in groups.values() for v in vs] + ([reference] if reference is not None else [])
    if not values:
        return f"<figure><figcaption>{html.escape(title)}: no values</figcaption></figure>"
    low, high = min(0.0, min(values)), max(values)
    high = high if high > low else low + 1.0
    y = lambda v: top + (height - top - bottom) * (1 - (v - low) / (high - low))
    out = [f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img'>",
           f"<text x='{width / 2}' y='18' text-anchor='middle' class='title'>{html.escape(title)}</text>"]
    for tick in (low, (low + high) / 2, high):
        out.append(f"<line x1='{left}' x2='{width - 10}' y1='{y(tick):.1f}' y2='{y(tick):.1f}' class='grid'/>"
                   f"<text x='{left - 4}' y='{y(tick) + 4:.1f}' text-anchor='end'>{tick:.2f}</text>")
    if reference is not None:
        out.append(f"<line x1='{left}' x2='{width - 10}' y1='{y(reference):.1f}' y2='{y(reference):.1f}' class='ref'/>")
    step = (width - left - 10) / max(1, len(groups))
    for i, (name, vs) in enumerate(groups.items()):
        x = left + step * (i + 0.5)
        for j, v in enumerate(vs):
            jitter = (j % 7 - 3) * step / 40
            out.append(f"<circle cx='{x + jitter:.1f}' cy='{y(v):.1f}' r='4'><title>{html.escape(name)}: {v:.3f}</title></circle>")
        if vs:
            mean = sum(vs) / len(vs)
            out.append(f"<line x1='{x - step / 4:.1f}' x2='{x + step / 4:.1f}' y1='{y(mean):.1f}' y2='{y(mean):.1f}' class='mean'/>")
        out.append(f"<text x='{x:.1f}' y='{height - bottom + 16}' text-anchor='middle'>{html.escape(name)}</text>")
    out.append("</svg></figure>")
    return "".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td:nth-child(2), th { text-align: left; }
figure { display: inline-block; margin: 0.5em; }
svg text { font-size: 11px; fill: #333; } svg .title { font-size: 13px; font-weight: bold; }
svg circle { fill: #3b6fb6; fill-opacity: 0.7; } svg .grid { stroke: #ddd; }
svg .mean { stroke: #d33; stroke-width: 3; } svg .ref { stroke: #2a2; stroke-dasharray: 4 3; }
li.pass { color: #1a6e1a; } li.fail { color: #b00; font-weight: bold; }
audio { height: 2em; }
"""
