"""The delayed token grid: delay / undelay / bos masking (spec section 4)."""

import pytest
import torch

from dia2.data.grid import (
    cell_frames,
    delay_codes,
    drop_text,
    mask_audio_bos,
    undelay_codes,
)

P = 99  # pad
BOS = 50

CODES = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
DELAYS = [0, 1, 3]
# delayed[c, delay[c] + f] = codes[c, f]; length T + max(delay) = 4 + 3.
DELAYED = torch.tensor(
    [
        [1, 2, 3, 4, P, P, P],
        [P, 5, 6, 7, 8, P, P],
        [P, P, P, 9, 10, 11, 12],
    ]
)


def test_delay_hand_example():
    assert torch.equal(delay_codes(CODES, DELAYS, P), DELAYED)


def test_undelay_hand_example():
    assert torch.equal(undelay_codes(DELAYED, DELAYS), CODES)


def test_batched_matches_per_item():
    batch = torch.stack([CODES, CODES + 100])
    delayed = delay_codes(batch, DELAYS, P)
    assert delayed.shape == (2, 3, 7)
    assert torch.equal(delayed[0], DELAYED)
    assert torch.equal(delayed[1], delay_codes(CODES + 100, DELAYS, P))
    assert torch.equal(undelay_codes(delayed, DELAYS), batch)


@pytest.mark.parametrize(
    "delays, frames",
    [
        ([16] + [18] * 31, 5),  # the published pattern, shorter than the delay
        ([16] + [18] * 31, 40),
        ([0, 0], 3),  # no delay at all
        ([2, 0, 5], 1),
    ],
)
def test_round_trip(delays, frames):
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (2, len(delays), frames), generator=gen)
    delayed = delay_codes(codes, delays, 2049)
    assert delayed.shape[-1] == frames + max(delays)
    # Every cell outside the codebook's window is pad.
    for c, d in enumerate(delays):
        assert (delayed[:, c, :d] == 2049).all()
        assert (delayed[:, c, d + frames :] == 2049).all()
    assert torch.equal(undelay_codes(delayed, delays), codes)


def test_undelay_shorter_than_max_delay_is_empty():
    assert undelay_codes(DELAYED[:, :2], DELAYS).shape == (3, 0)


def test_mask_audio_bos_on_full_grid():
    text = torch.tensor([[1, 3, 2, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3, 3]])
    grid = torch.cat([text, DELAYED])
    masked = mask_audio_bos(grid, DELAYS, BOS)
    expected = grid.clone()
    expected[3, 0] = BOS  # codebook 1: column 0 < delay 1
    expected[4, :3] = BOS  # codebook 2: columns 0..2 < delay 3
    assert torch.equal(masked, expected)
    assert torch.equal(grid, torch.cat([text, DELAYED])), "input must not be modified"


def test_mask_audio_bos_audio_only_batched_and_offset():
    batch = torch.stack([DELAYED, DELAYED])
    masked = mask_audio_bos(batch, DELAYS, BOS)
    assert (masked[:, 2, :3] == BOS).all() and (masked[:, 2, 3:] == DELAYED[2, 3:]).all()
    assert (masked[:, 0] == DELAYED[0]).all()
    # A slice starting at column 2: only codebook 2's first column (absolute column 2) is before its delay.
    sliced = mask_audio_bos(DELAYED[:, 2:4], DELAYS, BOS, start=2)
    assert sliced.tolist() == [[3, 4], [6, 7], [BOS, 9]]


def test_cell_frames_name_the_frame_each_delayed_cell_holds():
    # Column t of codebook c holds frame t - delay[c]: where DELAYED holds codes, exactly those.
    frames = cell_frames(DELAYS, 7)
    assert frames[2].tolist() == [-3, -2, -1, 0, 1, 2, 3]
    holds_codes = (frames >= 0) & (frames < CODES.shape[1])
    assert torch.equal(holds_codes, DELAYED != P)
    assert torch.equal(cell_frames(DELAYS, 2, start=2), frames[:, 2:4])


def test_drop_text_is_the_unconditional_input():
    grid = torch.cat([torch.tensor([[1, 5, 6, 3, 3, 3, 3], [6, 3, 3, 3, 3, 3, 3]]), DELAYED])
    dropped = drop_text(grid, zero=7, pad=3)
    assert dropped[0].tolist() == [7] * 7 and dropped[1].tolist() == [3] * 7
    assert torch.equal(dropped[2:], DELAYED) and grid[0, 1] == 5, "audio kept, input not modified"
    # The decoder's text buffer alone ([branches, 2, L]) goes through the same definition.
    assert torch.equal(drop_text(grid[None, :2], 7, 3)[0], dropped[:2])


@pytest.mark.parametrize(
    "call",
    [
        lambda: delay_codes(CODES, [0, 1], P),  # one delay short
        lambda: delay_codes(CODES, [0, -1, 2], P),  # negative delay
        lambda: delay_codes(CODES[0], [0], P),  # 1-D input
        lambda: undelay_codes(DELAYED, [0, 1]),
        lambda: mask_audio_bos(torch.zeros(4, 5, dtype=torch.long), DELAYS, BOS),  # 4 channels, 3 delays
        lambda: drop_text(torch.zeros(1, 5, dtype=torch.long), 7, 3),  # no second text stream
    ],
)
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()
