"""Cutting long scripts into parts (dia2.text.parts): boundaries, budgets, and the parse property."""

import logging
import random

import pytest

from dia2.model.config import parse_config
from dia2.text.parts import split_script
from dia2.text.script import Entry, ScriptError, TextTokenIds, encode_word, parse_script
from dia2.text.tokenizer import load_tokenizer
from dia2.tiny import build_tiny_tokenizer
from tests.conftest import tiny_raw_config


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The tiny BPE tokenizer and its control ids."""
    tokenizer = load_tokenizer(build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer")))
    return tokenizer, TextTokenIds.from_tokenizer(parse_config(tiny_raw_config()).data, tokenizer)


def _is_word(entry: Entry) -> bool:
    return entry.text != ""


def _speakers(entries: list[Entry], ids: TextTokenIds) -> list[int]:
    """Speaker id of each word, read from the tag tokens the parser put on the words."""
    speaker, out = ids.spk1, []
    for entry in filter(_is_word, entries):
        # The first word of a script carries [S1] (published quirk), then its own tag if any.
        tags = [t for t in entry.tokens[:2] if t in (ids.spk1, ids.spk2)]
        speaker = tags[-1] if tags else speaker
        out.append(speaker)
    return out


def check_parts(script: str, parts: list[str], max_words: int, text) -> None:
    """Each part parses alone, fits the budget, and the parts together say what the script says."""
    tokenizer, ids = text
    whole = parse_script(script, tokenizer, ids)
    per_part = [parse_script(part, tokenizer, ids) for part in parts]
    assert all(sum(map(_is_word, entries)) <= max_words for entries in per_part), parts
    joined = [entry for entries in per_part for entry in entries]
    assert [e.text for e in joined] == [e.text for e in whole]
    assert [e.padding for e in joined if not _is_word(e)] == [e.padding for e in whole if not _is_word(e)]
    assert _speakers(joined, ids) == _speakers(whole, ids)
    # Index in `joined` of each later part's first word (a part may open with a break).
    starts = [sum(map(len, per_part[:k])) for k in range(1, len(parts))]
    firsts = {start + next(i for i, e in enumerate(per_part[k]) if _is_word(e)) for k, start in enumerate(starts, 1)}
    speakers = _speakers(whole, ids)
    tagged_script = "[S1]" in script or "[S2]" in script
    word_index = -1
    for i, (got, want) in enumerate(zip(joined, whole)):
        word_index += _is_word(want)
        if i not in firsts:
            assert got == want, (i, parts)
            continue
        # A later part's first word carries the tag of the speaker it already had (plus the [S1]
        # every script's first word gets); in the whole script it was bare or tagged the same.
        # A part of an untagged script stays untagged: its first word gets only the [S1].
        tag = ("[S1]" if speakers[word_index] == ids.spk1 else "[S2]") if tagged_script else None
        tagged = encode_word(tokenizer, want.text, tag)
        assert got.tokens == (ids.spk1,) * (tagged[0] != ids.spk1) + tagged, (i, parts)
        assert want.tokens in (tagged, encode_word(tokenizer, want.text)), (i, parts)


def words(part: str) -> int:
    return sum(not c.startswith("[") and not c.startswith("<") for c in part.split())


# --- boundaries ---------------------------------------------------------------------------------


def test_dialogue_is_cut_at_turns(text):
    script = "[S1] Hi. How are you? [S2] Fine thanks. And you? [S1] Great."
    assert split_script(script, 4) == ["[S1] Hi. How are you?", "[S2] Fine thanks. And you?", "[S1] Great."]
    # Greedy: the last turn joins the second part when it fits.
    assert split_script(script, 5) == ["[S1] Hi. How are you?", "[S2] Fine thanks. And you? [S1] Great."]
    check_parts(script, split_script(script, 4), 4, text)


def test_monologue_is_cut_at_sentences(text):
    script = 'This is the first sentence. "Here is a second one!" Is it (the third?) Yes\u2026 And a fifth.'
    parts = split_script(script, 10)
    assert parts == ['This is the first sentence. "Here is a second one!"', "Is it (the third?) Yes\u2026 And a fifth."]
    assert split_script(script, 7) == [
        "This is the first sentence.",
        '"Here is a second one!"',
        "Is it (the third?) Yes\u2026",
        "And a fifth.",
    ]
    check_parts(script, parts, 10, text)


def test_turn_is_cut_at_a_sentence_and_keeps_its_speaker(text):
    script = "[S1] One two. Three four. [S2] Five six. Seven eight."
    parts = split_script(script, 3)
    assert parts == ["[S1] One two.", "[S1] Three four.", "[S2] Five six.", "[S2] Seven eight."]
    check_parts(script, parts, 3, text)


def test_over_long_sentence_is_cut_after_a_comma_and_warns(text, caplog):
    script = "[S1] When the rain stopped, we walked down to the river and sat there for hours. Then we left."
    with caplog.at_level(logging.WARNING, logger="dia2.text.parts"):
        parts = split_script(script, 8)
    assert parts == [
        "[S1] When the rain stopped,",
        "[S1] we walked down to the river and sat",  # no comma within 8 words: cut at 8
        "[S1] there for hours. Then we left.",
    ]
    assert len(caplog.records) == 1  # once per sentence, however many cuts it takes
    assert "When the rain stopped, we walked" in caplog.text and "8-word" in caplog.text
    check_parts(script, parts, 8, text)


def test_clause_cut_takes_the_last_clause_mark_in_budget(text, caplog):
    script = 'He said "wait," then: we go; and then we all went home. Done.'
    with caplog.at_level(logging.WARNING, logger="dia2.text.parts"):
        parts = split_script(script, 6)
    assert parts == ['He said "wait," then: we go;', "and then we all went home.", "Done."]
    assert "He said" in caplog.text
    check_parts(script, parts, 6, text)


def test_no_warning_when_sentences_fit(caplog):
    with caplog.at_level(logging.WARNING, logger="dia2.text.parts"):
        split_script("One two three. Four five six. Seven.", 3)
    assert caplog.records == []


def test_breaks_stay_with_the_word_they_follow(text):
    script = 'Hello there. <break time="1s"/> How are you?<break time="0.5s"/> [S2] Fine<break time="0.2s"/>now.'
    parts = split_script(script, 3)
    assert parts == [
        'Hello there. <break time="1s"/>',
        '[S1] How are you?<break time="0.5s"/>',
        '[S2] Fine<break time="0.2s"/>now.',
    ]
    check_parts(script, parts, 3, text)


def test_break_limit_is_left_to_the_parser():
    # A caller may parse with a longer max_break_seconds; cutting must not reject such a break.
    assert split_script('One. <break time="90s"/> Two.', 1) == ['One. <break time="90s"/>', "Two."]


def test_untagged_script_stays_untagged(text):
    script = "First thing.\n\nSecond   thing here.\tThird."
    parts = split_script(script, 3)
    assert parts == ["First thing.", "Second thing here.", "Third."]
    check_parts(script, parts, 3, text)


def test_words_are_counted_as_the_parser_counts_them(text):
    # ":" separates words and the typographic apostrophe is normalised; a lone ":" is no word.
    script = "[S1] At 12:30 it\u2019s : time. [S2] Note:yes."
    assert split_script(script, 5) == ["[S1] At 12:30 it\u2019s : time.", "[S2] Note:yes."]
    parts = split_script(script, 2)
    assert parts == ["[S1] At 12:", "[S1] 30 it\u2019s :", "[S1] time.", "[S2] Note:yes."]
    check_parts(script, parts, 2, text)
    # A tag written "[S2]:" is the tag [S2]; the part it continues into gets the tag as parsed.
    assert split_script("[S2]:hi there.", 1) == ["[S2]:hi", "[S2] there."]


def test_short_script_comes_back_unchanged():
    script = "  [S1]  Hi\nthere.\t[S2] Yo.  "
    assert split_script(script, 3) == [script]
    assert split_script(script, 100)[0] is script


def test_ninety_five_words_in_ten_word_parts(text):
    rng = random.Random(0)
    lengths = [7, 12, 3, 9, 15, 4, 8, 11, 6, 5, 10, 5]
    assert sum(lengths) == 95
    sentences = [" ".join(f"w{rng.randint(0, 99)}" for _ in range(n)) + rng.choice(".!?") for n in lengths]
    script = " ".join(f"[S{1 + i % 2}] {s}" if i % 3 == 0 else s for i, s in enumerate(sentences))
    parts = split_script(script, 10)
    assert len(parts) >= 10
    assert all(words(part) <= 10 for part in parts)
    check_parts(script, parts, 10, text)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_words", [0, -3])
def test_budget_below_one_raises(max_words):
    with pytest.raises(ValueError, match="max_words"):
        split_script("[S1] hi", max_words)


@pytest.mark.parametrize(
    "script",
    ["", "  \n", '<break time="1s"/>', "[S1]", "hi [S2]", 'hi [S2] <break time="1s"/>', "[S3] hi", "[S1]hi",
     "hi <foo>", 'hi <break time="x"/>', 'hi <break time="-1s"/>', ["[S1] hi"]],
)
def test_bad_scripts_raise_as_the_parser_does(script, text):
    with pytest.raises(ScriptError) as parsed:
        parse_script(script, *text)
    with pytest.raises(ScriptError) as split:
        split_script(script, 1)
    assert str(split.value) == str(parsed.value)


@pytest.mark.parametrize("script", ["hi < there", "a > b"])
def test_stray_angle_bracket_raises(script):
    with pytest.raises(ScriptError, match="stray"):
        split_script(script, 1)


# --- the property: parts parse to the script's own entries --------------------------------------

VOCAB = [
    "hello", "there,", "we", "can", "talk", "about", "the", "weather;", "it\u2019s", "12:30", "Note:",
    "fine.", "yes!", "really?", '"end."', "(yes!)", "well\u2026", "(laughs)", "time", "music", "books",
]
BREAKS = ['<break time="0.5s"/>', '<break time="1s" />', '<break time="0.02s"/>']


def random_script(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 40)):
        roll = rng.random()
        if roll < 0.12:
            pieces.append(rng.choice(["[S1]", "[S2]"]))
        elif roll < 0.2:
            pieces.append(rng.choice(BREAKS))
        else:
            pieces.append(rng.choice(VOCAB))
    pieces.append(rng.choice(VOCAB))  # never end on a tag
    script = rng.choice(["", "  "])
    for prev, piece in zip([None, *pieces], pieces):
        glued = piece.startswith("<") or (prev or "").startswith("<")
        script += rng.choice(["", " "] if glued else [" ", "  ", "\n", "\t "]) if prev else ""
        script += piece
    return script


@pytest.mark.parametrize("seed", range(25))
def test_parts_parse_to_the_whole_script(seed, text):
    rng = random.Random(seed)
    script = random_script(rng)
    for max_words in (1, 2, 3, 5, 8, 13):
        parts = split_script(script, max_words)
        check_parts(script, parts, max_words, text)
        if len(parts) == 1:
            assert parts == [script]
