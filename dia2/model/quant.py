"""Low-VRAM mode: bitsandbytes 8-bit (LLM.int8()) or 4-bit (NF4/FP4) linear layers in a Dia2Model.

`quantize(model, "4bit")` swaps the big linear layers for `bnb.nn.Linear4bit` (or
`Linear8bitLt`) in place; bitsandbytes quantizes each weight as it is moved to its device, so
`quantize(cpu_model, "4bit", device="cuda")` never holds the float model on the GPU (each float
weight visits it only while its layer is quantized). The
model's API is unchanged (forward / prefill / step / depformer_step), and PEFT sees
`is_loaded_in_4bit` / `is_loaded_in_8bit`, so `get_peft_model` on it builds QLoRA layers.

What is quantized: every linear layer of both stacks' blocks (attention, MLP) and the
depformer's `depformer_in` projections: 77% of Dia2-1B's parameters, 80% of Dia2-2B's. What
stays in the model's dtype:
- norms (tiny) and embeddings (lookups, not matmuls);
- the text embedding's low-rank projections (part of the embedding; 2M / 8M parameters);
- the output heads `transformer.action_head`, `transformer.cb0_head`, `depformer.logits.{s}`:
  their error lands directly on the logits the sampler draws from, with no later layer or norm
  to absorb it, which is why LLM quantization keeps `lm_head` in full precision too. They cost
  67M parameters on Dia2-1B (6%) and 69M on Dia2-2B (4%).
That is the same set of layers `dia2.model.adapter_files.DEFAULT_TARGET_MODULES` adapts, so QLoRA trains
exactly the quantized layers.

Dtypes: every linear receives the compute dtype (RMSNorm returns its weight dtype) and the
residual adds `.float()` of each block output, so the quantized layers need no change in
dia2/model/layers.py: Linear4bit computes in `compute_dtype` and returns its input dtype;
Linear8bitLt quantizes its input through float16 (LLM.int8()) and returns its input dtype.
Measured on the tiny model, float32, CPU: logits within 1% (8-bit) and 10% (4-bit nf4)
relative L2 error of the float model.

CUDA graphs: LLM.int8()'s outlier search (`outliers.any()`, `torch.argwhere` on every call)
syncs with the host, so 8-bit layers with an outlier threshold cannot be captured (and sync
hundreds of times per frame even eagerly). `int8_threshold=0.0` builds layers without outlier
columns (pure int8 matmuls, no syncs, somewhat larger error); `dia2.generation.graphs` refuses
the others. Nothing changes the threshold behind the caller's back: that trades accuracy.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from dia2.errors import Dia2Error
from dia2.model.layers import PLAIN_LINEARS
from dia2.model.network import Dia2Model

if TYPE_CHECKING:
    from types import ModuleType

logger = logging.getLogger(__name__)

QuantMode = Literal["8bit", "4bit"]
MODES: tuple[str, ...] = ("8bit", "4bit")
QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4")

# Linear layers kept in the model's dtype (see the module docstring for why), as module names.
KEEP_FULL_PRECISION = re.compile(
    r"transformer\.(action_head|cb0_head)|depformer\.logits\.\d+|(transformer|depformer)\.text_embed\..+"
)

# LLM.int8()'s outlier threshold (the paper's and transformers' default): input columns with a
# value above it are multiplied in 16-bit, which keeps 8-bit quality close to the float model.
INT8_THRESHOLD = 6.0


class QuantError(Dia2Error, ValueError):
    """A quantization request that cannot be honoured (mode, options, model state)."""

_CPU_TILE_OUT = 32  # output features per tile of bitsandbytes' packed CPU 4-bit format


class _DropFp16CastNotice(logging.Filter):
    """Drops bitsandbytes' per-call notice that 8-bit layers quantize their input through float16.

    LLM.int8() always does, whatever the input dtype (Dia2's linears get float32 or bf16), so the
    notice carries no news, and it would be logged for every linear of every decoding step.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def quantize(
    model: Dia2Model,
    mode: QuantMode,
    compute_dtype: torch.dtype | None = None,
    quant_type: str = "nf4",
    device: torch.device | str | None = None,
    int8_threshold: float | None = None,
) -> Dia2Model:
    """Replace the model's block linears by bitsandbytes layers, in place; returns `model`.

    mode: "8bit" (LLM.int8(), Linear8bitLt) or "4bit" (Linear4bit, `quant_type` "nf4" or "fp4",
    double-quantized statistics). compute_dtype (4-bit only): dtype of the 4-bit matmuls;
    default the model's compute dtype (e.g. torch.bfloat16 with a float32 model on CUDA for
    speed). device: where the quantized model lives, default where it is now; weights are
    quantized layer by layer as they move there. int8_threshold (8-bit only): LLM.int8()'s
    outlier threshold, default INT8_THRESHOLD; 0.0 turns the outlier columns off, which CUDA graphs need (module
    docstring). The layers kept in full precision keep the model's dtype: convert it first
    (e.g. `model.to(torch.bfloat16)`) to serve in bf16. Quantize the base model before adding
    LoRA layers.
    """
    if mode not in MODES:
        raise QuantError(f"unknown quantization mode {mode!r}: choose one of {list(MODES)}")
    if quant_type not in QUANT_TYPES:
        raise QuantError(f"unknown 4-bit quant_type {quant_type!r}: choose one of {list(QUANT_TYPES)}")
    if mode == "8bit" and compute_dtype is not None:
        raise QuantError("compute_dtype applies to mode '4bit' only; 8-bit layers compute in their input dtype")
    if mode == "4bit" and int8_threshold is not None:
        raise QuantError("int8_threshold applies to mode '8bit' only; 4-bit layers have no outlier columns")
    if int8_threshold is None:
        int8_threshold = INT8_THRESHOLD
    if not int8_threshold >= 0:  # also refuses NaN
        raise QuantError(f"int8_threshold must be >= 0 (0 disables outlier columns), got {int8_threshold}")
    bnb = _import_bitsandbytes()
    _check_quantizable(model)
    target = torch.device(device) if device is not None else model.device
    names = quantized_module_names(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        if mode == "8bit":
            layer = _linear8bit(bnb, linear, int8_threshold)
        else:
            layer = _linear4bit(bnb, linear, compute_dtype or model.compute_dtype, quant_type)
        layer.train(linear.training)
        # Quantize now, one layer at a time: peak memory is the model plus one float layer.
        setattr(model.get_submodule(parent_name), child, layer.to(target))
    model.to(target)  # norms, embeddings and heads, in their own dtype
    if mode == "8bit":
        _silence_fp16_cast_notice()
    model.is_loaded_in_8bit = mode == "8bit"
    model.is_loaded_in_4bit = mode == "4bit"
    logger.info("quantized %d linear layers to %s on %s", len(names), mode, target)
    return model


def quantized_module_names(model: nn.Module) -> list[str]:
    """Names of the plain nn.Linear layers `quantize` replaces (all but KEEP_FULL_PRECISION)."""
    return [
        name
        for name, module in model.named_modules()
        if type(module) in PLAIN_LINEARS and not KEEP_FULL_PRECISION.fullmatch(name)
    ]


def int8_outlier_threshold(model: nn.Module) -> float:
    """The largest LLM.int8() outlier threshold of the model's 8-bit layers; 0.0 when it has
    none with outlier columns (no 8-bit layers, or all built with int8_threshold=0)."""
    if not getattr(model, "is_loaded_in_8bit", False):
        return 0.0
    bnb = _import_bitsandbytes()
    return max((m.state.threshold for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)), default=0.0)


def is_quantized(model: nn.Module) -> bool:
    """Whether `quantize` (or another bitsandbytes loader) has run on `model`."""
    return bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False))


def _check_quantizable(model: Dia2Model) -> None:
    if not isinstance(model, Dia2Model):
        raise TypeError(f"quantize takes a Dia2Model, got {type(model).__name__}")
    if is_quantized(model):
        raise QuantError("the model is already quantized; quantize a float model")
    if model.device.type == "meta":
        raise QuantError("the model is on the meta device: load its weights before quantizing")
    # PEFT layers wrap the linears (and lora_A/lora_B are linears themselves): quantizing them
    # would quantize the adapter. QLoRA is: quantize the base, then add LoRA.
    if any(type(m).__module__.startswith("peft.") for m in model.modules()):
        raise QuantError(
            "the model carries PEFT (LoRA) layers: quantize the base model first, then add or load "
            "the adapter (or merge it in with merge_and_unload before quantizing)"
        )


def _silence_fp16_cast_notice() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropFp16CastNotice) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropFp16CastNotice())
        logger.info("8-bit layers quantize their inputs through float16 (LLM.int8())")


def _import_bitsandbytes() -> ModuleType:
    """bitsandbytes, imported without the network request its import makes on CPUs with
    AVX512-BF16 (it asks the Hub about an optional kernel, kernels-community/quantization-
    bitsandbytes: `kernels` is hidden meanwhile), its warning about that kernel replaced by one
    line that says what it means; then PEFT is told it is there (`dia2.model.peft_api`)."""
    if sys.modules.get("bitsandbytes") is None:
        _import_bitsandbytes_quietly()
    # Also when bitsandbytes came in some other way (a user's own `import bitsandbytes` after dia2):
    # PEFT cached "absent" while dia2.model.peft_api hid it, and would wrap 8/4-bit layers as floats.
    peft_api = sys.modules.get("dia2.model.peft_api")
    if peft_api is not None:
        peft_api.bitsandbytes_imported()
    return sys.modules["bitsandbytes"]


def _import_bitsandbytes_quietly() -> None:
    note = _HubKernelNotice()
    ops_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    ops_logger.addFilter(note)
    kernels = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]  # `from kernels import ...` -> ImportError
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "8-bit/4-bit mode needs bitsandbytes: `pip install 'bitsandbytes>=0.45'` (it runs on CPU and CUDA)"
        ) from exc
    finally:
        if kernels is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = kernels
        ops_logger.removeFilter(note)
    if note.seen:
        logger.info("bitsandbytes runs 4-bit layers on this CPU with its built-in kernels; its optional faster kernel "
                    "is hosted on the Hugging Face Hub and is not fetched (no network request is made)")


class _HubKernelNotice(logging.Filter):
    """Drops bitsandbytes' warning that its Hub-hosted CPU kernel did not load, and notes it."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"):
            self.seen = True
            return False
        return True


def _linear8bit(bnb: ModuleType, linear: nn.Linear, threshold: float) -> nn.Linear:
    layer = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=False,
        has_fp16_weights=False, threshold=threshold, device="meta",
    )
    # Int8Params quantizes only when moved off the CPU-resident float data, so start from there.
    layer.weight = bnb.nn.Int8Params(linear.weight.detach().cpu(), requires_grad=False, has_fp16_weights=False)
    return layer


def _linear4bit(bnb: ModuleType, linear: nn.Linear, compute_dtype: torch.dtype, quant_type: str) -> nn.Linear:
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=False,
        compute_dtype=compute_dtype, compress_statistics=True, quant_type=quant_type, device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.detach().cpu(), requires_grad=False,
        compress_statistics=True, quant_type=quant_type, module=layer,
    )
    # bitsandbytes' fast CPU inference path repacks the weight in tiles of 64 input x 32 output
    # features and fails on narrower layers (only tiny test models have them; the published
    # geometries are multiples of 64): those keep its generic path, which handles any size.
    if linear.in_features % layer.weight.blocksize or linear.out_features % _CPU_TILE_OUT:
        layer.support_avx512bf16_for_cpu = False
    return layer
