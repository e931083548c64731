"""How well Dia2's tokenizer covers a corpus's language, before you train on it.

    python -m finetune.language_report corpora/de                 # the corpus's own tokenizer
    python -m finetune.language_report corpora/de --tokenizer nari-labs/Dia2-2B --json de.json

Prints tokens per word, the byte-fallback share, the words split into the most tokens, and the
frames of speech per token against English (`dia2.text.coverage` defines each figure), so you know
whether the language's text keeps pace with its audio in Dia2's one-token-a-frame text stream
and how much of the 2-minute context its scripts take. dia2-prep writes the same section into
the corpus's qc_report.txt. On the tiny demo model's tokenizer the figures describe that test
tokenizer only (the report says so); measure with the real model's (--tokenizer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dia2.data.corpus import SPLITS, CorpusError, CorpusMeta
from dia2.errors import Dia2Error, report
from dia2.text.coverage import coverage_report, coverage_text, words_of_rows
from dia2.text.tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_source
from dia2.tiny import model_source

PROG = "python -m finetune.language_report"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="corpus folder written by dia2-prep")
    parser.add_argument("--tokenizer", help="model or tokenizer folder / Hub repo id to measure with (default: the "
                        "model the corpus was built for, as its corpus_meta.json names it)")
    parser.add_argument("--language", help="language code shown in the report (default: the corpus's, from dia2-prep --language)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def corpus_words(folder: Path) -> list:
    """Every timed word of the corpus, all splits."""
    import datasets

    try:
        splits = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise CorpusError(f"{folder} has no readable dataset ({exc}); rebuild it with dia2-prep") from exc
    return [w for split in SPLITS if split in splits for w in words_of_rows(splits[split].select_columns(["words"]))]


def load_measuring_tokenizer(name: str):
    """A tokenizer folder, or a model (folder, Hub repo id, tiny) whose tokenizer to take; a name
    that is neither (a corpus built from a local model records only its folder's name) is refused
    with the fix."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "vocab.json").is_file():
        return load_tokenizer(path)
    try:
        source = model_source(name)
        return load_tokenizer(tokenizer_source(source, source.manifest().tokenizer, None))
    except Dia2Error as exc:
        raise CorpusError(f"cannot load the tokenizer '{name}' ({exc}): pass --tokenizer with the model or tokenizer folder") from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        meta = CorpusMeta.load(args.corpus)
        tokenizer = load_measuring_tokenizer(args.tokenizer or meta.tokenizer)
        if args.tokenizer is None and tokenizer_fingerprint(tokenizer) != meta.tokenizer_fingerprint:
            raise CorpusError(
                f"the tokenizer found as '{meta.tokenizer}' is not the one corpus {args.corpus} was built with: "
                "pass it with --tokenizer"
            )
        language = args.language or meta.extra.get("language")
        figures = coverage_report(tokenizer, corpus_words(args.corpus), language).as_dict()
    except Dia2Error as exc:
        return report(PROG, exc)
    except ValueError as exc:  # a corpus without words
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(coverage_text(figures)))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
