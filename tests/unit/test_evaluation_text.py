"""dia2.evaluation.text: what a script says, normalised, and the edit-distance error rates."""

import pytest

from dia2.evaluation.text import (
    char_error_rate,
    edit_distance,
    normalize_words,
    spoken_text,
    word_error_rate,
)


def test_spoken_text_drops_speaker_tags_cues_and_breaks():
    script = '[S1] Hi there. (laughs) [S2] Well, <break time="0.5s"/> hello!'
    assert spoken_text(script) == "Hi there. Well, hello!"


def test_normalisation_ignores_case_punctuation_and_typographic_apostrophes():
    assert normalize_words("It\u2019s a well-known FACT, isn't it?") == ["it's", "a", "well", "known", "fact", "isn't", "it"]
    assert normalize_words("  ...  ") == []


@pytest.mark.parametrize("a,b,distance", [
    ("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("flaw", "lawn", 2), ("same", "same", 0),
    (["the", "cat", "sat"], ["the", "sat"], 1),
])
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def test_word_error_rate_counts_substitutions_insertions_and_deletions():
    ref = spoken_text("[S1] The quick brown fox jumps over the lazy dog.")
    assert word_error_rate(ref, "the quick brown fox jumps over the lazy dog") == 0.0
    assert word_error_rate(ref, "The quick round fox jumped over the lazy dog!") == pytest.approx(2 / 9)
    assert word_error_rate(ref, "quick brown fox jumps over the lazy dog dog") == pytest.approx(2 / 9)
    assert word_error_rate(ref, "") == 1.0
    # Words a recogniser adds beyond the reference count too: a looping transcript exceeds 1.
    assert word_error_rate("Hello.", "hello hello hello") == 2.0


def test_char_error_rate_is_finer_than_word_error_rate():
    assert char_error_rate("jumps", "jumped") == pytest.approx(2 / 5)
    assert word_error_rate("jumps", "jumped") == 1.0
    assert char_error_rate("", "") == 0.0 and char_error_rate("", "noise") == 1.0
