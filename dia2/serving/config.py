"""How a serving engine is sized, defined once: `EngineConfig` (the Python API's argument, and the
`engine` section of the speech server's and the studio's options: `--slots`, `--max-queued`,
`--cuda-graph`, `--torch-compile`, ...). Importing it loads no model stack, so a command checks these flags first."""

from __future__ import annotations

from dataclasses import dataclass

from dia2.errors import Dia2Error


class EngineConfigError(Dia2Error, ValueError):
    """An engine size out of range; the message names the setting."""


@dataclass(frozen=True)
class EngineConfig:
    """How an engine is sized. Caches are allocated once, at construction."""

    slots: int = 4
    """Utterances generated at once (the engine's batch). Each holds up to two cache rows (two with CFG)."""
    # Short: behind 4 busy slots, 8 waiting requests are two batches; a client past them hears at
    # once to retry elsewhere or later (the server's 429) rather than waiting minutes.
    max_queued: int = 8
    """Requests that may wait for a slot; beyond them a request is refused (EngineFull; the server
    answers 429 with Retry-After)."""
    max_prefix_frames: int = 250
    """Longest voice prefix a slot holds, in frames (250 = 20 s), on top of the model's context."""
    max_adapters: int = 8
    """LoRA adapters loaded at once."""
    max_adapter_rank: int = 64
    """Highest LoRA rank a loaded adapter may have (the bank's storage is sized for it)."""
    cuda_graph: bool = False
    """Replay each frame's work from two CUDA graphs over every slot (CUDA only; slots not in
    use are computed and ignored). Off: eager, over the rows in use only."""
    torch_compile: bool = False
    """torch.compile each frame's work (any device), compiled on the first frames for every batch
    size at once: requests join and leave without recompiling. Frames run eager while LoRA
    adapters are loaded. On a CPU the compiled frames multiply by the packed weights too
    (`packed_weights`). Not with cuda_graph."""
    packed_weights: bool = True
    """On a CPU with float32 weights, eager frames of 2 streams and more multiply by copies of the
    linear weights in oneDNN's blocked layout (`dia2.model.layers.pack_linears`): 4 streams about
    a fifth faster. Costs a second copy of the linear weights in memory (--no-packed-weights spares
    it). No effect elsewhere."""

    def __post_init__(self) -> None:
        for name in ("slots", "max_adapters", "max_adapter_rank"):
            if getattr(self, name) < 1:
                raise EngineConfigError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queued", "max_prefix_frames"):
            if getattr(self, name) < 0:
                raise EngineConfigError(f"EngineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.cuda_graph and self.torch_compile:
            raise EngineConfigError(
                "EngineConfig.cuda_graph and torch_compile cannot both be on: pick one (--cuda-graph or --torch-compile)"
            )
