"""dia2.model.quant: bitsandbytes 8-bit / 4-bit linears in a Dia2Model, on CPU; QLoRA on top."""

import copy
import importlib
import re
import sys

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from dia2.model.adapters import DEFAULT_TARGET_MODULES, lora_model
from dia2.model.config import parse_config
from dia2.model.layers import Linear, RMSNorm
from dia2.model.network import Dia2Model
from dia2.model.quant import quantize, quantized_module_names
from tests.conftest import random_tokens, tiny_raw_config

FRAMES = 6
LAYER_TYPES = {"8bit": bnb.nn.Linear8bitLt, "4bit": bnb.nn.Linear4bit}
# Relative L2 error of the logits against the float model (eval mode, CPU), measured on this
# geometry over three seeds: 8-bit <= 0.0092, 4-bit (nf4) <= 0.097. The bounds leave 2x headroom.
MAX_RELATIVE_ERROR = {"8bit": 0.02, "4bit": 0.2}
# Streaming step vs full forward, same quantized weights: the largest logit difference as a share
# of the largest logit. The paths batch different numbers of rows, so on another CPU or
# bitsandbytes build they may take different kernels: the packed 4-bit CPU kernel computes in
# bf16 (AVX512-BF16 machines), the other path in float32; these two differed by <= 0.5 % of the
# scale, and one CPU measured 0.004 on logits of scale ~2.5. 8-bit matmuls are exact int8 maths:
# <= 1e-6. A step that used the float weights instead is >= 2.7 % (4-bit) and >= 0.16 % (8-bit)
# away, the wrong frame's or another model's logits >= 100 %: the bounds lie between.
STEP_TOLERANCE = {"8bit": 2e-4, "4bit": 1e-2}


@pytest.fixture(scope="module")
def base():
    """The tiny model with a depformer 64 wide: every linear is a multiple of 64 input features,
    like the published geometries, so bitsandbytes' packed CPU 4-bit path runs as it would for
    them (test_adapters covers the narrower default tiny model)."""
    raw = tiny_raw_config()
    raw["model"]["depformer"].update(n_embd=64, gqa_head_dim=32)
    torch.manual_seed(0)
    return Dia2Model.from_config(parse_config(raw)).eval()


@pytest.fixture(scope="module")
def tokens(base):
    return random_tokens(base.config, 2, FRAMES, seed=3)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized_forward_is_close_to_float(base, tokens, mode, caplog):
    model = quantize(copy.deepcopy(base), mode)
    assert model.is_loaded_in_8bit == (mode == "8bit") and model.is_loaded_in_4bit == (mode == "4bit")
    assert not any(m.training for m in model.modules()), "new layers must keep the model's eval mode"
    with torch.no_grad(), caplog.at_level("WARNING"):
        ref, out = base(tokens), model(tokens)
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # nothing logged per call
    for key in ("action_logits", "cb0_logits", "depformer_logits"):
        got, want = getattr(out, key), getattr(ref, key)
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), key
        error = _relative_error(got, want)
        # Above zero: the weights really were quantized; below the bound: still the same model.
        assert 1e-4 < error < MAX_RELATIVE_ERROR[mode], f"{mode} {key}: relative error {error:.4f}"


def _share_of_scale(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference as a share of want's largest absolute value."""
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_steps_on_a_quantized_model(base, tokens, mode):
    model = quantize(copy.deepcopy(base), mode)
    state = model.new_state(tokens.shape[0], FRAMES)
    bound = STEP_TOLERANCE[mode]
    with torch.no_grad():
        full, float_model = model(tokens), base(tokens)
        for t in range(3):
            out = model.step(tokens[:, :, t : t + 1], state)
            logits = [
                model.depformer_step(s, out.hidden[:, 0], tokens[:, 2 + s, t + 1], state)
                for s in range(model.config.num_depformer_stages)
            ]
            assert all(torch.isfinite(x).all() for x in logits)
            pairs = {"cb0": (out.cb0_logits[:, 0], full.cb0_logits, float_model.cb0_logits),
                     "depformer": (torch.stack(logits, 1), full.depformer_logits, float_model.depformer_logits)}
            for key, (step, forward, unquantized) in pairs.items():
                # Same quantized weights: the streaming path agrees with forward at frame t ...
                assert _share_of_scale(step, forward[:, t]) <= bound, f"{mode} {key} t={t}"
                # ... and the bound is tight enough to tell it from the float weights and frame t+1.
                assert _share_of_scale(step, unquantized[:, t]) > bound, f"{mode} {key} t={t}"
                assert _share_of_scale(step, forward[:, t + 1]) > 50 * bound, f"{mode} {key} t={t}"


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_only_block_linears_are_quantized(base, mode):
    names = quantized_module_names(base)
    model = quantize(copy.deepcopy(base), mode)
    for name, module in model.named_modules():
        if name in names:
            assert isinstance(module, LAYER_TYPES[mode]), name
            assert module.weight.dtype in (torch.int8, torch.uint8), name
        elif isinstance(module, (nn.Linear, nn.Embedding, RMSNorm)):
            # Heads, text projections, embeddings and norms keep the model's float weights.
            assert type(module) in (nn.Linear, Linear, nn.Embedding, RMSNorm), name
            assert module.weight.dtype == torch.float32, name
    heads = {"transformer.action_head", "transformer.cb0_head", "depformer.logits.0"}
    assert heads.isdisjoint(names) and not any("text_embed" in n for n in names)


def test_quantized_layers_are_the_lora_targets(base):
    """QLoRA trains exactly the layers that are quantized."""
    targets = {name for name, _ in base.named_modules() if re.fullmatch(DEFAULT_TARGET_MODULES, name)}
    assert set(quantized_module_names(base)) == targets


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_qlora_step_changes_only_lora_weights(base, tokens, mode):
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    from peft.tuners.lora.bnb import Linear8bitLt as LoraLinear8bitLt

    torch.manual_seed(4)
    peft_model = lora_model(quantize(copy.deepcopy(base), mode), rank=4, alpha=8)
    lora_type = LoraLinear8bitLt if mode == "8bit" else LoraLinear4bit
    assert isinstance(peft_model.get_base_model().transformer.layers[0].attn.q_proj, lora_type)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    out = peft_model(tokens)
    target = tokens[:, 2, 1:]
    loss = nn.functional.cross_entropy(out.cb0_logits[:, :-1].flatten(0, 1), target.flatten())
    loss.backward()
    optimizer.step()
    after = peft_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the optimizer step changed nothing"
    assert all(".lora_" in k for k in changed), sorted(k for k in changed if ".lora_" not in k)
    assert any(".lora_B." in k and "depformer" not in k for k in changed)


def test_bad_arguments(base):
    with pytest.raises(ValueError, match="unknown quantization mode '3bit'"):
        quantize(copy.deepcopy(base), "3bit")
    with pytest.raises(ValueError, match="unknown 4-bit quant_type"):
        quantize(copy.deepcopy(base), "4bit", quant_type="int4")
    with pytest.raises(ValueError, match="compute_dtype applies to mode '4bit' only"):
        quantize(copy.deepcopy(base), "8bit", compute_dtype=torch.bfloat16)
    model = quantize(copy.deepcopy(base), "4bit")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, "8bit")
    with pytest.raises(ValueError, match="quantize the base model first"):
        quantize(lora_model(copy.deepcopy(base), rank=2, alpha=2).get_base_model(), "4bit")


def test_missing_bitsandbytes_is_explained(base, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ImportError, match="pip install 'bitsandbytes"):
        quantize(copy.deepcopy(base), "4bit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantize_while_moving_to_cuda(base, tokens, mode):
    model = quantize(copy.deepcopy(base), mode, device="cuda")
    assert model.device.type == "cuda"
    assert model.transformer.layers[0].mlp.wi.weight.device.type == "cuda"
    with torch.no_grad():
        out = model(tokens.cuda()).depformer_logits.cpu()
        ref = base(tokens).depformer_logits
    assert _relative_error(out, ref) < MAX_RELATIVE_ERROR[mode]


def test_int8_threshold_zero_builds_capturable_layers(base, tokens):
    """CUDA graphs need 8-bit layers without outlier columns (dia2.generation.graphs refuses the
    others): int8_threshold=0.0 builds them, and they are still the same model."""
    from dia2.model.quant import INT8_THRESHOLD, int8_outlier_threshold

    assert int8_outlier_threshold(base) == 0.0
    assert int8_outlier_threshold(quantize(copy.deepcopy(base), "8bit")) == INT8_THRESHOLD
    plain = quantize(copy.deepcopy(base), "8bit", int8_threshold=0.0)
    assert int8_outlier_threshold(plain) == 0.0
    # A low threshold sends this model's activation columns through 16-bit: the setting reaches the layers.
    outliers = quantize(copy.deepcopy(base), "8bit", int8_threshold=0.5)
    with torch.no_grad():
        ref, got, mixed = base(tokens).depformer_logits, plain(tokens).depformer_logits, outliers(tokens).depformer_logits
    assert 1e-4 < _relative_error(got, ref) < MAX_RELATIVE_ERROR["8bit"]
    assert not torch.equal(got, mixed)
    with pytest.raises(ValueError, match="int8_threshold must be >= 0"):
        quantize(copy.deepcopy(base), "8bit", int8_threshold=-1.0)
    with pytest.raises(ValueError, match="int8_threshold applies to mode '8bit' only"):
        quantize(copy.deepcopy(base), "4bit", int8_threshold=0.0)



@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_qlora_wraps_quantized_layers_when_bitsandbytes_came_from_elsewhere(base, mode, monkeypatch):
    """The order of a test session (and of a user's script): PEFT imported through dia2 while
    bitsandbytes was hidden (PEFT cached "absent"), bitsandbytes then imported by someone else, and
    PEFT's bnb module imported meanwhile without its 8/4-bit layers: QLoRA still gets them."""
    from peft.import_utils import is_bnb_4bit_available, is_bnb_available

    with pytest.MonkeyPatch.context() as hidden:
        hidden.setitem(sys.modules, "bitsandbytes", None)
        is_bnb_available.cache_clear()
        is_bnb_4bit_available.cache_clear()
        assert not is_bnb_available() and not is_bnb_4bit_available()
    assert sys.modules["bitsandbytes"] is bnb
    monkeypatch.setitem(sys.modules, "peft.tuners.lora.bnb", None)  # put back (or removed) after the test
    del sys.modules["peft.tuners.lora.bnb"]
    stale = importlib.import_module("peft.tuners.lora.bnb")
    assert not hasattr(stale, "Linear4bit")
    layer = lora_model(quantize(copy.deepcopy(base), mode), rank=2, alpha=4).get_base_model().transformer.layers[0].attn.q_proj
    from peft.tuners.lora.bnb import Linear4bit, Linear8bitLt

    assert isinstance(layer, Linear8bitLt if mode == "8bit" else Linear4bit)
