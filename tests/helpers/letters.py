"""A tokenizer with one token per letter, and the three-word utterance whose teacher-forced grid
tests/unit/test_teacher.py checks cell by cell (worked out by hand below)."""

from dia2.model.config import parse_config
from dia2.text.words import SpokenWord


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


def letter_data(second_stream_ahead=0, delays=(1, 2)):
    """The DataConfig of a two-codebook model whose text vocab holds the letter tokens."""
    raw = {
        "data": {"channels": 4, "text_vocab_size": 128, "audio_vocab_size": 2050, "action_vocab_size": 2,
                 "text_pad_token_id": 3, "text_new_word_token_id": 2, "action_pad_token_id": 0,
                 "action_new_word_token_id": 1, "delay_pattern": list(delays), "second_stream_ahead": second_stream_ahead},
        "model": {"decoder": {"n_layer": 1, "n_embd": 8, "n_hidden": 8, "gqa_query_heads": 1, "kv_heads": 1, "gqa_head_dim": 8},
                  "depformer": {"n_layer": 1, "n_embd": 8, "n_hidden": 8, "gqa_query_heads": 1, "kv_heads": 1, "gqa_head_dim": 8}},
        "runtime": {},
    }
    return parse_config(raw).data


WORDS = [SpokenWord("ab", 0.24, 0.40), SpokenWord("c", 0.56, 0.64), SpokenWord("de", 0.80, 1.04)]
# By hand, r = 12.5 frames/s, max_padding 6 (the alignment rule of `dia2.text.align`):
#   "[S1] ab" -> 3 tokens: heard at frame round(3.0) = 3. Inference pops its first entry at step 2
#             (frame 0), so the 3 silent frames before the word are a leading break entry popped
#             at step 2; the word keeps its frame: step 3-1+3 = 5, end 6; the next word may come
#             at frames 7..10 without a break: "c" at round(7.0) = 7 needs none.
#   "c"       -> 1 token:  frame 7, step 9, end 8; "de" at round(10.0) = 10 lies in 9..14.
#   "de"      -> 2 tokens: frame 10, step 12, end 12; end of speech at min(max(13, round(13.0)),
#             10+7) = 13, step 15.
# The grid ends where decoding stops: last_column(15, max delay 2, max_padding 6) = 23, so L = 24,
# and the audio must reach frame 23 - min delay 1 = 22: N >= 15 + tail_frames (8 here) = 23.
STEPS = (2, 5, 9, 12, 15)  # the leading break's, the three words', the end of speech's
N = 23
L = 24
