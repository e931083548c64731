"""The word-to-frame alignment rule (spec sections 6 and 7, `dia2.text.align`): frames, steps and
the break entries that make every row a timing the unforced state machine can produce."""

import math

import pytest

from dia2.generation.loop import GenerationConfig
from dia2.text.align import (
    NEW_WORD_STEP_OFFSET,
    AlignedBreak,
    AlignedWord,
    Alignment,
    align_words,
)
from dia2.text.words import SpokenWord


def align(timed: list[tuple[float, float, int]], **kwargs) -> Alignment:
    """Align words given as (start, end, number of text tokens)."""
    words = [SpokenWord(f"w{i}", start, end) for i, (start, end, _) in enumerate(timed)]
    return align_words(words, [tokens for *_, tokens in timed], **kwargs)


# Three words, r = 12.5 frames/s, max_padding 6. Python round() rounds halves to even.
# w0 (0.20-0.50 s, 2 tokens): start = round(2.5) = 2 -> a leading break of 2 frames (popped at
#    step 2, frame 0, where inference pops the first entry), end = 4, step = 2+2 = 4.
#    next = max(2+2+1, round(0.52*12.5 = 6.5) = 6) = 6 <= latest 2+6+1 = 9: no break.
# w1 (0.52-0.90 s, 3 tokens): start = 6, end = 9, step = 8. next = max(10, round(16.25) = 16) = 16
#    > latest 6+7 = 13: a break from where w1 ends, clamp(round(11.25) = 11, 10, 13) = 11, of
#    16-11 = 5 frames, popped at step 13.
# w2 (1.30-1.80 s, 1 token, last): start = 16, end = 17, step = 18. End of speech at
#    min(max(18, round(22.5) = 22), latest 16+7 = 23) = 22, step 24.
THREE_WORDS = [(0.2, 0.5, 2), (0.52, 0.9, 3), (1.3, 1.8, 1)]
THREE_EXPECTED = [
    AlignedWord(start_frame=2, end_frame=4, new_word_step=4, next_frame=6),
    AlignedWord(start_frame=6, end_frame=9, new_word_step=8, next_frame=16),
    AlignedWord(start_frame=16, end_frame=17, new_word_step=18, next_frame=22),
]
THREE_BREAKS = [AlignedBreak(0, 2, 2, before=0), AlignedBreak(11, 5, 13, before=2)]

# Overlapping ASR times: the rule pushes each word past the previous word's tokens.
# w0 (0.0-0.3 s, 3 tokens): start = round(0) = 0 (no leading break), end = 3, step = 2,
#    next = max(0+3+1, round(1.25) = 1) = 4.
# w1 (0.1-0.4 s, 1 token, last): start = 4, end = 5, step = 6, end of speech at
#    min(max(6, round(5.0) = 5), 4+7) = 6, step 8.
OVERLAP_WORDS = [(0.0, 0.3, 3), (0.1, 0.4, 1)]
OVERLAP_EXPECTED = [
    AlignedWord(start_frame=0, end_frame=3, new_word_step=2, next_frame=4),
    AlignedWord(start_frame=4, end_frame=5, new_word_step=6, next_frame=6),
]

# A long last word: 0.1-2.0 s, 2 tokens. start round(1.25) = 1 (a 1-frame leading break), the
# natural end round(25.0) = 25 is past the latest end step the machine allows, 1+6+1 = 8: the
# end of speech is clamped there (step 10); the row's tail keeps the word's audio.
LONG_LAST = [(0.1, 2.0, 2)]


@pytest.mark.parametrize(
    "words, expected, breaks, steps, end_step",
    [
        (THREE_WORDS, THREE_EXPECTED, THREE_BREAKS, (4, 8, 18), 24),
        (OVERLAP_WORDS, OVERLAP_EXPECTED, [], (2, 6), 8),
        # One word at 0.6-1.0 s: round(7.5) = 8 (half to even goes up here), an 8-frame leading
        # break, step 10, end of speech at min(max(10, round(12.5) = 12), 15) = 12, step 14.
        ([(0.6, 1.0, 1)], [AlignedWord(8, 9, 10, 12)], [AlignedBreak(0, 8, 2, 0)], (10,), 14),
        (LONG_LAST, [AlignedWord(1, 3, 3, 8)], [AlignedBreak(0, 1, 2, 0)], (3,), 10),
    ],
)
def test_hand_computed(words, expected, breaks, steps, end_step):
    alignment = align(words)
    assert list(alignment.words) == expected
    assert list(alignment.breaks) == breaks
    assert alignment.new_word_steps == steps
    assert alignment.action_steps == tuple(sorted((*steps, *(b.step for b in breaks))))
    assert alignment.end_of_speech_step == end_step


def test_the_first_entry_lands_where_inference_pops_it():
    # Inference pops the first entry at step initial_padding; the rule puts frame 0 there.
    assert GenerationConfig().initial_padding == 0 - 1 + NEW_WORD_STEP_OFFSET
    for start, frame in [(0.0, 0), (0.03, 0), (0.08, 1), (0.4, 5)]:
        alignment = align([(start, start + 0.3, 1)])
        assert alignment.words[0].start_frame == frame  # the audio is real: the word stays put
        assert alignment.action_steps[0] == GenerationConfig().initial_padding
        assert [b.frames for b in alignment.breaks] == ([frame] if frame else [])


@pytest.mark.parametrize("pause_frames", [0, 3, 4, 8, 25])
def test_pauses_longer_than_the_padding_budget_become_breaks(pause_frames):
    # A 1-token word at frame 0 (step 2): the machine allows the next word 2..7 frames later.
    gap = 2 + pause_frames
    alignment = align([(0.0, 2 / 12.5, 1), (gap / 12.5, gap / 12.5 + 0.2, 1)])
    assert alignment.words[1].start_frame == gap
    if gap <= 7:
        assert alignment.breaks == ()
    else:
        # The break starts where the word's audio ends (frame 2) and runs up to the next word.
        assert alignment.breaks == (AlignedBreak(2, gap - 2, 4, before=1),)


def test_a_long_word_without_a_pause_gets_the_break_the_budget_needs():
    # 2 tokens spoken over 0.8 s (10 frames): the next word 10 frames on needs a break, which
    # starts at the latest frame the budget allows (7), since the word's audio ends later.
    alignment = align([(0.0, 0.8, 2), (0.8, 1.0, 1)])
    assert alignment.breaks == (AlignedBreak(7, 3, 9, before=1),)


def test_a_prefix_continues_at_its_last_frame():
    # A 40-frame prefix whose last word ends at frame 6: a break covers the rest of it.
    alignment = align([(0.0, 0.48, 2)], continue_at=40)
    assert alignment.words[0].next_frame == 40
    assert alignment.breaks == (AlignedBreak(6, 34, 8, before=1),)
    # A prefix ending right after its word needs none.
    assert align([(0.0, 0.3, 2)], continue_at=6).breaks == ()


def test_rounding_is_half_to_even():
    # 0.2 s = 2.5 frames: banker's rounding gives 2 (half-up would give 3).
    assert align([(0.2, 0.2, 1)]).words[0].start_frame == 2
    assert align([(0.2, 0.2, 1)], frame_rate=10.0).words[0].start_frame == 2


def test_word_longer_than_its_time_span_pushes_the_next_word():
    # 5 tokens in 0.08 s: the next word starts after the tokens (start = end + 1).
    alignment = align([(0.08, 0.16, 5), (0.16, 0.3, 1)])
    first, second = alignment.words
    assert second.start_frame == first.end_frame + 1


@pytest.mark.parametrize(
    "words, message",
    [
        ([], "no words"),
        ([(0.0, 0.1, 0)], "at least one"),
        ([(math.nan, 0.1, 1)], "non-finite"),
    ],
)
def test_bad_inputs(words, message):
    with pytest.raises(ValueError, match=message):
        align(words)


def test_every_word_needs_its_token_count():
    with pytest.raises(ValueError, match="2 words but 1 token counts"):
        align_words([SpokenWord("a", 0.0, 0.1), SpokenWord("b", 0.2, 0.3)], [1])
