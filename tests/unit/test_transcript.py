"""A corrected transcript is re-aligned to the heard words: matches keep their times, edits take
the span of what they replace (dia2.text.transcript), and a voice takes those words."""

import pytest
import torch

from dia2.generation.prefix import PrefixError, VoicePrefix, with_transcript
from dia2.text.transcript import TranscriptError, align_transcript, comparable, spread_transcript, untagged
from dia2.text.words import SpokenWord

HEARD = (
    SpokenWord("Hello", 0.0, 0.4, 1, 0.9),
    SpokenWord("dia", 0.5, 0.8, 1, 0.6),
    SpokenWord("two", 0.8, 1.0, 1, 0.7),
    SpokenWord("is", 1.1, 1.3, 1, 0.95),
    SpokenWord("today", 1.3, 1.9, 2, 0.8),
    SpokenWord("great.", 2.5, 3.0, 2, 0.99),
)


def times(alignment):
    return [(w.text, round(w.start, 3), round(w.end, 3), w.speaker) for w in alignment.words]


def test_the_heard_words_typed_again_keep_every_time_and_probability():
    alignment = align_transcript(HEARD, "Hello dia two is today great.")
    assert alignment.words == HEARD
    assert not alignment.changed and alignment.matched_fraction == 1.0


def test_case_and_punctuation_do_not_make_a_word_different():
    alignment = align_transcript(HEARD, "hello, Dia TWO is today great")
    assert [row.placement for row in alignment.rows] == ["heard"] * 6
    assert [w.start for w in alignment.words] == [w.start for w in HEARD]
    assert [w.text for w in alignment.words] == ["hello,", "Dia", "TWO", "is", "today", "great"]
    assert comparable("Ça,") == "ça" and comparable("--") == ""


def test_a_merge_and_a_split_take_the_span_of_the_heard_words_they_replace():
    alignment = align_transcript(HEARD, "Hello Dia2 is to day great.")
    assert times(alignment) == [
        ("Hello", 0.0, 0.4, 1), ("Dia2", 0.5, 1.0, 1), ("is", 1.1, 1.3, 1),
        ("to", 1.3, 1.54, 2), ("day", 1.54, 1.9, 2), ("great.", 2.5, 3.0, 2),
    ]
    assert [row.placement for row in alignment.rows] == ["heard", "merged", "heard", "split", "split", "heard"]
    assert alignment.rows[1].heard == ("dia", "two")


def test_a_replaced_word_keeps_its_place_and_the_words_after_it_keep_theirs():
    # Position matching would give the words after an inserted word their neighbour's time.
    alignment = align_transcript(HEARD, "Hello Dia too is today really great.")
    by_word = {w.text: (w.start, w.end) for w in alignment.words}
    assert by_word["too"] == (0.8, 1.0) and by_word["is"] == (1.1, 1.3) and by_word["today"] == (1.3, 1.9)
    assert by_word["really"] == (1.9, 2.5) and by_word["great."] == (2.5, 3.0)
    assert alignment.rows[2].placement == "replaced" and alignment.rows[2].heard == ("two",)


def test_a_missed_word_in_a_pause_takes_the_pause():
    alignment = align_transcript(HEARD, "Hello dia two is today very great.")
    row = next(r for r in alignment.rows if r.typed == "very")
    assert (row.start, row.end, row.placement, row.heard) == (1.9, 2.5, "inserted", ())


def test_a_missed_word_with_no_pause_shares_its_neighbours_span():
    first = align_transcript(HEARD, "Well Hello dia two is today great.")
    assert times(first)[:2] == [("Well", 0.0, 0.178, 1), ("Hello", 0.178, 0.4, 1)]
    last = align_transcript(HEARD, "Hello dia two is today great. Bye")
    assert times(last)[-2:] == [("great.", 2.5, 2.812, 2), ("Bye", 2.812, 3.0, 2)]


def test_words_the_transcript_leaves_out_are_dropped_and_shown():
    alignment = align_transcript(HEARD, "Hello dia two today great.")
    assert [w.text for w in alignment.dropped] == ["is"]
    assert ["-", "is", "1.10", "1.30", "dropped"] in alignment.table()
    assert [row[0] for row in alignment.table()] == ["Hello", "dia", "two", "-", "today", "great."]


def test_times_never_go_backwards_and_stay_inside_the_recording():
    for text in ("a b c d e f g h", "Hello", "great. Hello", "x Hello y dia z two w is v today u great. t"):
        words = align_transcript(HEARD, text).words
        assert len(words) == len(text.split())
        for a, b in zip(words, words[1:]):
            assert a.start <= a.end <= b.start + 1e-9
        assert words[0].start >= 0.0 and words[-1].end <= 3.0


def test_a_transcript_of_other_speech_scores_near_zero():
    assert align_transcript(HEARD, "completely different words here").matched_fraction == 0.0


def test_empty_inputs_are_refused_with_the_fix():
    with pytest.raises(TranscriptError, match="empty"):
        align_transcript(HEARD, "  ")
    with pytest.raises(TranscriptError, match="no words were heard"):
        align_transcript((), "hello")


def test_a_voice_takes_the_aligned_words():
    voice = VoicePrefix(torch.zeros(8, 40, dtype=torch.long), HEARD)
    corrected = with_transcript(voice, "Hello Dia2 is to day great.")
    assert [w.text for w in corrected.words] == ["Hello", "Dia2", "is", "to", "day", "great."]
    assert corrected.words[2] == SpokenWord("is", 1.1, 1.3, 1, 0.95)
    assert torch.equal(corrected.codes, voice.codes)
    with pytest.raises(PrefixError, match="transcript"):
        with_transcript(voice, "")


SPANS = (SpokenWord("", 0.5, 1.5, 1), SpokenWord("", 2.0, 2.5, 1), SpokenWord("", 3.0, 4.0, 2))


def test_without_heard_words_the_typed_ones_are_spread_over_the_speech_by_length():
    alignment = spread_transcript(SPANS[:1], "aa bbbb")
    assert times(alignment) == [("aa", 0.5, 0.833, 1), ("bbbb", 0.833, 1.5, 1)]
    # Over several spans: each word in the span its middle falls in, never in a pause.
    spread = spread_transcript(SPANS, "one two three four five six")
    assert [w.text for w in spread.words] == "one two three four five six".split()
    inside = [any(s.start <= w.start < w.end <= s.end + 1e-9 for s in SPANS) for w in spread.words]
    assert all(inside) and [w.start for w in spread.words] == sorted(w.start for w in spread.words)
    assert {w.speaker for w in spread.words} == {1, 2} and all(r.placement == "spread" for r in spread.rows)
    assert spread.matched == 0 and spread.changed and all(w.probability == 1.0 for w in spread.words)


def test_speaker_tags_keep_each_speakers_words_on_their_own_speech():
    tagged = spread_transcript(SPANS, "[S1] Hello there my friend. [S2] Hi!")
    assert times(tagged)[-1] == ("Hi!", 3.0, 4.0, 2)
    assert all(w.speaker == 1 and w.end <= 2.5 for w in tagged.words[:-1])
    assert untagged("[S1] Hello there. [S2] Hi!") == "Hello there. Hi!"
    with pytest.raises(TranscriptError, match=r"\[S2\]"):
        spread_transcript(SPANS[:2], "[S1] Hello. [S2] Hi!")
    with pytest.raises(TranscriptError, match="empty"):
        spread_transcript(SPANS, " [S1] ")
    with pytest.raises(TranscriptError, match="no speech"):
        spread_transcript((), "hello")
