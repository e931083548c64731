"""Text to timed tokens, shared by voice prefixes, generation and training rows. Imports `dia2.model`
(and `dia2.errors`) only.

    words.py          the one timed-word type (`SpokenWord`)
    script.py         script parsing: speaker tags, breaks, entries, text control ids (spec section 5)
    tokenizer.py      where the text tokenizer comes from, and loading it
    state_machine.py  the text-stream state machine, exact to the published runtime
    align.py          word-to-frame alignment: the published rule (prefixes) and ours (training rows)
    utterance.py      timed words -> entries and alignment, for a training row or a voice prefix
    parts.py          a long script cut into parts that each fit one generation
    transcript.py     a typed transcript re-aligned to the words a recogniser heard
    normalize.py      text normalisation per language (recogniser output -> training text; WER)
    numbers.py        numbers written as digits -> the words a speaker says (en, de, es, fr)
    coverage.py       how well a tokenizer covers a language, and its text/audio pacing
"""
