"""The token grid shared by training and decoding. Imports `dia2.model` and `dia2.text` (and
`dia2.errors`) only.

    grid.py           the delayed grid (spec section 4): delay / undelay, text channels
    teacher.py        the teacher-forced training grid of an utterance (spec section 7)
    corpus.py         the corpus format data prep writes and the trainer reads
"""
