"""The teacher-forced grid, checked cell by cell on a hand-built three-word utterance (worked out
by hand in tests/helpers/letters.py)."""

import pytest
import torch

from dia2.data.grid import drop_text
from dia2.data.teacher import GridError, build_example, collate, tail_frames
from dia2.text.script import TextTokenIds
from dia2.text.words import SpokenWord
from tests.helpers.letters import STEPS, WORDS, L, LetterTokenizer, N, letter_data


def test_hand_built_three_word_grid():
    data = letter_data()
    assert tail_frames(data) == 8 and tail_frames(letter_data(delays=(16, 18))) == 9  # 18 + 6 - 16 + 1
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    codes = torch.arange(2 * N).view(2, N) % 2048
    ex = build_example(codes, WORDS, tok, ids, data)
    assert ex.tokens.shape == (4, L) and ex.new_word_steps == STEPS
    # Text (k = 0: second = main): bos, pads (the break is silent: no marker) until step 5's
    # new_word lands in column 6, then each word's tokens one per column, new_word at columns 10
    # and 13, nothing after the end.
    main = [1, 3, 3, 3, 3, 3, 2, 100, 10, 11, 2, 12, 3, 2, 13, 14] + [3] * 8
    assert ex.tokens[0].tolist() == main
    assert ex.tokens[1].tolist() == [3] + main[1:]
    # Actions: new_word exactly at the break, the aligned words and the end-of-speech step.
    assert [t for t, a in enumerate(ex.action_target.tolist()) if a == 1] == list(STEPS)
    # Audio: codebook 0 delayed by 1 (bos in column 0), codebook 1 by 2. The grid stops at the
    # stop column, so no cell is audio pad: the old grid (N + max delay columns) ended with a
    # pad codebook 0 under a real codebook 1, training depformer stage 0 on an input inference
    # never feeds it.
    assert ex.tokens[2, 0] == 2048 and ex.tokens[2, 1:].tolist() == codes[0].tolist()
    assert ex.tokens[3, :2].tolist() == [2048, 2048] and ex.tokens[3, 2:].tolist() == codes[1, : L - 2].tolist()
    # Targets are column t+1, masked on bos cells.
    assert torch.equal(ex.audio_target, ex.tokens[2:, 1:])
    assert ex.audio_mask[0].tolist() == [True] * 23
    assert ex.audio_mask[1].tolist() == [False] + [True] * 22
    # Audio past the stop column is not used: a longer recording gives the same grid.
    longer = torch.cat([codes, torch.full((2, 5), 7)], dim=1)
    assert torch.equal(build_example(longer, WORDS, tok, ids, data).tokens, ex.tokens)


def test_depformer_targets_are_masked_where_their_stage_input_is_not_audio():
    # Codebook 0 delayed by 2, codebook 1 by 1: at column 1 codebook 1 holds real audio (frame 0)
    # but codebook 0, which depformer stage 0 reads to predict it, is still bos.
    data = letter_data(delays=(2, 1))
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    ex = build_example(torch.arange(2 * N).view(2, N) % 2048, WORDS, tok, ids, data)
    assert ex.audio_target[1, 0] not in (2048, 2049)
    assert ex.audio_mask[1].tolist() == [False] + [True] * (L - 2)
    assert ex.audio_mask[0].tolist() == [False] + [True] * (L - 2)


def test_look_ahead_stream_with_k2():
    data = letter_data(second_stream_ahead=2)
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    ex = build_example(torch.zeros(2, N, dtype=torch.long), WORDS, tok, ids, data)
    main, second = ex.tokens[0].tolist(), ex.tokens[1].tolist()
    # k > 0: the new_word marker goes to the second stream and the word starts at once on main.
    assert second[6] == 2 and main[6:9] == [100, 10, 11]
    # The second stream then plays the word two entries ahead ("de") while "ab" is spoken.
    assert second[7:9] == [13, 14]


def test_too_little_audio_after_the_end_of_speech():
    data = letter_data()
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    with pytest.raises(GridError, match="keep at least 8 frames"):
        build_example(torch.zeros(2, N - 1, dtype=torch.long), WORDS, tok, ids, data)
    with pytest.raises(GridError, match="codebooks"):
        build_example(torch.zeros(3, N, dtype=torch.long), WORDS, tok, ids, data)
    with pytest.raises(GridError, match="no words"):
        build_example(torch.zeros(2, N, dtype=torch.long), [SpokenWord("[]", 0.1, 0.2)], tok, ids, data)


def test_collate_pads_and_masks_and_drops_text():
    data = letter_data()
    tok = LetterTokenizer()
    ids = TextTokenIds.from_tokenizer(data, tok)
    long = build_example(torch.ones(2, N + 5, dtype=torch.long), WORDS, tok, ids, data)
    # Two words: "c" ends speech at frame 9 (step 11), so the grid has 11 + 2 + 6 + 1 = 20 columns.
    short = build_example(torch.ones(2, 19, dtype=torch.long), WORDS[:2], tok, ids, data)
    assert (long.columns, short.columns) == (L, 20)
    batch = collate([long, short], data, ids, drop_mask=[False, True])
    assert batch.tokens.shape == (2, 4, L)
    assert batch.action_mask[1].tolist() == [True] * 19 + [False] * 4
    assert not batch.audio_mask[1, :, 19:].any()
    assert batch.frames == (L - 1) + 19
    # The dropped example reads exactly the unconditional branch's text: (zero, pad) everywhere.
    assert set(batch.tokens[1, 0, :20].tolist()) == {7} and set(batch.tokens[1, 1, :20].tolist()) == {3}
    assert torch.equal(batch.tokens[1, 2:, :20], short.tokens[2:])
    assert torch.equal(drop_text(long.tokens, ids.zero, ids.pad)[2:], long.tokens[2:])
