"""Weights an adapter replaces outright, served per batch row: embedding rows and whole heads.

A new-language adapter (PEFT `trainable_token_indices` on the text embedding, `modules_to_save`
on the output heads) does not add a low-rank delta: it brings new values for some rows of an
embedding table and whole new weights for a few linear layers. `LoraBank` serves them the way it
serves LoRA, per batch row, never merged into the shared model:

- `EmbeddingRows`: for one nn.Embedding, every slot's replaced rows live in one table and a map
  [slots, vocab] gives, per slot and token, the row to use (-1: the base's). A forward hook swaps
  in row b's replacements for the tokens its adapter trained; other tokens, and rows of other
  adapters, keep the base embedding bit for bit. A whole embedding in modules_to_save is the case
  where every token is replaced.
- `LinearWeights`: for one bias-free nn.Linear, every slot's whole weight [slots, out, in]; a
  forward hook recomputes the output of rows whose adapter replaces it (x_b W_a^T), and leaves the
  other rows' output as the base computed it.

Neither reads anything back to the host, so a routed step stays capturable in a CUDA graph. The
embedding table is re-allocated when an adapter with rows is loaded or unloaded, which the bank
counts as a change that needs graphs recaptured.

Memory: embedding rows cost their count x dim per adapter, plus a [slots, vocab] long map (Dia2-2B:
9 x 49,280 x 8 bytes = 3.5 MB); a replaced linear costs slots x out x in in the compute dtype
(Dia2-2B's cb0_head, 9 slots in bf16: 76 MB; action_head: 74 KB).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class EmbeddingRows:
    """Per-slot replaced rows of one nn.Embedding, applied by a forward hook while routed."""

    def __init__(self, module: nn.Embedding, slots: int, dtype: torch.dtype, hook) -> None:
        self.module = module
        self.dtype = dtype
        self.remap = torch.full((slots, module.num_embeddings), -1, dtype=torch.long, device=module.weight.device)
        self.rows = torch.zeros(0, module.embedding_dim, dtype=dtype, device=module.weight.device)
        self._by_slot: dict[int, tuple[Tensor, Tensor]] = {}  # slot -> (token indices [N], rows [N, dim])
        self.handle: RemovableHandle = module.register_forward_hook(hook)

    @property
    def users(self) -> set[int]:
        return set(self._by_slot)

    def put(self, slot: int, indices: Tensor, rows: Tensor) -> None:
        """Slot `slot` uses `rows` [N, dim] for tokens `indices` [N]."""
        self._by_slot[slot] = (indices.to(self.remap.device, torch.long), rows.to(self.rows.device, self.dtype))
        self._rebuild()

    def drop(self, slot: int) -> None:
        self._by_slot.pop(slot, None)
        self._rebuild()

    def _rebuild(self) -> None:
        self.remap.fill_(-1)
        tables, offset = [], 0
        for slot, (indices, rows) in sorted(self._by_slot.items()):
            self.remap[slot, indices] = torch.arange(offset, offset + len(indices), device=self.remap.device)
            tables.append(rows)
            offset += len(indices)
        self.rows = torch.cat(tables) if tables else self.rows[:0]

    def apply(self, rows: Tensor, ids: Tensor, output: Tensor) -> Tensor:
        """output [B, ..., dim] of ids [B, ...] with row b's replacements (adapter rows[b])."""
        assert ids.shape[0] == rows.shape[0], f"routed got {rows.shape[0]} rows but the embedding sees {ids.shape[0]}"
        index = self.remap[rows.view(-1, *([1] * (ids.dim() - 1))), ids]
        replaced = self.rows[index.clamp(min=0)].to(output.dtype)
        return torch.where((index >= 0).unsqueeze(-1), replaced, output)


class LinearWeights:
    """Per-slot whole weights of one bias-free nn.Linear, applied by a forward hook while routed."""

    def __init__(self, module: nn.Linear, slots: int, dtype: torch.dtype, hook) -> None:
        device = module.weight.device
        self.weight = torch.zeros(slots, module.out_features, module.in_features, dtype=dtype, device=device)
        self.replaces = torch.zeros(slots, dtype=torch.bool, device=device)
        self.handle: RemovableHandle = module.register_forward_hook(hook)

    @property
    def users(self) -> set[int]:
        return {int(s) for s in self.replaces.nonzero().flatten()}

    def put(self, slot: int, weight: Tensor) -> None:
        self.weight[slot] = weight.to(self.weight)
        self.replaces[slot] = True

    def drop(self, slot: int) -> None:
        self.weight[slot].zero_()
        self.replaces[slot] = False

    def apply(self, rows: Tensor, x: Tensor, output: Tensor) -> Tensor:
        """output [B * L, ..., out] of x (frames of a batch row contiguous) with row b's weight where
        its adapter replaces this layer."""
        batch = rows.shape[0]
        x = x.reshape(batch, -1, x.shape[-1]).to(self.weight.dtype)
        new = torch.bmm(x, self.weight.index_select(0, rows).transpose(1, 2)).reshape(output.shape)
        use = self.replaces.index_select(0, rows).view(batch, *([1] * (output.dim() - 1)))
        if output.shape[0] != batch:  # the full-sequence depformer: B * (T - 1) frames, row-major
            use = use.repeat_interleave(output.shape[0] // batch, dim=0)
        return torch.where(use, new.to(output.dtype), output)
