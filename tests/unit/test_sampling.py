"""dia2.generation.sampling: per-row settings, CFG, and counter-keyed draws."""

import pytest
import torch

from dia2.generation.sampling import KEEP_ALL, RowSampling, SamplingConfig, draw, uniform


def _draw(logits, config, seed=0, counter=0, uncond=None, scale=1.0, filter_k=50, banned=None):
    """Each row of logits [R, V] drawn with the same settings and seed, counters counter + row."""
    R, V = logits.shape
    params = RowSampling.of([(config, scale, filter_k)] * R, V, "cpu")
    seeds = torch.full((R,), seed, dtype=torch.long)
    counters = counter + torch.arange(R)
    return draw(logits, logits if uncond is None else uncond, params, seeds, counters, banned)


def test_top_k_1_is_greedy_and_temperature_zero_is_argmax():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    for cfg in (SamplingConfig(temperature=1.5, top_k=1), SamplingConfig(temperature=0.0, top_k=50)):
        assert torch.equal(_draw(logits, cfg), logits.argmax(-1))


def test_seeded_draws_are_reproducible_and_respect_top_k():
    logits = torch.randn(200, 50, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=1.0, top_k=5)
    a, b = _draw(logits, cfg, seed=7), _draw(logits, cfg, seed=7)
    c, d = _draw(logits, cfg, seed=8), _draw(logits, cfg, seed=7, counter=1000)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    top5 = logits.topk(5, dim=-1).indices
    assert (top5 == a[:, None]).any(-1).all()


def test_draws_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-9]])).repeat(20000, 1)
    draws = _draw(logits, SamplingConfig(temperature=1.0, top_k=0), seed=3)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.015, rtol=0)
    # Temperature 2 flattens it: p ~ sqrt(p) renormalised.
    draws = _draw(logits, SamplingConfig(temperature=2.0, top_k=0), seed=4)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    expected = torch.tensor([0.7, 0.2, 0.1, 1e-9]).sqrt()
    torch.testing.assert_close(freq, expected / expected.sum(), atol=0.015, rtol=0)


def test_noise_is_uniform_and_the_hash_is_exact():
    u = uniform(torch.tensor([0, 1, 2**40 + 5]), torch.tensor([0, 99, 7]), torch.arange(4096).expand(3, -1))
    assert u.shape == (3, 4096) and (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert (u[0] != u[1]).float().mean() > 0.99  # other seeds and counters: other noise

    def mix(x: int) -> int:  # lowbias32 in plain Python integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    seed, counter, column = 2**40 + 5, 7, 123
    key = mix((seed & 0xFFFFFFFF) ^ mix((seed >> 32) ^ mix(counter)))
    bits = mix(key ^ ((column * 0x9E3779B9) & 0xFFFFFFFF))
    assert u[2, column].item() == ((bits >> 9) + 0.5) / 2**23
    # The noise of a token does not depend on which other tokens are asked for.
    some = uniform(torch.tensor([2**40 + 5]), torch.tensor([7]), torch.tensor([[5, column, 9]]))
    assert some[0, 1].item() == u[2, column].item()


def test_a_row_draws_the_same_whatever_shares_its_batch():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(5, 300, generator=g), torch.randn(5, 300, generator=g)
    settings = [
        (SamplingConfig(0.8, 50), 2.0, 50),
        (SamplingConfig(1.0, 0), 1.0, 50),
        (SamplingConfig(0.0, 50), 3.0, 10),
        (SamplingConfig(0.6, 5), 1.0, 50),
        (SamplingConfig(1.2, 300), 1.5, 299),
    ]
    uncond = torch.where(torch.tensor([s[1] == 1.0 for s in settings])[:, None], cond, uncond)
    seeds, counters = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([10, 20, 30, 40, 50])
    batch = draw(cond, uncond, RowSampling.of(settings, 300, "cpu"), seeds, counters)
    for r, setting in enumerate(settings):
        alone = draw(cond[r : r + 1], uncond[r : r + 1], RowSampling.of([setting], 300, "cpu"), seeds[r : r + 1], counters[r : r + 1])
        assert torch.equal(alone, batch[r : r + 1]), r
    # A fixed width (CUDA graphs) finds the same k-th entries.
    wide = RowSampling.of(settings, 300, "cpu", width=300)
    assert torch.equal(draw(cond, uncond, wide, seeds, counters), batch)


def test_cfg_allowed_set_comes_from_guided_logits_but_sampling_from_conditional():
    cond = torch.tensor([[5.0, 4.0, 0.0, -1.0]])
    uncond = torch.tensor([[6.0, 0.0, 0.0, 0.0]])
    greedy = SamplingConfig(temperature=0.0)
    # guided = uncond + 3 * (cond - uncond) = [3, 12, 0, -3]: top-1 allowed = {1}: the greedy
    # draw takes token 1 although cond prefers 0; top-2 allowed = {1, 0}: it takes 0.
    assert _draw(cond, greedy, uncond=uncond, scale=3.0, filter_k=1).item() == 1
    assert _draw(cond, greedy, uncond=uncond, scale=3.0, filter_k=2).item() == 0
    # Sampling only ever draws inside the allowed set.
    many = cond.repeat(500, 1)
    draws = _draw(many, SamplingConfig(5.0, 0), uncond=uncond.repeat(500, 1), scale=3.0, filter_k=2)
    assert set(draws.tolist()) == {0, 1}
    # No guidance (scale 1, uncond = cond): every token may be drawn.
    assert set(_draw(many, SamplingConfig(50.0, 0), scale=1.0, filter_k=1).tolist()) == {0, 1, 2, 3}


def test_banned_tokens_are_never_drawn_even_with_cfg():
    logits = torch.zeros(20, 10)
    logits[:, 8:] = 50.0  # bos/pad would win if not banned
    banned = torch.tensor([8, 9])
    assert (_draw(logits, SamplingConfig(1.0, 0), uncond=logits, scale=2.0, filter_k=5, banned=banned) < 8).all()
    assert (_draw(logits, SamplingConfig(0.0, 50), uncond=logits, scale=2.0, filter_k=5, banned=banned) < 8).all()


def test_keep_all_settings():
    params = RowSampling.of([(SamplingConfig(1.0, 0), 1.0, 50), (SamplingConfig(1.0, 7), 2.0, 999)], 100, "cpu")
    assert params.top_k.tolist() == [KEEP_ALL, 7] and params.filter_k.tolist() == [KEEP_ALL, KEEP_ALL]
    assert params.width == 100, "a row that keeps every token is drawn over the whole vocabulary"
    guided = RowSampling.of([(SamplingConfig(1.0, 0), 2.0, 20), (SamplingConfig(1.0, 7), 1.0, 50)], 100, "cpu")
    assert guided.width == 20


def test_bad_sampling_config():
    with pytest.raises(ValueError, match="top_k must be an integer"):
        SamplingConfig(temperature=1.0, top_k=2.5)
    with pytest.raises(ValueError, match="NaN"):
        SamplingConfig(temperature=float("nan"))
