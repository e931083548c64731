"""Reference text against the transcript: word error rates per utterance, to flag mismatches.

Neither side is trusted blindly: a reference may be a script the speaker departed from, and the
recogniser mishears. Where they disagree beyond --max-wer the utterance is dropped (reason
"text mismatch"); where they agree, the recogniser's words are kept, since they carry the timing.

The transcript of the whole recording is aligned to its reference once (difflib's matching
blocks: linear-ish on texts that mostly agree, and the minimal edit alignment there), and each
edit is charged to the utterance holding its transcript words; a deleted reference word is
charged to the utterance before the gap.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

from dia2.text.normalize import comparable_words


@dataclass(frozen=True)
class ReferenceCheck:
    """Word error rate of the whole recording, and of each utterance."""

    file_wer: float
    utterance_wer: tuple[float, ...]


def check_reference(utterances: Sequence[Sequence[str]], reference: str, language: str | None = None) -> ReferenceCheck:
    """utterances: the transcript's words, utterance by utterance, in order; reference: the text.
    Both are compared as `comparable_words` of `language` (numbers spelled out in it)."""
    hyp, owner = [], []  # normalised transcript tokens and the utterance each belongs to
    for u, words in enumerate(utterances):
        for word in words:
            for token in comparable_words(word, language):
                hyp.append(token)
                owner.append(u)
    ref = comparable_words(reference, language)
    errors = [0.0] * len(utterances)
    counts = [0.0] * len(utterances)
    ops = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes()
    for tag, r1, r2, h1, h2 in ops:
        n_ref, n_hyp = r2 - r1, h2 - h1
        if n_hyp == 0:  # deleted reference words: charged to the utterance before the gap
            if not owner:
                continue
            u = owner[max(h1 - 1, 0)]
            errors[u] += n_ref
            counts[u] += n_ref
            continue
        cost = 0 if tag == "equal" else max(n_ref, n_hyp)
        for k in range(h1, h2):
            errors[owner[k]] += cost / n_hyp
            counts[owner[k]] += n_ref / n_hyp
    total_errors = sum(errors) + (len(ref) if not hyp else 0)
    file_wer = total_errors / max(len(ref), 1) if ref else float(len(hyp) > 0)
    return ReferenceCheck(file_wer, tuple(e / c if c else (1.0 if e else 0.0) for e, c in zip(errors, counts)))
