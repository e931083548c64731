"""The Dia2 model: a decoder over frames and a depformer over the codebooks of one frame.

One definition, three paths through the same layers (spec sections 3-4):

- `forward(tokens[B, C, T])`: the full teacher-forced sequence, for training;
- `prefill(tokens[B, C, T], state)`: many frames into the caller's KV caches;
- `step(tokens[B, C, 1], state)` + `depformer_step(stage, ...)`: one frame, one stage.

Parameter names are the checkpoint keys of the published files (spec section 3). This module
reads no file itself: `from_pretrained` finds and streams the weights with `dia2.model.checkpoint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dia2.errors import Dia2Error
from dia2.model.assets import ModelSource
from dia2.model.checkpoint import ModelFiles, load_weights, resolve_files
from dia2.model.config import Dia2Config, load_config
from dia2.model.layers import MLP, Attention, GroupIndex, KVCache, Linear, RMSNorm, Rotary


class TextEmbedding(nn.Module):
    """Low-rank text embedding of the two text streams: main_proj(E[main]) + second_proj(E[second]).

    The second stream contributes nothing where it holds the pad token.
    """

    def __init__(self, vocab: int, dim: int, rank: int, pad_id: int, dtype=None, device=None) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, rank, dtype=dtype, device=device)
        self.main_proj = Linear(rank, dim, bias=False, dtype=dtype, device=device)
        self.second_proj = Linear(rank, dim, bias=False, dtype=dtype, device=device)

    def forward(self, main: Tensor, second: Tensor) -> Tensor:
        """main, second [...] ints -> [..., D] float32."""
        out = self.main_proj(self.embedding(main)).float()
        second_out = self.second_proj(self.embedding(second)).float()
        return out + second_out * (second != self.pad_id).unsqueeze(-1)


class TransformerLayer(nn.Module):
    """Pre-norm block: x += attn(pre_norm(x)); x += mlp(post_norm(x)). Residual stream float32."""

    attention_name = "attn"

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        eps: float,
        activations: tuple[str, str],
        groups: int | None = None,
        dropout: float = 0.0,
        dtype=None,
        device=None,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.pre_norm = RMSNorm(dim, eps, dtype=dtype, device=device)
        attention = Attention(dim, n_heads, n_kv_heads, head_dim, eps, groups=groups, dtype=dtype, device=device)
        self.add_module(self.attention_name, attention)
        self.post_norm = RMSNorm(dim, eps, dtype=dtype, device=device)
        self.mlp = MLP(dim, hidden, activations, dtype=dtype, device=device)

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        cache: KVCache | None = None,
        cache_index: Tensor | int | None = None,
        group_index: GroupIndex | int | None = None,
    ) -> Tensor:
        attention: Attention = getattr(self, self.attention_name)
        h = attention(self.pre_norm(x), cos, sin, cache, cache_index, group_index)
        x = x + self._dropout(h.float())
        return x + self._dropout(self.mlp(self.post_norm(x)).float())

    def _dropout(self, h: Tensor) -> Tensor:
        # Decoding calls no dropout at all (a frame runs ~70 layers, two residuals each).
        return F.dropout(h, self.dropout, True) if self.training and self.dropout else h


class DepformerLayer(TransformerLayer):
    attention_name = "self_attention"


@dataclass
class DecoderOutput:
    """What the decoder gives for each of T columns; column t predicts column t+1.

    hidden [B, T, D] (final-normed, compute dtype: the depformer's input), action_logits
    [B, T, V_action] and cb0_logits [B, T, V_audio], float32.
    """

    hidden: Tensor
    action_logits: Tensor
    cb0_logits: Tensor


@dataclass
class Dia2Output(DecoderOutput):
    """`forward` output: the decoder's, plus depformer_logits [B, T-1, K-1, V_cut] float32.

    depformer_logits[:, t, s] predicts codebook s+1 of column t+1, teacher-forced with the
    codebooks 0..s of column t+1; the last column has no next column, so none there.
    """

    depformer_logits: Tensor


class DecodeCapacityError(Dia2Error, ValueError):
    """More columns were run into a decode state than it was created for."""


@dataclass
class DecodeState:
    """KV caches of one decoding session, owned by the caller.

    `position` is a long tensor on the model's device (the next column to write), so a captured
    CUDA graph can replay a step without host syncs: 0-dim when every row is at the same column
    (one utterance), [B] when each row has its own (a serving batch, `dia2.serving`). `filled` is the same count kept on
    the host: eager calls check the capacity against it before any kernel runs, without reading
    the device (on CUDA an out-of-range cache write is a device-side assert that kills the
    context). Graph replays and compiled steps run no Python, so they leave `filled` behind;
    the frame loop bounds those by its own capacity.
    """

    decoder: list[KVCache]
    depformer: list[KVCache]
    position: Tensor
    filled: int = 0

    @property
    def capacity(self) -> int:
        return self.decoder[0].capacity

    def reset(self) -> None:
        self.position.zero_()
        self.filled = 0

    def rows(self, start: int, stop: int, filled: int) -> "DecodeState":
        """Rows start..stop-1 of a per-row state, as views (what runs on them lands here).

        `filled` is the furthest column any of those rows has written, counted on the host.
        """
        assert self.position.dim() == 1, "rows() needs a per-row position [B]"
        view = lambda c: KVCache(c.k[start:stop], c.v[start:stop])
        return DecodeState(
            [view(c) for c in self.decoder], [view(c) for c in self.depformer], self.position[start:stop], filled
        )


class Decoder(nn.Module):
    """The main stack over frames (checkpoint prefix `transformer.`)."""

    def __init__(self, cfg: Dia2Config, dtype=None, device=None) -> None:
        super().__init__()
        data, m = cfg.data, cfg.model
        s = m.decoder
        self.num_codebooks = data.num_codebooks
        self.gradient_checkpointing = False
        self.text_embed = TextEmbedding(
            data.text_vocab_size, s.n_embd, s.low_rank_dim or s.n_embd, data.text_pad_token_id, dtype, device
        )
        self.audio_embeds = nn.ModuleList(
            nn.Embedding(data.audio_vocab_size, s.n_embd, dtype=dtype, device=device) for _ in range(data.num_codebooks)
        )
        self.layers = nn.ModuleList(
            TransformerLayer(
                s.n_embd, s.n_hidden, s.gqa_query_heads, s.kv_heads, s.gqa_head_dim,
                m.normalization_layer_epsilon, m.mlp_activations, dropout=m.dropout, dtype=dtype, device=device,
            )
            for _ in range(s.n_layer)
        )
        self.norm = RMSNorm(s.n_embd, m.normalization_layer_epsilon, dtype=dtype, device=device)
        self.action_head = Linear(s.n_embd, data.action_vocab_size, bias=False, dtype=dtype, device=device)
        self.cb0_head = Linear(s.n_embd, data.audio_vocab_size, bias=False, dtype=dtype, device=device)
        self.rotary = Rotary(s.gqa_head_dim, m.rope_min_timescale, m.rope_max_timescale)

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens [B, C, T] -> [B, T, D] float32: text streams plus every codebook's embedding."""
        x = self.text_embed(tokens[:, 0], tokens[:, 1])
        for c, embed in enumerate(self.audio_embeds):
            x = x + embed(tokens[:, 2 + c]).float()
        return x

    def forward(
        self, tokens: Tensor, caches: list[KVCache] | None = None, position: Tensor | int | None = None
    ) -> DecoderOutput:
        """tokens [B, C, T]. Without caches: causal over columns 0..T-1. With caches: columns
        position..position+T-1, attending to everything cached before them; `position` is an int
        (known on the host: eager, every row at the same column), a 0-dim long tensor (the same,
        on the device: CUDA graphs and compiled steps replay with it) or [B] (each row at its
        own, as in a serving batch)."""
        B, C, T = tokens.shape
        assert C == self.num_codebooks + 2, f"expected {self.num_codebooks + 2} channels, got {C}"
        if position is None or isinstance(position, int):
            cos, sin = self.rotary.span(position or 0, T, tokens.device)
        else:
            # A per-row position [B] gives per-row tables [B, 1, T, hd]; no position reaches the capacity.
            positions = position[..., None] + torch.arange(T, device=tokens.device)
            cos, sin = self.rotary.tables(positions, caches[0].capacity)
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            if caches is None and self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, None if caches is None else caches[i], position)
        hidden = self.norm(x)
        return DecoderOutput(hidden, self.action_head(hidden).float(), self.cb0_head(hidden).float())


class Depformer(nn.Module):
    """The per-frame stack over codebooks (checkpoint prefix `depformer.`).

    Stage s (0..K-2) predicts codebook s+1 from depformer_in[g](decoder hidden) +
    audio_embeds[s](codebook s), with g = weights_schedule[s]; norms and MLPs are shared.
    """

    def __init__(self, cfg: Dia2Config, dtype=None, device=None) -> None:
        super().__init__()
        data, m = cfg.data, cfg.model
        d = m.depformer
        self.schedule = tuple(cfg.runtime.weights_schedule)
        self.num_stages = cfg.num_depformer_stages
        self.logit_size = cfg.depformer_logit_size
        self.gradient_checkpointing = False
        groups = cfg.num_weight_groups
        # The stage positions each weight group serves, for the full-sequence path.
        self.group_index = GroupIndex(self.schedule, groups)
        self.audio_embeds = nn.ModuleList(
            nn.Embedding(data.audio_vocab_size, d.n_embd, dtype=dtype, device=device) for _ in range(self.num_stages)
        )
        self.depformer_in = nn.ModuleList(
            Linear(m.decoder.n_embd, d.n_embd, bias=False, dtype=dtype, device=device) for _ in range(groups)
        )
        self.text_embed = (
            TextEmbedding(data.text_vocab_size, d.n_embd, d.low_rank_dim or d.n_embd, data.text_pad_token_id, dtype, device)
            if d.text_embedding
            else None
        )
        self.layers = nn.ModuleList(
            DepformerLayer(
                d.n_embd, d.n_hidden, d.gqa_query_heads, d.kv_heads, d.gqa_head_dim, m.normalization_layer_epsilon,
                d.mlp_activations, groups=groups, dropout=m.dropout, dtype=dtype, device=device,
            )
            for _ in range(d.n_layer)
        )
        self.norm = RMSNorm(d.n_embd, m.normalization_layer_epsilon, dtype=dtype, device=device)
        self.logits = nn.ModuleList(
            Linear(d.n_embd, data.audio_vocab_size, bias=False, dtype=dtype, device=device)
            for _ in range(self.num_stages)
        )
        self.rotary = Rotary(d.gqa_head_dim, m.rope_min_timescale, m.rope_max_timescale) if d.apply_rope else None

    def _stage_input(self, stage: int, projected: Tensor, codes: Tensor, text: Tensor | None) -> Tensor:
        x = projected.float() + self.audio_embeds[stage](codes).float()
        if stage == 0 and self.text_embed is not None:
            assert text is not None, "this depformer embeds text: pass the frame's (main, second) tokens"
            x = x + self.text_embed(text[..., 0], text[..., 1])
        return x

    def forward(self, hidden: Tensor, codes: Tensor, text: Tensor | None = None) -> Tensor:
        """All stages of N frames at once.

        hidden [N, D] decoder hidden; codes [N, K-1] codebooks 0..K-2 of the frame being
        predicted; text [N, 2] its (main, second) tokens (only with text_embedding).
        Returns logits [N, K-1, V_cut] float32.
        """
        projected = [proj(hidden) for proj in self.depformer_in]
        x = torch.stack(
            [self._stage_input(s, projected[g], codes[:, s], text) for s, g in enumerate(self.schedule)], dim=1
        )
        cos = sin = None
        if self.rotary is not None:
            cos, sin = self.rotary.span(0, self.num_stages, hidden.device)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, None, None, self.group_index, use_reentrant=False)
            else:
                x = layer(x, cos, sin, group_index=self.group_index)
        x = self.norm(x)
        return torch.stack(
            [head(x[:, s])[..., : self.logit_size].float() for s, head in enumerate(self.logits)], dim=1
        )

    def project(self, hidden: Tensor) -> tuple[Tensor, ...]:
        """The decoder hidden [B, D] through each weight group's `depformer_in`: [B, D_dep] per
        group, what every stage of the frame starts from (one product per group and frame, not
        one per stage)."""
        return tuple(proj(hidden) for proj in self.depformer_in)

    def step(
        self, stage: int, hidden: Tensor | tuple[Tensor, ...], token: Tensor, caches: list[KVCache], text: Tensor | None = None
    ) -> Tensor:
        """One stage for B frames: hidden [B, D] (or the frame's `project(hidden)`), token [B]
        (codebook `stage`) -> logits [B, V_cut].

        Stages of a frame must run in order 0..K-2 with the same caches; stage 0 starts a frame.
        """
        group = self.schedule[stage]
        projected = hidden[group] if isinstance(hidden, tuple) else self.depformer_in[group](hidden)
        x = self._stage_input(stage, projected, token, text)[:, None, :]
        cos = sin = None
        if self.rotary is not None:
            cos, sin = self.rotary.span(stage, 1, x.device)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cos, sin, cache, stage, group)
        return self.logits[stage](self.norm(x[:, 0]))[..., : self.logit_size].float()


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on `device`'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class Dia2Model(nn.Module):
    """Dia2: `transformer` (decoder over frames) + `depformer` (over codebooks of a frame)."""

    def __init__(self, cfg: Dia2Config, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = Decoder(cfg, dtype=dtype, device=device)
        self.depformer = Depformer(cfg, dtype=dtype, device=device)

    @classmethod
    def from_config(
        cls, cfg: Dia2Config, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> "Dia2Model":
        """A randomly initialised model (on `device="meta"`: shapes only, no memory)."""
        return cls(cfg, dtype=dtype, device=device)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        revision: str | None = None,
        cache_dir: str | None = None,
        config_path: str | os.PathLike | None = None,
        weights_path: str | os.PathLike | None = None,
    ) -> "Dia2Model":
        """Load a published checkpoint from a local folder or a Hub repo id: the model of its
        `config.json`, with `model.safetensors` streamed in (see `dia2.model.checkpoint`)."""
        files = resolve_files(ModelSource.resolve(repo_or_dir, revision, cache_dir), config_path, weights_path)
        return cls.from_files(files, dtype, device)

    @classmethod
    def from_files(
        cls, files: ModelFiles, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> "Dia2Model":
        """Build the model of resolved files and stream its weights in (eval mode)."""
        model = cls.from_config(load_config(files.config), dtype=dtype, device="meta")
        load_weights(model, files.weights, device=device)
        # PEFT records this as an adapter's base_model_name_or_path: a name, never a local path.
        model.name_or_path = files.source.name
        model.eval()
        return model

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.transformer.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.norm.weight.device

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.gradient_checkpointing = enabled
        self.depformer.gradient_checkpointing = enabled

    def forward(self, tokens: Tensor) -> Dia2Output:
        """Teacher-forced pass over the grid tokens [B, C, T] (C = K + 2 channels)."""
        out = self.transformer(tokens)
        B, _, T = tokens.shape
        K = self.config.num_codebooks
        nxt = tokens[:, :, 1:]
        hidden = out.hidden[:, :-1].reshape(B * (T - 1), -1)
        codes = nxt[:, 2 : 2 + K - 1].permute(0, 2, 1).reshape(B * (T - 1), K - 1)
        text = nxt[:, :2].permute(0, 2, 1).reshape(B * (T - 1), 2)
        dep = self.depformer(hidden, codes, text).view(B, T - 1, K - 1, -1)
        return Dia2Output(out.hidden, out.action_logits, out.cb0_logits, dep)

    def new_state(self, batch_size: int, max_frames: int) -> DecodeState:
        """Empty caches for `batch_size` rows and up to `max_frames` columns (prefix included)."""
        dec, dep = self.config.model.decoder, self.config.model.depformer

        def caches(n: int, heads: int, length: int, head_dim: int) -> list[KVCache]:
            return [
                KVCache.empty(batch_size, heads, length, head_dim, self.compute_dtype, self.device) for _ in range(n)
            ]

        # The RoPE tables cover the state before any graph capture or compiled step reads them.
        self.transformer.rotary.reserve(max_frames, self.device)
        if self.depformer.rotary is not None:
            self.depformer.rotary.reserve(self.config.num_depformer_stages, self.device)
        return DecodeState(
            decoder=caches(dec.n_layer, dec.kv_heads, max_frames, dec.gqa_head_dim),
            depformer=caches(dep.n_layer, dep.kv_heads, self.config.num_depformer_stages, dep.gqa_head_dim),
            position=torch.zeros((), dtype=torch.long, device=self.device),
        )

    def prefill(self, tokens: Tensor, state: DecodeState) -> DecoderOutput:
        """Run columns state.position .. +T-1 (tokens [B, C, T]) into the caches; advance."""
        T = tokens.shape[-1]
        caches, position = state.decoder, state.position
        # A host-side attribute update inside a compiled function would recompile every step.
        if not torch.compiler.is_compiling():
            start, end = state.filled, state.filled + T
            if end > state.capacity:
                raise DecodeCapacityError(
                    f"decode state holds {state.capacity} frames but column {end - 1} was asked for: "
                    f"create it with a larger max_frames (Dia2Model.new_state(batch_size, max_frames={end}) or more)"
                )
            state.filled = end
            if not _capturing(tokens.device):
                # Eager: attend over the filled slots only, not the whole capacity. A CUDA graph
                # keeps the whole capacity (a static shape; the mask hides the rest).
                caches = [cache.narrow(end) for cache in caches]
                if position.dim() == 0:
                    # Every row at the host's count: slices, no index tensors or masks to build.
                    position = start
        out = self.transformer(tokens, caches, position)
        state.position.add_(T)
        return out

    def step(self, tokens: Tensor, state: DecodeState) -> DecoderOutput:
        """One column: tokens [B, C, 1] -> DecoderOutput with T = 1."""
        assert tokens.shape[-1] == 1, f"step takes one column, got {tokens.shape[-1]}"
        return self.prefill(tokens, state)

    def depformer_inputs(self, hidden: Tensor) -> tuple[Tensor, ...]:
        """What a frame's depformer stages start from, computed once: hidden [B, D] (the
        decoder's, last column) through each weight group's input projection; pass it to every
        `depformer_step` of the frame in place of `hidden`."""
        return self.depformer.project(hidden)

    def depformer_step(
        self, stage: int, hidden: Tensor | tuple[Tensor, ...], token: Tensor, state: DecodeState, text: Tensor | None = None
    ) -> Tensor:
        """Depformer stage `stage` for one frame: hidden [B, D] (the decoder's, last column, or
        the frame's `depformer_inputs(hidden)`), token [B] (codebook `stage` of the frame) ->
        logits [B, V_cut] for codebook stage+1."""
        return self.depformer.step(stage, hidden, token, state.depformer, text)


load_model = Dia2Model.from_pretrained
"""`dia2.load_model(repo_or_dir, dtype, device, ...)`: `Dia2Model.from_pretrained` as a function."""
