"""The serving engine's row table: which request holds which cache row, kept dense.

A batched step is one slice of the caches (no gather) only while the rows in use are 0..R-1, so
the rows a request leaves are filled by moving the last rows into them. Per row the table keeps
its owner, its position (the columns its cache holds: where its next decoder step writes) and
what its next steps read: the decoder's hidden and cb0 logits of its last column (from its
prefill or the last batched step), its next column's text, and the column its next decoder step
runs. The engine decides who steps; the table stores rows and moves them, and knows nothing of
requests (an owner is any object, told apart by identity).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import torch
from torch import Tensor

from dia2.model.network import DecodeState, Dia2Model

O = TypeVar("O", bound=Hashable)


class RowTable(Generic[O]):
    """`size` cache rows of `length` columns each, with per-row positions and buffers."""

    def __init__(self, model: Dia2Model, size: int, length: int) -> None:
        cfg, device = model.config, model.device
        self.state = model.new_state(size, length)
        self.state.position = torch.zeros(size, dtype=torch.long, device=device)
        self.hidden = torch.zeros(size, cfg.model.decoder.n_embd, dtype=model.compute_dtype, device=device)
        self.cb0 = torch.zeros(size, cfg.data.audio_vocab_size, device=device)
        self.text = torch.zeros(size, 2, dtype=torch.long, device=device)
        self.columns = torch.zeros(size, cfg.data.channels, 1, dtype=torch.long, device=device)
        self._owners: list[O] = []  # row -> its owner; rows 0..len-1 are in use
        self._positions: list[int] = []  # row -> the columns its cache holds
        self._rows: dict[O, list[int]] = {}  # owner -> its rows, conditional first

    @property
    def size(self) -> int:
        """Rows in all (in use or not)."""
        return self.state.position.shape[0]

    def __len__(self) -> int:
        """Rows in use."""
        return len(self._owners)

    def rows(self, owner: O) -> list[int]:
        """The owner's rows (none once released)."""
        return list(self._rows.get(owner, ()))

    def owners(self) -> list[O]:
        """Every owner holding rows, in the order of their first row."""
        return sorted(self._rows, key=lambda o: self._rows[o][0])

    def owner_of_rows(self, count: int) -> list[O | None]:
        """The owner of each of rows 0..count-1 (None: not in use)."""
        return [self._owners[r] if r < len(self._owners) else None for r in range(count)]

    def claim(self, owner: O, n: int) -> DecodeState:
        """n fresh rows at the end for `owner`, as a state at column 0 for its prefill."""
        start = len(self._owners)
        assert owner not in self._rows and start + n <= self.size, (start, n, self.size)
        self._rows[owner] = list(range(start, start + n))
        self._owners += [owner] * n
        self._positions += [0] * n
        rows = self.state.rows(start, start + n, filled=0)
        rows.position.zero_()
        return rows

    def keep(self, owner: O, hidden: Tensor, cb0_logits: Tensor, columns: int) -> None:
        """After a model call ran `columns` more columns on the owner's rows: their last
        column's hidden [n, D] and cb0 logits [n, V], read by its next audio step."""
        rows = self._rows[owner]
        self.hidden[rows] = hidden
        self.cb0[rows] = cb0_logits
        for r in rows:
            self._positions[r] += columns

    def set_text(self, owner: O, text: Tensor) -> None:
        """The owner's next column's text [n, 2], read by its next audio step."""
        self.text[self._rows[owner]] = text

    def set_column(self, owner: O, column: Tensor) -> None:
        """The column [n, C, 1] the owner's rows run at the next decoder step."""
        self.columns[self._rows[owner]] = column

    def batch(self, count: int) -> DecodeState:
        """Rows 0..count-1 as one state for the depformer (which keeps no positions)."""
        return self.state.rows(0, count, filled=0)

    def at_positions(self, count: int) -> DecodeState:
        """Rows 0..count-1 as one state for a decoder step, each row at its own position (rows
        not in use at 0). A row whose owner does not `keep` the step's outputs is left where it
        was: the column it wrote is overwritten by its next step."""
        positions = [self._positions[r] if r < len(self._positions) else 0 for r in range(count)]
        state = self.state.rows(0, count, filled=max(positions, default=0))
        state.position.copy_(torch.tensor(positions))
        return state

    def release(self, owner: O) -> None:
        """Free the owner's rows, moving the last rows in use into the holes (rows stay dense)."""
        holes = sorted(self._rows.pop(owner, ()))
        if not holes:
            return
        keep = len(self._owners) - len(holes)
        movers = [r for r in range(keep, len(self._owners)) if r not in holes]
        for src, dst in zip(movers, [h for h in holes if h < keep]):
            self._move(src, dst)
        del self._owners[keep:]
        del self._positions[keep:]

    def _move(self, src: int, dst: int) -> None:
        used = self._positions[src] + 1  # the columns it holds, plus one a waiting row wrote ahead
        for cache in self.state.decoder:
            cache.k[dst, :, :used] = cache.k[src, :, :used]
            cache.v[dst, :, :used] = cache.v[src, :, :used]
        for buffer in (self.hidden, self.cb0, self.text):
            buffer[dst] = buffer[src]
        owner = self._owners[src]
        rows = self._rows[owner]
        rows[rows.index(src)] = dst
        self._owners[dst] = owner
        self._positions[dst] = self._positions[src]
