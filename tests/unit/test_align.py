"""The word-to-frame alignment rule (spec sections 6 and 7)."""

import math

import pytest

from dia2.text.align import AlignedWord, TimedWord, align_words

# Three words, r = 12.5 frames/s, cur = 0. Python round() rounds halves to even.
# w0 (0.20-0.50 s, 2 tokens): round(2.5) = 2 -> start = max(0+1, 2) = 2, end = 2+2 = 4, step = 2-1+3 = 4,
#    next = max(4+1, round(0.52*12.5 = 6.5) = 6) = 6, padding = 6-2-1 = 3; cur = 4.
# w1 (0.52-0.90 s, 3 tokens): start = max(5, 6) = 6, end = 9, step = 8,
#    next = max(10, round(1.3*12.5 = 16.25) = 16) = 16, padding = 16-6-1 = 9; cur = 9.
# w2 (1.30-1.80 s, 1 token, last): start = max(10, 16) = 16, end = 17, step = 18,
#    next = max(18, round(1.8*12.5 = 22.5) = 22) = 22, padding = 22-16-1 = 5.
# End of speech: next_last - 1 + 3 = 22 + 2 = 24.
THREE_WORDS = [TimedWord(0.2, 0.5, 2), TimedWord(0.52, 0.9, 3), TimedWord(1.3, 1.8, 1)]
THREE_EXPECTED = [
    AlignedWord(start_frame=2, end_frame=4, new_word_step=4, padding=3, next_frame=6),
    AlignedWord(start_frame=6, end_frame=9, new_word_step=8, padding=9, next_frame=16),
    AlignedWord(start_frame=16, end_frame=17, new_word_step=18, padding=5, next_frame=22),
]

# Overlapping ASR times: the rule pushes each word past the previous word's tokens.
# w0 (0.0-0.3 s, 3 tokens): start = max(1, 0) = 1, end = 4, step = 3,
#    next = max(5, round(0.1*12.5 = 1.25) = 1) = 5, padding = 5-1-1 = 3; cur = 4.
# w1 (0.1-0.4 s, 1 token, last): start = max(5, 1) = 5, end = 6, step = 7,
#    next = max(7, round(0.4*12.5 = 5.0) = 5) = 7, padding = 7-5-1 = 1. End of speech: 7+2 = 9.
OVERLAP_WORDS = [TimedWord(0.0, 0.3, 3), TimedWord(0.1, 0.4, 1)]
OVERLAP_EXPECTED = [
    AlignedWord(start_frame=1, end_frame=4, new_word_step=3, padding=3, next_frame=5),
    AlignedWord(start_frame=5, end_frame=6, new_word_step=7, padding=1, next_frame=7),
]


@pytest.mark.parametrize(
    "words, expected, steps, end_step",
    [
        (THREE_WORDS, THREE_EXPECTED, (4, 8, 18), 24),
        (OVERLAP_WORDS, OVERLAP_EXPECTED, (3, 7), 9),
        # One word at 0.6-1.0 s: round(7.5) = 8 (half to even goes up here), end = 9, step = 10,
        # next = max(10, round(12.5) = 12) = 12, padding = 12-8-1 = 3, end of speech 12-1+3 = 14.
        ([TimedWord(0.6, 1.0, 1)], [AlignedWord(8, 9, 10, 3, 12)], (10,), 14),
    ],
)
def test_hand_computed(words, expected, steps, end_step):
    alignment = align_words(words)
    assert list(alignment.words) == expected
    assert alignment.new_word_steps == steps
    assert alignment.end_of_speech_step == end_step


def test_rounding_is_half_to_even():
    # 0.2 s = 2.5 frames: banker's rounding gives 2 (half-up would give 3).
    assert align_words([TimedWord(0.2, 0.2, 1)]).words[0].start_frame == 2
    assert align_words([TimedWord(0.2, 0.2, 1)], frame_rate=10.0).words[0].start_frame == 2


def test_word_longer_than_its_time_span_gets_no_negative_padding():
    # 5 tokens in 0.08 s: end frame runs past the next word's start; padding stays >= 0 and the
    # next word starts after the tokens (start = end + 1).
    alignment = align_words([TimedWord(0.08, 0.16, 5), TimedWord(0.16, 0.3, 1)])
    first, second = alignment.words
    assert first.padding >= 0 and second.start_frame == first.end_frame + 1


@pytest.mark.parametrize(
    "words, message",
    [
        ([], "no words"),
        ([TimedWord(0.0, 0.1, 0)], "at least one"),
        ([TimedWord(math.nan, 0.1, 1)], "non-finite"),
    ],
)
def test_bad_inputs(words, message):
    with pytest.raises(ValueError, match=message):
        align_words(words)
