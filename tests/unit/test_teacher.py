"""The teacher-forced grid, checked cell by cell on a hand-built three-word utterance."""

import pytest
import torch

from dia2.data.teacher import GridError, build_example, collate, drop_text
from dia2.model.config import parse_config
from dia2.text.script import TextTokenIds
from dia2.text.utterance import SpokenWord


class LetterTokenizer:
    """Each letter is one token (a=10, b=11, ...); "[S1]"/"[S2]" are 100/101."""

    def get_vocab(self):
        return {"[S1]": 100, "[S2]": 101}

    def convert_tokens_to_ids(self, token):
        return self.get_vocab().get(token)

    def encode(self, text, add_special_tokens=False):
        out = []
        for part in text.split():
            out += [self.get_vocab()[part]] if part in self.get_vocab() else [10 + ord(c) - ord("a") for c in part]
        return out


def _data(second_stream_ahead=0):
    raw = {
        "data": {"channels": 4, "text_vocab_size": 128, "audio_vocab_size": 2050, "action_vocab_size": 2,
                 "text_pad_token_id": 3, "text_new_word_token_id": 2, "action_pad_token_id": 0,
                 "action_new_word_token_id": 1, "delay_pattern": [1, 2], "second_stream_ahead": second_stream_ahead},
        "model": {"decoder": {"n_layer": 1, "n_embd": 8, "n_hidden": 8, "gqa_query_heads": 1, "kv_heads": 1, "gqa_head_dim": 8},
                  "depformer": {"n_layer": 1, "n_embd": 8, "n_hidden": 8, "gqa_query_heads": 1, "kv_heads": 1, "gqa_head_dim": 8}},
        "runtime": {},
    }
    return parse_config(raw).data


WORDS = [SpokenWord("ab", 0.24, 0.40), SpokenWord("c", 0.56, 0.64), SpokenWord("de", 0.80, 1.04)]
# By hand, r = 12.5 frames/s (the alignment rule of spec section 6):
#   "[S1] ab" -> 3 tokens: start max(1, round(3.0)) = 3, end 6, step 3-1+3 = 5, next max(7, round(7.0)) = 7
#   "c"       -> 1 token:  start max(7, 7) = 7, end 8, step 9, next max(9, round(10.0)) = 10
#   "de"      -> 2 tokens: start max(9, 10) = 10, end 12, step 12, next max(13, round(13.0)) = 13
#   end of speech: 13 - 1 + 3 = 15, so N >= 15 + 8 = 23 frames.
STEPS = (5, 9, 12, 15)
N = 23


def test_hand_built_three_word_grid():
    data = _data()
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    codes = torch.arange(2 * N).view(2, N) % 2048
    ex = build_example(codes, WORDS, tok, ids, data)
    L = N + 2
    assert ex.tokens.shape == (4, L) and ex.new_word_steps == STEPS
    # Text (k = 0: second = main): bos, pads until step 5's new_word lands in column 6, then
    # each word's tokens one per column, new_word at columns 10 and 13, nothing after the end.
    main = [1, 3, 3, 3, 3, 3, 2, 100, 10, 11, 2, 12, 3, 2, 13, 14] + [3] * 9
    assert ex.tokens[0].tolist() == main
    assert ex.tokens[1].tolist() == [3] + main[1:]
    # Actions: new_word exactly at the aligned steps and the end-of-speech step.
    assert [t for t, a in enumerate(ex.action_target.tolist()) if a == 1] == list(STEPS)
    # Audio: codebook 0 delayed by 1 (bos in column 0, pad in the last), codebook 1 by 2.
    assert ex.tokens[2, 0] == 2048 and ex.tokens[2, 1:24].tolist() == codes[0].tolist() and ex.tokens[2, 24] == 2049
    assert ex.tokens[3, :2].tolist() == [2048, 2048] and ex.tokens[3, 2:].tolist() == codes[1].tolist()
    # Targets are column t+1, masked on bos/pad cells.
    assert torch.equal(ex.audio_target, ex.tokens[2:, 1:])
    assert ex.audio_mask[0].tolist() == [True] * 23 + [False]
    assert ex.audio_mask[1].tolist() == [False] + [True] * 23


def test_look_ahead_stream_with_k2():
    data = _data(second_stream_ahead=2)
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    ex = build_example(torch.zeros(2, N, dtype=torch.long), WORDS, tok, ids, data)
    main, second = ex.tokens[0].tolist(), ex.tokens[1].tolist()
    # k > 0: the new_word marker goes to the second stream and the word starts at once on main.
    assert second[6] == 2 and main[6:9] == [100, 10, 11]
    # The second stream then plays the word two entries ahead ("de") while "ab" is spoken.
    assert second[7:9] == [13, 14]


def test_too_little_audio_after_the_end_of_speech():
    data = _data()
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    with pytest.raises(GridError, match="keep at least 8 frames"):
        build_example(torch.zeros(2, N - 1, dtype=torch.long), WORDS, tok, ids, data)
    with pytest.raises(GridError, match="codebooks"):
        build_example(torch.zeros(3, N, dtype=torch.long), WORDS, tok, ids, data)
    with pytest.raises(GridError, match="no words"):
        build_example(torch.zeros(2, N, dtype=torch.long), [SpokenWord("[]", 0.1, 0.2)], tok, ids, data)


def test_collate_pads_and_masks_and_drops_text():
    data = _data()
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    long = build_example(torch.ones(2, N + 5, dtype=torch.long), WORDS, tok, ids, data)
    short = build_example(torch.ones(2, N, dtype=torch.long), WORDS, tok, ids, data)
    batch = collate([long, short], data, ids, drop_mask=[False, True])
    assert batch.tokens.shape == (2, 4, N + 7)
    assert batch.action_mask[1].tolist() == [True] * (N + 1) + [False] * 5
    assert not batch.audio_mask[1, :, N + 1 :].any()
    assert batch.frames == (N + 6) + (N + 1)
    # The dropped example reads exactly the unconditional branch's text: (zero, pad) everywhere.
    assert set(batch.tokens[1, 0, : N + 2].tolist()) == {7} and set(batch.tokens[1, 1, : N + 2].tolist()) == {3}
    assert torch.equal(batch.tokens[1, 2:, : N + 2], short.tokens[2:])
    assert torch.equal(drop_text(long.tokens, ids)[2:], long.tokens[2:])
