import pytest
import torch

from dia2.generation.sampling import SamplingConfig, guide, guided_sample, sample


def test_top_k_1_is_greedy_and_temperature_zero_is_argmax():
    torch.manual_seed(0)
    logits = torch.randn(64, 100)
    for cfg in (SamplingConfig(temperature=1.5, top_k=1), SamplingConfig(temperature=0.0, top_k=50)):
        assert torch.equal(sample(logits, cfg), logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_respects_top_k():
    logits = torch.randn(200, 50, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=1.0, top_k=5)
    a = sample(logits, cfg, torch.Generator().manual_seed(7))
    b = sample(logits, cfg, torch.Generator().manual_seed(7))
    c = sample(logits, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    top5 = logits.topk(5, dim=-1).indices
    assert (top5 == a[:, None]).any(-1).all()


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-9]])).repeat(20000, 1)
    draws = sample(logits, SamplingConfig(temperature=1.0, top_k=0), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.015, rtol=0)


def test_cfg_allowed_set_comes_from_guided_logits_but_sampling_from_conditional():
    cond = torch.tensor([5.0, 4.0, 0.0, -1.0])
    uncond = torch.tensor([6.0, 0.0, 0.0, 0.0])
    # guided = uncond + 3 * (cond - uncond) = [3, 12, 0, -3]: top-2 allowed = {1, 0}
    masked = guide(cond, uncond, scale=3.0, filter_k=2)
    assert torch.equal(masked, torch.tensor([5.0, 4.0, float("-inf"), float("-inf")]))
    # top-1 allowed = {1}: the greedy draw takes token 1 although cond prefers 0.
    greedy = SamplingConfig(temperature=0.0)
    assert guided_sample(torch.stack([cond, uncond]), greedy, cfg_scale=3.0, filter_k=1).item() == 1
    # No unconditional branch (scale 1): plain conditional sampling.
    assert guided_sample(cond[None], greedy, cfg_scale=1.0, filter_k=1).item() == 0


def test_banned_tokens_are_never_drawn_even_with_cfg():
    logits = torch.zeros(2, 10)
    logits[:, 8:] = 50.0  # bos/pad would win if not banned
    for _ in range(20):
        tok = guided_sample(logits, SamplingConfig(1.0, 0), cfg_scale=2.0, filter_k=5, banned=torch.tensor([8, 9]))
        assert tok.item() < 8
    greedy = guided_sample(logits, SamplingConfig(0.0, 50), cfg_scale=2.0, filter_k=5, banned=torch.tensor([8, 9]))
    assert greedy.item() < 8


def test_bad_sampling_config():
    with pytest.raises(ValueError, match="top_k must be an integer"):
        SamplingConfig(temperature=1.0, top_k=2.5)
    with pytest.raises(ValueError, match="NaN"):
        SamplingConfig(temperature=float("nan"))
