"""Script parsing and text control ids (spec section 5)."""

import random
import re

import pytest

from dia2.model.config import DataConfig
from dia2.text.script import (
    Entry,
    ScriptError,
    ScriptParser,
    TextTokenIds,
    parse_script,
    parse_stream,
)

S1, S2 = 49152, 49153


class FakeTokenizer:
    """Deterministic stand-in for the Dia2 BPE tokenizer.

    "[S1]" and "[S2]" are single added tokens. Any other whitespace-separated piece of n characters
    becomes ceil(n / 2) ids 100*n + i in its bare form (first piece of the text) or 100*n + 50 + i
    in its leading-space form (any later piece), like GPT-2's "Ġword". So "hi" -> [200],
    " hi" -> [250], "you" -> [300, 301], "there" -> [500, 501, 502], " there" -> [550, 551, 552].
    """

    bos_token_id = 0  # the published tokenizer reports 0, which `Dia2` treats as "no bos"
    unk_token_id = 0

    def __init__(self, speaker_tags: bool = True) -> None:
        self.special = {"[S1]": S1, "[S2]": S2} if speaker_tags else {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False, "the parser must not add bos/eos"
        ids: list[int] = []
        for position, piece in enumerate(text.split()):
            if piece in self.special:
                ids.append(self.special[piece])
                continue
            base = 100 * len(piece) + (50 if position > 0 else 0)
            ids.extend(base + i for i in range((len(piece) + 1) // 2))
        return ids

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.special.get(token, self.unk_token_id)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.special)


class NoVocabTokenizer(FakeTokenizer):
    """A tokenizer-like object without get_vocab: absence shows only as the unk id."""

    get_vocab = None


TOK = FakeTokenizer()
IDS = TextTokenIds(bos=1, new_word=2, pad=3, zero=7, spk1=S1, spk2=S2)
DATA = DataConfig(
    channels=34, text_vocab_size=49280, audio_vocab_size=2050, action_vocab_size=2,
    text_pad_token_id=3, text_new_word_token_id=2, action_pad_token_id=0, action_new_word_token_id=1,
)


def E(tokens, text, padding):
    return Entry(tuple(tokens), text, padding)


PARSE_CASES = [
    # A tagged word is encoded as "[S1] hi": tag id, then the leading-space form. padding = len(tokens).
    ("[S1] hi there", [E([S1, 250], "hi", 2), E([500, 501, 502], "there", 3)]),
    # Untagged first word gets [S1] prepended; later tags switch speaker for the next word only.
    (
        "hi [S2] there [S1] you",
        [E([S1, 200], "hi", 2), E([S2, 550, 551, 552], "there", 4), E([S1, 350, 351], "you", 3)],
    ),
    # Published quirk: a script opening with [S2] gets [S1] [S2] on its first word.
    ("[S2] hi", [E([S1, S2, 250], "hi", 3)]),
    # Two tags in a row: the last one wins.
    ("hi [S1] [S2] you", [E([S1, 200], "hi", 2), E([S2, 350, 351], "you", 3)]),
    # Breaks: padding = round(seconds * 12.5); 1.5 s -> round(18.75) = 19.
    ('hi <break time="1.5s"/> you', [E([S1, 200], "hi", 2), E([], "", 19), E([300, 301], "you", 2)]),
    # A break splits words without whitespace; 0.2 s -> round(2.5) = 2 (half to even).
    ('hi<break time="0.2s"/>you', [E([S1, 200], "hi", 2), E([], "", 2), E([300, 301], "you", 2)]),
    # No slash, integer seconds: 1 s -> round(12.5) = 12.
    ('hi <break time="1s"> you', [E([S1, 200], "hi", 2), E([], "", 12), E([300, 301], "you", 2)]),
    # A break that rounds to 0 frames is dropped, as in the published runtime: 0.02 s -> round(0.25) = 0.
    ('hi <break time="0.02s" /> you', [E([S1, 200], "hi", 2), E([300, 301], "you", 2)]),
    # Typographic apostrophe -> "'", ":" -> space.
    ("[S1] it\u2019s 12:30", [E([S1, 450, 451], "it's", 3), E([200], "12", 1), E([200], "30", 1)]),
    # A pending speaker survives a break; the [S1] quirk applies to the first word, not the break.
    ('[S2] <break time="1s"/> hi', [E([], "", 12), E([S1, S2, 250], "hi", 3)]),
    # Any whitespace separates; non-verbal tags in parentheses are ordinary words.
    ("  [S1]\n hi\tthere  (laughs) ", [E([S1, 250], "hi", 2), E([500, 501, 502], "there", 3), E(range(800, 804), "(laughs)", 4)]),
]


@pytest.mark.parametrize("script, expected", PARSE_CASES)
def test_parse_script(script, expected):
    assert parse_script(script, TOK, IDS) == expected


@pytest.mark.parametrize(
    "script, expected",
    [
        ("[S2] hi", [E([S2, 250], "hi", 2)]),
        ("hi there", [E([200], "hi", 1), E([500, 501, 502], "there", 3)]),
        ("[S1] hi", [E([S1, 250], "hi", 2)]),
    ],
)
def test_first_word_quirk_can_be_turned_off(script, expected):
    assert parse_script(script, TOK, IDS, prepend_s1_to_first_word=False) == expected


@pytest.mark.parametrize(
    "script, message",
    [
        ("", "no words"),
        ("  \n\t", "no words"),
        ('<break time="1s"/>', "no words"),
        ("[S1]", "ends with the speaker tag"),
        ("hi [S2]", r"ends with the speaker tag \[S2\]"),
        ("[S3] hi", r"unknown tag '\[S3\]'"),
        ("hi [laughs]", r"unknown tag '\[laughs\]'"),
        ("[S1]hi", "glued"),
        ("hi <foo> there", "unknown tag '<foo>'"),
        ('hi <break time="abc"/>', "malformed break tag"),
        ("hi <break time=1s/>", "malformed break tag"),
        ('hi <break time="1.5"/>', "malformed break tag"),
        ('hi <break time="-1s"/>', "negative break duration"),
        ('hi <break time="1000s"/>', "longer than"),
        ("hi < there", "stray '<'"),
        ("a > b", "stray '>'"),
        ('hi <break time="1s"', "stray '<'"),
    ],
)
def test_bad_scripts_raise(script, message):
    with pytest.raises(ScriptError, match=message):
        parse_script(script, TOK, IDS)


def test_script_must_be_a_string():
    with pytest.raises(ScriptError, match="one string"):
        parse_script(["[S1] hi"], TOK, IDS)


def test_break_limit_is_configurable():
    assert parse_script('hi <break time="2s"/>', TOK, IDS, max_break_seconds=5)[-1] == E([], "", 25)
    with pytest.raises(ScriptError, match="longer than"):
        parse_script('hi <break time="6s"/>', TOK, IDS, max_break_seconds=5)


def test_script_error_is_a_value_error():
    assert issubclass(ScriptError, ValueError)


# --- incremental parsing ------------------------------------------------------------------------

STREAM_SCRIPTS = [case[0] for case in PARSE_CASES] + [
    '[S1] Well:  it\u2019s <break time="0.5s" /> [S2] fine<break time="1s"/>(laughs) [S1] ok',
]


@pytest.mark.parametrize("script", STREAM_SCRIPTS)
def test_stream_char_by_char_equals_whole(script):
    assert list(parse_stream(iter(script), TOK, IDS)) == parse_script(script, TOK, IDS)


@pytest.mark.parametrize("seed", range(20))
def test_stream_random_chunks_equal_whole(seed):
    rng = random.Random(seed)
    script = STREAM_SCRIPTS[-1]
    cuts = sorted(rng.sample(range(1, len(script)), rng.randint(1, 12)))
    chunks = [script[a:b] for a, b in zip([0, *cuts], [*cuts, len(script)])]
    assert "".join(chunks) == script
    assert list(parse_stream(chunks, TOK, IDS)) == parse_script(script, TOK, IDS)


def test_entries_appear_only_when_complete():
    parser = ScriptParser(TOK, IDS)
    assert parser.feed("[S1] hel") == []
    assert parser.feed("lo") == []  # "hello" might still grow
    assert parser.feed(" ") == [E([S1, 550, 551, 552], "hello", 4)]
    assert parser.feed('<break time="1') == []  # the tag is not closed yet
    assert parser.feed('s"/>') == [E([], "", 12)]
    assert parser.feed("you") == []
    assert parser.finish() == [E([300, 301], "you", 2)]
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_parse_stream_is_lazy():
    consumed = []

    def chunks():
        for chunk in ["[S1] hi ", "there ", "you"]:
            consumed.append(chunk)
            yield chunk

    stream = parse_stream(chunks(), TOK, IDS)
    assert next(stream) == E([S1, 250], "hi", 2)
    assert consumed == ["[S1] hi "]


def test_stream_errors_at_finish_for_empty_text():
    with pytest.raises(ScriptError, match="no words"):
        list(parse_stream(["  ", "\n"], TOK, IDS))


# --- control ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokenizer, expected",
    [
        (FakeTokenizer(), TextTokenIds(bos=1, new_word=2, pad=3, zero=7, spk1=S1, spk2=S2)),
        (NoVocabTokenizer(), TextTokenIds(bos=1, new_word=2, pad=3, zero=7, spk1=S1, spk2=S2)),
        # Without the tags, speaker ids fall back to new_word.
        (FakeTokenizer(speaker_tags=False), TextTokenIds(bos=1, new_word=2, pad=3, zero=7, spk1=2, spk2=2)),
        (NoVocabTokenizer(speaker_tags=False), TextTokenIds(bos=1, new_word=2, pad=3, zero=7, spk1=2, spk2=2)),
    ],
)
def test_text_token_ids_from_tokenizer(tokenizer, expected):
    assert TextTokenIds.from_tokenizer(DATA, tokenizer) == expected


def test_bos_from_tokenizer_when_truthy():
    tokenizer = FakeTokenizer()
    tokenizer.bos_token_id = 5
    assert TextTokenIds.from_tokenizer(DATA, tokenizer).bos == 5
    tokenizer.bos_token_id = None
    assert TextTokenIds.from_tokenizer(DATA, tokenizer).bos == 1


def test_entry_is_frozen_and_normalises_tokens():
    entry = Entry([1, 2], "x", 2)
    assert entry.tokens == (1, 2)
    with pytest.raises(AttributeError):
        entry.padding = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        Entry((), "", -1)


# --- messages about glued speaker tags (issue 15) ----------------------------------------------


@pytest.mark.parametrize(
    ("script", "fix"),
    [("[S1] Hello there.[S2] Hi.", "put a space before [S2]"), ("[S1]Hello there.", "put a space after [S1]"),
     ("[S1] Hi.[S2]there", "put a space before and after [S2]")],
)
def test_a_glued_speaker_tag_says_on_which_side_the_space_is_missing(tiny_tts, script, fix):
    from dia2.text.script import ScriptError

    with pytest.raises(ScriptError, match=re.escape(fix)):
        tiny_tts.parse(script)


def test_the_streamed_joining_hint_is_given_only_for_glued_text(tiny_tts):
    from dia2.text.script import ScriptError, parse_stream

    def first_error(pieces: list[str]) -> str:
        with pytest.raises(ScriptError) as error:
            list(parse_stream(iter(pieces), tiny_tts.tokenizer, tiny_tts.ids))
        return str(error.value)

    assert "joined as given" in first_error(["[S1] Hi there.", "[S2] Hello."])
    unknown_tag = first_error(["[S1] Hi there. ", "[S3] Hello."])
    assert "[S3]" in unknown_tag and "joined as given" not in unknown_tag
