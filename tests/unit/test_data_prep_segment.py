"""Utterance segmentation at pauses, and reference-text word error rates per utterance."""

import pytest

from data_prep.config import SegmentOptions
from data_prep.reference import check_reference
from dia2.text.normalize import comparable_words as normalize
from data_prep.segment import span_seconds, split_utterances
from dia2.text.words import SpokenWord


def words_at(starts, length=0.4, speaker=1):
    return [SpokenWord(f"w{i}", s, s + length, speaker, 0.9) for i, s in enumerate(starts)]


def regular(start, stop, step=0.5):
    """Words every `step` seconds from start to stop (0.1 s gaps between them)."""
    n = int(round((stop - start) / step))
    return [start + i * step for i in range(n)]


def test_a_long_pause_always_ends_an_utterance():
    words = words_at([0.0, 0.5, 1.0, 3.0, 3.5])  # 1.6 s of silence after the third word
    utterances = split_utterances(words, SegmentOptions(max_pause=1.5))
    assert [[w.text for w in u] for u in utterances] == [["w0", "w1", "w2"], ["w3", "w4"]]
    assert len(split_utterances(words, SegmentOptions(max_pause=2.0))) == 1


def test_speech_under_the_limit_stays_whole_despite_short_pauses():
    words = words_at(regular(0, 5) + regular(5.6, 10))  # a 0.7 s pause in the middle
    assert len(split_utterances(words, SegmentOptions(max_seconds=30))) == 1


def test_long_speech_is_cut_at_the_last_good_pause_that_fits():
    # 30 s of speech with 0.1 s gaps, and 0.6 s pauses after 8 s and after 14 s.
    starts = regular(0, 8) + regular(8.6, 14.6) + regular(15.2, 30)
    utterances = split_utterances(words_at(starts), SegmentOptions(max_seconds=20, split_pause=0.3))
    assert [u[0].start for u in utterances] == [0.0, 15.2]  # cut at 14 s, the later good pause
    assert all(span_seconds(u) <= 20 for u in utterances)
    assert sum(len(u) for u in utterances) == len(starts)


def test_without_a_good_pause_the_longest_one_is_used():
    starts = regular(0, 12.5) + regular(12.75, 25)  # gaps of 0.1 s, and one of 0.25 s before 12.75
    utterances = split_utterances(words_at(starts), SegmentOptions(max_seconds=15, split_pause=0.3))
    assert utterances[1][0].start == pytest.approx(12.75)
    assert all(span_seconds(u) <= 15 for u in utterances)


def test_a_cut_never_leaves_less_than_min_seconds_before_it():
    # A 0.9 s pause right after the first word is the longest, but cutting there leaves 0.4 s.
    starts = [0.0] + regular(1.3, 25)
    utterances = split_utterances(words_at(starts), SegmentOptions(max_seconds=10, min_seconds=1.0, split_pause=2.0))
    assert all(span_seconds(u) >= 1.0 for u in utterances)
    assert all(span_seconds(u) <= 10 for u in utterances)


def test_overlapping_dialogue_is_not_cut_inside_the_overlap():
    first = [SpokenWord("long", 0.0, 3.0, 1, 0.9)]  # speaker 1 still talking while speaker 2 starts
    second = [SpokenWord("yes", 1.0, 1.3, 2, 0.9), SpokenWord("sure", 3.2, 3.5, 2, 0.9)]
    words = sorted(first + second, key=lambda w: w.start)
    utterances = split_utterances(words, SegmentOptions(max_pause=1.5))
    assert len(utterances) == 1  # the 1.9 s between "yes" and "sure" is not a pause: "long" runs to 3.0


def test_a_single_overlong_word_is_its_own_utterance():
    words = [SpokenWord("a", 0.0, 0.3, probability=0.9), SpokenWord("hmmmm", 0.4, 40.0, probability=0.9), SpokenWord("b", 40.1, 40.4, probability=0.9)]
    utterances = split_utterances(words, SegmentOptions(max_seconds=30, max_pause=5))
    assert [[w.text for w in u] for u in utterances] == [["a"], ["hmmmm"], ["b"]]


def test_normalize_drops_case_and_punctuation():
    assert normalize("Hello, there! It’s well-known.") == ["hello", "there", "it's", "well", "known"]


def test_reference_errors_are_charged_to_their_utterance():
    utterances = [["Hello", "there,"], ["how", "are", "you?"], ["I", "am", "fine."]]
    exact = check_reference(utterances, "Hello there. How are you? I am fine.")
    assert exact.file_wer == 0 and exact.utterance_wer == (0, 0, 0)
    wrong = check_reference(utterances, "Hello there. Where is the station? I am fine.")
    assert wrong.utterance_wer[0] == 0 and wrong.utterance_wer[2] == 0
    assert wrong.utterance_wer[1] >= 0.75
    assert wrong.file_wer == pytest.approx(4 / 9)


def test_reference_words_missing_from_the_transcript_count_against_the_utterance_before():
    check = check_reference([["one", "two"], ["five", "six"]], "one two three four five six")
    assert check.utterance_wer == (pytest.approx(2 / 4), 0)
    assert check.file_wer == pytest.approx(2 / 6)
