"""dia2.model.lora_bank: per-row LoRA equals each adapter alone, base outside `routed`, clean refusals."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from dia2.model.adapters import (
    OUTPUT_HEADS,
    TEXT_EMBEDDING,
    AdapterError,
    load_adapter,
    lora_model,
)
from dia2.model.lora_bank import LoraBank
from dia2.model.network import Dia2Model
from tests.conftest import random_tokens
from tests.helpers.adapters import save_language_adapter, save_random_adapter, tiny_model_config

ATOL = 1e-5
FRAMES = 6
PREFILL = 3


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return Dia2Model.from_config(tiny_model_config()).eval()


@pytest.fixture(scope="module")
def tokens(base):
    return random_tokens(base.config, 4, FRAMES, seed=3)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """a: rank 4; b: rank 8 with a smaller rank on the MLP outputs and its own alpha on k_proj;
    c: rank 3 (below a's, so a slot reused after a must have been cleared), rsLoRA scaling."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": save_random_adapter(root / "a", seed=1, r=4, lora_alpha=8),
        "b": save_random_adapter(
            root / "b", seed=2, r=8, lora_alpha=16, rank_pattern={r"mlp\.wo": 2}, alpha_pattern={r"attn\.k_proj": 3}
        ),
        "c": save_random_adapter(root / "c", seed=4, r=3, lora_alpha=4, use_rslora=True),
    }


def _alone(base, folder: Path | None):
    """The model as PEFT serves one adapter (None: the base)."""
    return base if folder is None else load_adapter(copy.deepcopy(base), folder, merge=False).model


def _logits(model, tokens) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(tokens)
    return {"action": out.action_logits, "cb0": out.cb0_logits, "depformer": out.depformer_logits}


def _decode(model, tokens) -> dict[str, torch.Tensor]:
    """Prefill PREFILL columns, then step the rest, each step followed by all depformer stages."""
    B = tokens.shape[0]
    with torch.no_grad():
        state = model.new_state(B, FRAMES)
        state.position = torch.zeros(B, dtype=torch.long)
        outs = [model.prefill(tokens[:, :, :PREFILL], state)]
        deps = []
        for t in range(PREFILL, FRAMES):
            outs.append(model.step(tokens[:, :, t : t + 1], state))
            hidden = outs[-1].hidden[:, 0]
            stages = model.config.num_depformer_stages
            deps.append(torch.stack([model.depformer_step(s, hidden, tokens[:, 2 + s, t], state) for s in range(stages)], 1))
    return {
        "action": torch.cat([o.action_logits for o in outs], 1),
        "cb0": torch.cat([o.cb0_logits for o in outs], 1),
        "depformer": torch.stack(deps, 1),
    }


def _check_rows(run, served: dict, base, tokens, folders: list[Path | None]) -> None:
    """Row b of `served` equals `run` of adapter folders[b] alone on row b; adapter rows differ from the base."""
    for b, folder in enumerate(folders):
        row = tokens[b : b + 1]
        expected = run(_alone(base, folder), row)
        for key, value in expected.items():
            torch.testing.assert_close(served[key][b : b + 1], value, atol=ATOL, rtol=0, msg=f"row {b} {key}")
            if folder is not None:
                assert (run(base, row)[key] - value).abs().max() > 1e-3, f"row {b} {key}: adapter changes nothing"


@pytest.fixture
def bank(base, adapters):
    bank = LoraBank(copy.deepcopy(base), max_adapters=3, max_rank=8)
    bank.load("a", adapters["a"])
    bank.load("b", adapters["b"])
    return bank


def _rows(bank, names: list[str | None]) -> torch.Tensor:
    return torch.tensor([bank.index(n) for n in names], dtype=torch.long)


def test_forward_rows_match_each_adapter_alone(bank, base, tokens, adapters):
    with bank.routed(_rows(bank, [None, "a", "b", "a"])):
        served = _logits(bank.model, tokens)
    _check_rows(_logits, served, base, tokens, [None, adapters["a"], adapters["b"], adapters["a"]])


def test_decode_rows_match_each_adapter_alone(bank, base, tokens, adapters):
    with bank.routed(_rows(bank, ["b", None, "a", "b"])):
        served = _decode(bank.model, tokens)
    _check_rows(_decode, served, base, tokens, [adapters["b"], None, adapters["a"], adapters["b"]])


def test_outside_routed_is_exactly_the_base(bank, base, tokens):
    assert bank.names == ("a", "b") and bank.model.state_dict().keys() == base.state_dict().keys()
    served, reference = _logits(bank.model, tokens), _logits(base, tokens)
    assert all(torch.equal(served[k], reference[k]) for k in reference)


def _hooked(model) -> set[str]:
    return {name for name, m in model.named_modules() if m._forward_hooks}


def test_unload_frees_the_slot_and_the_hooks(bank, base, tokens, adapters):
    slot_a, version = bank.index("a"), bank.version
    bank.unload("a")
    with pytest.raises(AdapterError, match=r"no adapter named 'a' is loaded \(loaded: 'b'\)"):
        bank.index("a")
    # Rows still pointing at the freed slot get the base.
    with bank.routed(torch.tensor([slot_a, bank.index("b"), 0, slot_a])):
        served = _logits(bank.model, tokens)
    _check_rows(_logits, served, base, tokens, [None, adapters["b"], None, None])
    bank.load("c", adapters["c"])
    assert bank.index("c") == slot_a and bank.names == ("b", "c")
    with bank.routed(_rows(bank, [None, "c", "b", "c"])):
        served = _logits(bank.model, tokens)
    _check_rows(_logits, served, base, tokens, [None, adapters["c"], adapters["b"], adapters["c"]])
    assert bank.version == version  # same targets: no hook came or went
    bank.unload("b")
    bank.unload("c")
    assert bank.names == () and bank.version > version and _hooked(bank.model) == set()
    served, reference = _logits(bank.model, tokens), _logits(base, tokens)
    assert all(torch.equal(served[k], reference[k]) for k in reference)
    with pytest.raises(AdapterError, match=r"no adapter named 'x' is loaded \(loaded: none\)"):
        bank.unload("x")


def test_hooks_follow_the_targets(base, tmp_path):
    bank = LoraBank(copy.deepcopy(base))
    bank.load("wo", save_random_adapter(tmp_path / "wo", seed=5, r=2, lora_alpha=2, target_modules=r".*mlp\.wo"))
    assert _hooked(bank.model) == {f"{s}.layers.{i}.mlp.wo" for s in ("transformer", "depformer") for i in (0, 1)}
    assert bank.version == 4


def test_row_count_must_match_the_batch(bank, tokens):
    with bank.routed(torch.zeros(3, dtype=torch.long)), pytest.raises(AssertionError, match=r"3 rows .* batch of 4"):
        _logits(bank.model, tokens)


def _edited(folder: Path, tmp_path: Path, **changes) -> Path:
    """A copy of `folder` with adapter_config.json fields changed."""
    out = tmp_path / "edited"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
    config = json.loads((folder / "adapter_config.json").read_text()) | changes
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


REFUSALS = {
    "same_name": (lambda ad, tmp: ("a", ad["c"]), r"as 'a': an adapter of that name is already loaded; unload it first"),
    "full": (lambda ad, tmp: ("x", ad["c"]), r"bank is full \(3 = max_adapters.* larger max_adapters"),
    "rank": (lambda ad, tmp: ("x", save_random_adapter(tmp / "r", seed=6, r=16)), r"rank 16 .*max_rank = 8.*max_rank=16"),
    "geometry": (
        lambda ad, tmp: ("x", save_random_adapter(tmp / "g", tiny_model_config(n_embd=96), seed=6, r=2)),
        r"trained for another base model",
    ),
    "dora": (lambda ad, tmp: ("x", save_random_adapter(tmp / "d", seed=6, r=2, use_dora=True)), r"DoRA .*merge this adapter"),
    "bias": (lambda ad, tmp: ("x", save_random_adapter(tmp / "lb", seed=6, r=2, lora_bias=True)), r"LoRA bias"),
    "whole_norm": (
        lambda ad, tmp: ("x", save_random_adapter(tmp / "m", seed=6, r=2, modules_to_save=["transformer.norm"])),
        r"replaces 'transformer\.norm\.weight' \(RMSNorm\) whole .*merge this adapter into the base with `load_adapter`",
    ),
    "full_tensor": (
        lambda ad, tmp: ("x", _edited(save_random_adapter(tmp / "m", seed=6, r=2, modules_to_save=["cb0_head"]), tmp,
                                      modules_to_save=None)),
        r"full tensor .*cb0_head.* does not list that module in modules_to_save",
    ),
    "embedding": (
        lambda ad, tmp: ("x", save_random_adapter(tmp / "e", seed=6, r=2, target_modules=r"transformer\.audio_embeds\.\d+")),
        r"targets 'transformer\.audio_embeds\.0', a Embedding: the engine serves LoRA on linear layers",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refused_adapter_leaves_the_bank_unchanged(bank, tokens, adapters, tmp_path, case):
    make, expected = REFUSALS[case]
    if case == "full":
        bank.load("c", adapters["c"])
    names, version, hooked = bank.names, bank.version, _hooked(bank.model)
    rows = torch.arange(4) % (len(names) + 1)
    with bank.routed(rows):
        before = _logits(bank.model, tokens)
    name, folder = make(adapters, tmp_path)
    with pytest.raises(AdapterError, match=expected) as info:
        bank.load(name, folder)
    assert str(folder) in str(info.value)
    assert (bank.names, bank.version, _hooked(bank.model)) == (names, version, hooked)
    with bank.routed(rows):
        after = _logits(bank.model, tokens)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_with_peft_layers_is_refused(base, adapters):
    model = lora_model(copy.deepcopy(base), rank=2, alpha=2).get_base_model()
    bank = LoraBank(model)
    with pytest.raises(AdapterError, match=re.escape("already carries PEFT LoRA layers")):
        bank.load("a", adapters["a"])
    assert bank.names == () and bank.version == 0


# --- new-language adapters: trained text-embedding rows and whole output heads, per row ---------


@pytest.fixture(scope="module")
def language(tokens, tmp_path_factory) -> Path:
    """Trained rows for every other text id the test grid uses: some tokens replaced, some not."""
    used = sorted(set(tokens[:, :2].flatten().tolist()))
    return save_language_adapter(tmp_path_factory.mktemp("language") / "de", 7, used[::2])


def test_language_adapter_rows_match_it_alone(base, tokens, adapters, language):
    bank = LoraBank(copy.deepcopy(base), max_adapters=3, max_rank=8)
    bank.load("a", adapters["a"])
    bank.load("de", language)
    assert _hooked(bank.model) >= {TEXT_EMBEDDING, *OUTPUT_HEADS}
    folders = {None: None, "a": adapters["a"], "de": language}
    for run, names in ((_logits, [None, "de", "a", "de"]), (_decode, ["de", "a", None, "de"])):
        with bank.routed(_rows(bank, names)):
            served = run(bank.model, tokens)
        _check_rows(run, served, base, tokens, [folders[n] for n in names])
    version = bank.version
    bank.unload("de")
    assert bank.version > version and not _hooked(bank.model) & {TEXT_EMBEDDING, *OUTPUT_HEADS}
    with bank.routed(_rows(bank, ["a", None, "a", None])):
        served = _logits(bank.model, tokens)
    _check_rows(_logits, served, base, tokens, [adapters["a"], None, adapters["a"], None])


def test_language_adapter_tokens_it_did_not_train_keep_the_base_rows(base, tokens, language):
    bank = LoraBank(copy.deepcopy(base))
    bank.load("de", language)
    embedding = bank.model.transformer.text_embed.embedding
    ids = torch.arange(embedding.num_embeddings)[None].expand(2, -1)
    with bank.routed(_rows(bank, [None, "de"])), torch.no_grad():
        rows = embedding(ids)
    trained = torch.tensor(json.loads((language / "adapter_config.json").read_text())["trainable_token_indices"][TEXT_EMBEDDING])
    kept = torch.ones(embedding.num_embeddings, dtype=torch.bool)
    kept[trained] = False
    assert torch.equal(rows[0], embedding.weight)
    assert torch.equal(rows[1, kept], embedding.weight[kept])
    assert (rows[1, trained] - embedding.weight[trained]).abs().min() > 0


def test_language_adapter_merged_equals_unmerged_and_switches_off(base, tokens, language):
    """dia2-infer's path (merged) and the live handle agree; disabled, the handle is the base."""
    merged = load_adapter(copy.deepcopy(base), language, merge=True)
    handle = load_adapter(copy.deepcopy(base), language, merge=False)
    live, folded, reference = _logits(handle.model, tokens), _logits(merged, tokens), _logits(base, tokens)
    for key in reference:  # folded weights round differently: 1e-6 of logits that reach ~20
        torch.testing.assert_close(folded[key], live[key], atol=ATOL, rtol=1e-5, msg=key)
        assert (folded[key] - reference[key]).abs().max() > 1e-3, key
    with handle.disabled():
        off = _logits(handle.model, tokens)
    assert all(torch.allclose(off[k], reference[k], atol=ATOL, rtol=0) for k in reference)
    trained = json.loads((language / "adapter_config.json").read_text())["trainable_token_indices"][TEXT_EMBEDDING]
    kept = torch.ones(base.config.data.text_vocab_size, dtype=torch.bool)
    kept[trained] = False
    weight, base_weight = merged.transformer.text_embed.embedding.weight, base.transformer.text_embed.embedding.weight
    assert torch.equal(weight[kept], base_weight[kept]) and not torch.equal(weight[~kept], base_weight[~kept])
    for head in ("action_head", "cb0_head"):
        assert not torch.equal(getattr(merged.transformer, head).weight, getattr(base.transformer, head).weight)
