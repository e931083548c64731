"""dia2.serving.rows: the engine's cache rows stay dense (a leaving request's rows are filled
from the last rows) and each row steps at its own position, as if it ran alone."""

import torch

from dia2.serving.rows import RowTable


def _grids(model, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = model.config.data.channels
    return [torch.randint(0, 1000, (n, C, length + 1), generator=g) for n, length in lengths]


@torch.inference_mode()
def test_rows_moved_into_a_leavers_place_step_as_they_did_alone(tiny_tts):
    model = tiny_tts.model
    owners = [object(), object(), object()]  # rows: 2 (CFG), 1, 2; prefixes of 5, 3 and 7 columns
    lengths = [(2, 5), (1, 3), (2, 7)]
    grids = _grids(model, lengths)
    alone = []
    for grid, (n, length) in zip(grids, lengths):
        state = model.new_state(n, 16)
        model.prefill(grid[..., :length], state)
        alone.append(model.step(grid[..., length:], state))

    table = RowTable(model, size=6, length=16)
    for owner, grid, (n, length) in zip(owners, grids, lengths):
        out = model.prefill(grid[..., :length], table.claim(owner, n))
        table.keep(owner, out.hidden[:, -1], out.cb0_logits[:, -1], length)
        table.set_text(owner, grid[:, :2, length])
    assert [table.rows(o) for o in owners] == [[0, 1], [2], [3, 4]] and len(table) == 5

    table.release(owners[0])  # the last rows (the third owner's) move into rows 0 and 1
    assert [table.rows(o) for o in owners] == [[], [2], [0, 1]] and len(table) == 3
    assert table.owners() == [owners[2], owners[1]]
    for owner, grid, (_, length) in zip(owners[1:], grids[1:], lengths[1:]):
        assert torch.equal(table.text[table.rows(owner)], grid[:, :2, length])  # its buffers moved with it
        table.set_column(owner, grid[..., length:])
    out = model.step(table.columns[:3], table.at_positions(3))
    for owner, want in zip(owners[1:], alone[1:]):
        rows = table.rows(owner)
        torch.testing.assert_close(out.cb0_logits[rows], want.cb0_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.action_logits[rows], want.action_logits, rtol=0, atol=1e-5)


def test_a_row_that_does_not_keep_its_step_stays_where_it_was(tiny_tts):
    model = tiny_tts.model
    table = RowTable(model, size=4, length=16)
    stepping, waiting = object(), object()
    hidden = torch.zeros(1, model.config.model.decoder.n_embd)
    cb0 = torch.zeros(1, model.config.data.audio_vocab_size)
    for owner in (stepping, waiting):
        table.claim(owner, 1)
        table.keep(owner, hidden, cb0, 4)
    assert table.at_positions(4).position.tolist() == [4, 4, 0, 0]  # rows not in use at 0
    table.keep(stepping, hidden, cb0, 1)
    state = table.at_positions(2)
    assert state.position.tolist() == [5, 4] and state.filled == 5
