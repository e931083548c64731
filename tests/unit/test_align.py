"""The two word-to-frame alignment rules (`dia2.text.align`, docs/alignment.md): the training rule
(frames, steps and the break entries that make every row a timing the unforced state machine can
produce) and the published prefix rule (what the published runtime forces for a voice prefix).
Every expected number is worked out by hand in the comments, from the spec's formulas."""

import math

import pytest

from dia2.generation.config import GenerationConfig
from dia2.text.align import (
    NEW_WORD_STEP_OFFSET,
    AlignedBreak,
    AlignedWord,
    Alignment,
    prefix_alignment,
    training_alignment,
)
from dia2.text.words import SpokenWord


def _words(timed: list[tuple]) -> list[SpokenWord]:
    """Words given as (start, end, number of text tokens[, speaker])."""
    return [SpokenWord(f"w{i}", start, end, *speaker) for i, (start, end, _, *speaker) in enumerate(timed)]


def align(timed: list[tuple[float, float, int]], **kwargs) -> Alignment:
    """The training rule over words given as (start, end, number of text tokens)."""
    return training_alignment(_words(timed), [tokens for _, _, tokens, *_ in timed], **kwargs)


def align_prefix(timed: list[tuple], **kwargs) -> Alignment:
    """The prefix rule over words given as (start, end, number of text tokens[, speaker])."""
    return prefix_alignment(_words(timed), [tokens for _, _, tokens, *_ in timed], **kwargs)


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
    with pytest.raises(ValueError, match=message):
        align_prefix(words)


def test_every_word_needs_its_token_count():
    for rule in (training_alignment, prefix_alignment):
        with pytest.raises(ValueError, match="2 words but 1 token counts"):
            rule([SpokenWord("a", 0.0, 0.1), SpokenWord("b", 0.2, 0.3)], [1])


# --- the prefix rule (published behaviour, spec section 6 as written before train-as-infer) -------
#
# Per recording, cur = its first frame: start = max(cur + 1, round(start * r)), end = start + n,
# step = start - 1 + 3, next = max(end + 1, round(next word's start * r)) (the recording's last
# word: round(end * r)), padding = next - start - 1, cur = end. No break entries.

# THREE_WORDS under the prefix rule: the same word frames as the training rule, other entries.
# w0: start max(1, round(2.5) = 2) = 2, end 4, step 4, next max(5, round(6.5) = 6) = 6, padding 3.
# w1: start max(5, 6) = 6, end 9, step 8, next max(10, round(16.25) = 16) = 16, padding 9: the
#     pause is the word's padding, beyond max_padding 6 (the training rule made it a break).
# w2: start max(10, 16) = 16, end 17, step 18, next max(18, round(22.5) = 22) = 22, padding 5.
THREE_PREFIX = [AlignedWord(2, 4, 4, 6), AlignedWord(6, 9, 8, 16), AlignedWord(16, 17, 18, 22)]

# Long pauses: w0 (0.0-0.3 s, 2 tokens): start max(1, 0) = 1 (never frame 0), end 3, step 3,
#    next max(4, round(6.5) = 6) = 6, padding 4.
# w1 (0.52-0.9 s, 3 tokens): start 6, end 9, step 8, next max(10, round(25.0) = 25) = 25, padding 18.
# w2 (2.0-2.4 s, 1 token): start max(10, 25) = 25, end 26, step 27, next max(27, 30) = 30, padding 4.
LONG_PAUSES = [(0.0, 0.3, 2), (0.52, 0.9, 3), (2.0, 2.4, 1)]
LONG_PAUSES_PREFIX = [AlignedWord(1, 3, 3, 6), AlignedWord(6, 9, 8, 25), AlignedWord(25, 26, 27, 30)]


@pytest.mark.parametrize(
    "words, expected, paddings",
    [
        (THREE_WORDS, THREE_PREFIX, [3, 9, 5]),
        (LONG_PAUSES, LONG_PAUSES_PREFIX, [4, 18, 4]),
        # A pause of padding 7, one beyond max_padding: w0 (0.1-0.3 s, 1 token) start round(1.25)
        # = 1, end 2, step 3, next max(3, round(9.0) = 9) = 9; w1 (0.72-0.9 s) start 9, end 10,
        # step 11, next max(11, round(11.25) = 11) = 11.
        ([(0.1, 0.3, 1), (0.72, 0.9, 1)], [AlignedWord(1, 2, 3, 9), AlignedWord(9, 10, 11, 11)], [7, 1]),
        # Overlapping ASR times: w1 waits for w0's 3 tokens, start max(0+1+3, round(1.25)) = 4.
        (OVERLAP_WORDS, [AlignedWord(1, 4, 3, 5), AlignedWord(5, 6, 7, 7)], [3, 1]),
    ],
)
def test_prefix_rule_hand_computed(words, expected, paddings):
    alignment = align_prefix(words)
    assert list(alignment.words) == expected
    assert [w.padding for w in alignment.words] == paddings
    assert alignment.breaks == ()
    assert alignment.action_steps == alignment.new_word_steps == tuple(w.new_word_step for w in expected)


def test_the_two_rules_differ_in_entries_not_in_word_frames():
    """Pauses and the lead-in: the training rule adds break entries, the prefix rule pads the
    word before; where the heard word is at frame >= 1, both put it there."""
    prefix, training = align_prefix(THREE_WORDS), align(THREE_WORDS)
    assert [w.start_frame for w in prefix.words] == [w.start_frame for w in training.words] == [2, 6, 16]
    assert prefix.new_word_steps == training.new_word_steps == (4, 8, 18)
    assert prefix.breaks == () and len(training.breaks) == 2


@pytest.mark.parametrize("start, frame", [(0.0, 1), (0.03, 1), (0.08, 1), (0.12, 2), (0.4, 5)])
def test_prefix_rule_first_word_frame(start, frame):
    # Published: cur = 0, so the first word starts at max(1, round(start * 12.5)): frame 1 (step
    # 3) at the earliest, where the training rule puts a word heard at 0.0 s at frame 0 (step 2).
    # 0.12 s = 1.5 frames rounds (half to even) to 2.
    alignment = align_prefix([(start, start + 0.3, 1)])
    assert alignment.words[0].start_frame == frame
    assert alignment.new_word_steps == (frame + 2,)
    assert align([(start, start + 0.3, 1)]).words[0].start_frame == round(start * 12.5)


@pytest.mark.parametrize("pause_frames", [0, 5, 6, 25])
def test_prefix_rule_pads_any_pause_until_the_next_word(pause_frames):
    # A 1-token word at frame 1 (0.08 s) and the next one 2 + pause_frames frames later: its
    # padding is next - start - 1 whatever max_padding (6) allows unforced, and no break entry.
    gap = 1 + 2 + pause_frames
    alignment = align_prefix([(0.08, 0.16, 1), (gap / 12.5, gap / 12.5 + 0.2, 1)])
    assert alignment.words[1].start_frame == gap
    assert alignment.words[0].padding == gap - 1 - 1
    assert alignment.breaks == ()


# Two recordings (speaker 1's, 19 frames = 1.52 s, then speaker 2's), times from the prefix start:
# speaker 1: hello (0.30-0.60 s, 2 tokens): start max(1, round(3.75) = 4) = 4, end 6, step 6,
#     next max(7, round(8.75) = 9) = 9, padding 4.
#   there (0.70-1.00 s, 1 token), the last of its recording: start 9, end 10, step 11,
#     next max(11, round(12.5) = 12) = 12 (its own end, not speaker 2's first word), padding 2.
# speaker 2, cur = 19: how (1.52-1.72 s, i.e. 0.0 s into its recording, 1 token): start
#     max(20, round(19.0) = 19) = 20 (frame 1 of its recording), end 21, step 22 (+3, as speaker
#     1's: the published runtime gave speaker 2 no +3, which the spec fixes), next max(22,
#     round(22.75) = 23) = 23, padding 2.
#   are (1.82-2.02 s, 2 tokens): start 23, end 25, step 25, next max(26, round(25.25) = 25) = 26.
TWO_SPEAKERS = [(0.30, 0.60, 2, 1), (0.70, 1.00, 1, 1), (1.52, 1.72, 1, 2), (1.82, 2.02, 2, 2)]
TWO_SPEAKERS_PREFIX = [AlignedWord(4, 6, 6, 9), AlignedWord(9, 10, 11, 12), AlignedWord(20, 21, 22, 23), AlignedWord(23, 25, 25, 26)]


def test_prefix_rule_two_recordings():
    alignment = align_prefix(TWO_SPEAKERS, speaker_2_frame=19)
    assert list(alignment.words) == TWO_SPEAKERS_PREFIX
    assert [w.padding for w in alignment.words] == [4, 2, 2, 2]
    assert alignment.breaks == ()


def test_prefix_rule_one_recording_with_both_speakers():
    # Both speakers in one recording (a long script's tail): one cursor, and "there" pads until
    # "how" (next max(11, round(19.0) = 19) = 19, padding 9); how starts at max(11, 19) = 19.
    alignment = align_prefix(TWO_SPEAKERS)
    assert list(alignment.words[:3]) == [AlignedWord(4, 6, 6, 9), AlignedWord(9, 10, 11, 19), AlignedWord(19, 20, 21, 23)]


def test_speaker_2_waits_for_the_tokens_of_speaker_1s_last_word():
    # Speaker 1's word (0.0-0.2 s, 5 tokens) starts at frame 1 and ends at 6, past speaker 2's
    # recording start (3): speaker 2's word (0.24 s, round(3.0) = 3) starts at max(6 + 1, 3) = 7,
    # not at 4, where the machine would still be emitting the 5 tokens and drop the new_word.
    alignment = align_prefix([(0.0, 0.2, 5, 1), (0.24, 0.4, 1, 2)], speaker_2_frame=3)
    assert [w.start_frame for w in alignment.words] == [1, 7]


def test_training_rule_two_speakers_in_one_row():
    # A training row is one recording, whatever its speakers; TWO_SPEAKERS by the training rule:
    # hello: start round(3.75) = 4, a 4-frame leading break (step 2); next round(8.75) = 9 <= 4+7.
    # there (1 token): start 9, next round(19.0) = 19 > latest 9+7 = 16: a break from where it
    #     ends, clamp(round(12.5) = 12, 11, 16) = 12, of 19-12 = 7 frames, step 12-1+3 = 14.
    # how: start 19, next round(22.75) = 23. are (2 tokens, last): start 23, end of speech at
    #     min(max(26, round(25.25) = 25), 23+7) = 26, step 28.
    alignment = align(TWO_SPEAKERS)
    assert list(alignment.words) == [AlignedWord(4, 6, 6, 9), AlignedWord(9, 10, 11, 19), AlignedWord(19, 20, 21, 23), AlignedWord(23, 25, 25, 26)]
    assert alignment.breaks == (AlignedBreak(0, 4, 2, before=0), AlignedBreak(12, 7, 14, before=2))
    assert alignment.end_of_speech_step == 28
