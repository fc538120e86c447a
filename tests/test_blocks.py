"""Every registered block builds, runs forward and backward, and keeps its documented shape;
LightViT offers timm's model surface."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch

import search_spaces  # noqa: F401 - registers lightvit
from search_spaces.arch import (
    ATTENTION_POS_ENCS,
    INPUT_POS_ENCS,
    POS_ATTENTION_MIXERS,
    POS_ENC_SPECS,
    STAGE_POS_ENCS,
    STEM_SPECS,
    ArchConfig,
    StageConfig,
)
from search_spaces.blocks import MIXERS, POS_ENCODINGS, REGISTRIES, STEMS
from search_spaces.model import LightViT


def test_registries_hold_the_first_blocks() -> None:
    assert set(STEMS) >= {"patch", "conv"}
    assert set(POS_ENCODINGS) >= {"none", "learned", "cpe"}
    assert set(MIXERS) >= {"mhsa", "pool"}


def test_every_block_cites_its_paper_or_says_why_not() -> None:
    for registry in REGISTRIES.values():
        for name, cls in registry.items():
            doc = cls.__doc__ or ""
            assert "arXiv" in doc or name == "none", f"{name}: no paper cited"


@pytest.mark.parametrize("name", sorted(STEMS))
@pytest.mark.parametrize(("img", "patch"), [(16, 2), (32, 4)])
def test_stem_forward_backward(name: str, img: int, patch: int) -> None:
    stem = STEMS[name](3, 24, patch, img)
    x = torch.randn(2, 3, img, img, requires_grad=True)
    y = stem(x)
    assert y.shape == (2, 24, img // patch, img // patch)
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None


SITES = {name: spec.site for name, spec in POS_ENC_SPECS.items()}
MIXER_OPTIONS = {"sra": {"sr_ratio": 2}, "window": {"window": 2}, "dwconv": {"kernel_size": 5}}
MIXER_OPTIONS["shift"] = {"shift_div": 8}
MIXER_OPTIONS["mobileformer"] = {"global_tokens": 3}


def test_pos_enc_sites_match_the_arch_rules() -> None:
    """`POS_ENC_SPECS` has one row per registered encoding; those it puts inside attention are
    attention-site modules (rotation and bias), the others map tokens to tokens."""
    from search_spaces.blocks.pos_enc import AttentionPosEnc

    assert set(POS_ENC_SPECS) == set(POS_ENCODINGS)
    assert set(STEM_SPECS) == set(STEMS)
    for name, cls in POS_ENCODINGS.items():
        assert issubclass(cls, AttentionPosEnc) == (SITES[name] == "attention"), name
    for name, spec in POS_ENC_SPECS.items():  # the head-width rule is what the block needs
        if spec.head_multiple > 1:
            with pytest.raises(ValueError, match="head width divisible by"):
                POS_ENCODINGS[name](24, (4, 4), 4)  # head width 6
    assert {n for n, s in SITES.items() if s == "input"} == set(INPUT_POS_ENCS)
    assert {n for n, s in SITES.items() if s == "stage"} == set(STAGE_POS_ENCS)
    assert {n for n, s in SITES.items() if s == "attention"} == set(ATTENTION_POS_ENCS)
    for name in POS_ATTENTION_MIXERS:
        assert MIXERS[name].accepts_pos


@pytest.mark.parametrize("name", sorted(n for n, s in SITES.items() if s != "attention"))
@pytest.mark.parametrize("hw", [(4, 4), (6, 6)])  # (6, 6): a resolution it was not built for
def test_token_pos_enc_forward_backward(name: str, hw: tuple[int, int]) -> None:
    block = POS_ENCODINGS[name](16, (4, 4), 2)
    x = torch.randn(2, hw[0] * hw[1], 16, requires_grad=True)
    y = block(x, hw)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None


@pytest.mark.parametrize("name", sorted(n for n, s in SITES.items() if s == "attention"))
@pytest.mark.parametrize("hw", [(4, 4), (6, 6)])
def test_attention_pos_enc_inside_attention(name: str, hw: tuple[int, int]) -> None:
    mixer = MIXERS["mhsa"](16, 2, grid=(4, 4), pos_layer=POS_ENCODINGS[name])
    assert mixer.pos is not None
    x = torch.randn(2, hw[0] * hw[1], 16, requires_grad=True)
    y = mixer(x, hw)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None
    bias = mixer.pos.bias(hw)
    assert bias is None or bias.shape == (2, hw[0] * hw[1], hw[0] * hw[1])
    assert all(p.grad is not None for p in mixer.pos.parameters())


@pytest.mark.parametrize("name", ["rope_axial", "rope_mixed", "unitary"])
def test_rope_logits_depend_only_on_the_offset(name: str) -> None:
    rope = POS_ENCODINGS[name](16, (5, 5), 2)
    hw = (5, 5)
    n = hw[0] * hw[1]
    q = torch.randn(1, 2, 1, 8).expand(1, 2, n, 8)  # the same query and key at every position
    k = torch.randn(1, 2, 1, 8).expand(1, 2, n, 8)
    rq, rk = rope.rotate(q, k, hw)
    logits = (rq @ rk.transpose(-2, -1))[0]  # (heads, N, N)
    coords = [(i // 5, i % 5) for i in range(n)]
    by_offset: dict[tuple[int, int], torch.Tensor] = {}
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            offset = (yi - yj, xi - xj)
            if offset in by_offset:
                assert torch.allclose(logits[:, i, j], by_offset[offset], atol=1e-5)
            else:
                by_offset[offset] = logits[:, i, j]
    assert len({tuple(v.tolist()) for v in by_offset.values()}) > 1  # it does depend on offset


def test_unitary_encoding_keeps_norms_and_is_rope_axial_when_its_basis_is_the_identity() -> None:
    """LRPE's unitary family (arXiv 2307.09270): M_s = P Lambda_s P^T preserves every query's
    and key's norm, and with P = I (two equal Householder reflections cancel) it is RoPE-Axial;
    with a learned P it is not."""
    torch.manual_seed(0)
    unitary = POS_ENCODINGS["unitary"](16, (5, 5), 2)
    rope = POS_ENCODINGS["rope_axial"](16, (5, 5), 2)
    q, k = torch.randn(2, 2, 25, 8), torch.randn(2, 2, 25, 8)
    uq, uk = unitary.rotate(q, k, (5, 5))
    assert torch.allclose(uq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.allclose(uk.norm(dim=-1), k.norm(dim=-1), atol=1e-5)
    rq, rk = rope.rotate(q, k, (5, 5))
    assert not torch.allclose(uq, rq, atol=1e-3)
    with torch.no_grad():
        unitary.householder[:, 1] = unitary.householder[:, 0]  # H H = I
    uq, uk = unitary.rotate(q, k, (5, 5))
    assert torch.allclose(uq, rq, atol=1e-5) and torch.allclose(uk, rk, atol=1e-5)


def test_posmlp_mixing_depends_on_relative_offsets_only() -> None:
    """PosMLP's positional gating unit (arXiv 2207.07284): the logits of its token-mixing
    weights are a function of pos_n - pos_m alone, and with a local kernel the whole unit is
    translation-equivariant away from the borders."""
    torch.manual_seed(0)
    unit = POS_ENCODINGS["posmlp"](8, (10, 10), groups=2)
    scores = unit.scores((10, 10))  # (groups, N, N)
    coords = [(i // 10, i % 10) for i in range(100)]
    by_offset: dict[tuple[int, int], torch.Tensor] = {}
    for m, (ym, xm) in enumerate(coords):
        for n, (yn, xn) in enumerate(coords):
            offset = (yn - ym, xn - xm)
            if offset in by_offset:
                assert torch.allclose(scores[:, m, n], by_offset[offset], atol=1e-5)
            else:
                by_offset[offset] = scores[:, m, n]
    assert len({tuple(v.tolist()) for v in by_offset.values()}) > 1
    with torch.no_grad():
        unit.spreads.copy_(2 * torch.eye(2).repeat(2, 1, 1))  # a narrow kernel: weight e^-2|d|^2
        unit.centres.zero_()
    grid = torch.randn(1, 10, 10, 8)
    shifted = grid.roll(shifts=1, dims=2)  # one token to the right

    def run(g: torch.Tensor) -> torch.Tensor:
        return unit(g.reshape(1, 100, 8), (10, 10)).reshape(1, 10, 10, 8)

    with torch.no_grad():
        expected, got = run(grid).roll(shifts=1, dims=2), run(shifted)
    assert torch.allclose(got[:, 3:-3, 4:-3], expected[:, 3:-3, 4:-3], atol=1e-4)


@pytest.mark.parametrize("hw", [(4, 4), (5, 6), (7, 3)])
def test_lisa_fft_form_matches_its_direct_form(hw: tuple[int, int]) -> None:
    """LiSA (arXiv 2211.16289): the FFT form (log-linear) computes what the direct N x N
    Toeplitz form computes, within 1e-4, also on a grid the mixer was not built for."""
    torch.manual_seed(0)
    mixer = MIXERS["lisa"](16, 2, grid=(4, 4)).eval()
    x = torch.randn(2, hw[0] * hw[1], 16)
    with torch.no_grad():
        mixer.fft = True
        fast = mixer(x, hw)
        mixer.fft = False
        direct = mixer(x, hw)
    assert torch.allclose(fast, direct, atol=1e-4) and direct.abs().max() > 1e-2


def test_lisa_is_translation_equivariant_away_from_the_borders() -> None:
    """Its kernels are functions of the offset p_j - p_i and its coefficients of each token's
    own content, so with patterns that reach one token a shifted input gives the shifted output
    away from the borders."""
    torch.manual_seed(0)
    mixer = MIXERS["lisa"](8, 2, grid=(9, 9), fft=False).eval()
    with torch.no_grad():
        centre = mixer.table[..., 7:10, 7:10].clone()  # offsets -1..1 of a 17 x 17 table
        mixer.table.zero_()
        mixer.table[..., 7:10, 7:10] = centre
    grid = torch.randn(1, 9, 9, 8)
    shifted = grid.roll(shifts=1, dims=2)

    def run(g: torch.Tensor) -> torch.Tensor:
        return mixer(g.reshape(1, 81, 8), (9, 9)).reshape(1, 9, 9, 8)

    with torch.no_grad():
        expected, got = run(grid).roll(shifts=1, dims=2), run(shifted)
    assert torch.allclose(got[:, 1:-1, 2:-1], expected[:, 1:-1, 2:-1], atol=1e-5)
    assert not torch.allclose(got, expected, atol=1e-5)  # the borders do differ


def test_mobile_former_local_path_is_the_inverted_bottleneck_without_its_bridges() -> None:
    """Mobile-Former (arXiv 2108.05895): with the Former->Mobile bridge's output zeroed, the
    grid's update is the plain inverted bottleneck (expand, depthwise 3x3, project), whatever
    the global tokens; with it, the global tokens reach the grid; and the tokens the stage
    starts with are carried through its blocks."""
    torch.manual_seed(0)
    mixer = MIXERS["mobileformer"](16, 2, grid=(4, 4), global_tokens=3).eval()
    x, z = torch.randn(2, 16, 16), torch.randn(2, 3, 16)
    bottleneck = mixer.bottleneck
    with torch.no_grad():
        plain = bottleneck(x.transpose(1, 2).reshape(2, 16, 4, 4)).flatten(2).transpose(1, 2)
        joined, z_out = mixer(x, (4, 4), None, z)
        assert not torch.allclose(joined, plain, atol=1e-4)  # the global tokens do reach it
        assert z_out.shape == z.shape and not torch.allclose(z_out, z)
        mixer.to_mobile_kv.weight.zero_()
        mixer.to_mobile_kv.bias.zero_()
        for other in (z, torch.randn(2, 3, 16)):
            alone, _ = mixer(x, (4, 4), None, other)
            assert torch.allclose(alone, plain, atol=1e-6)
    with pytest.raises(ValueError, match="global tokens"):
        mixer(x, (4, 4))
    arch = ArchConfig(
        stages=(StageConfig(depth=2, dim=16, heads=2, mixer="mobileformer", global_tokens=3),),
        img_size=16,
        num_classes=3,
    )
    model = LightViT(arch).eval()
    images = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(images)
        model.stages[0].carry.add_(1.0)  # the stage's learned start of the global tokens
        assert not torch.allclose(model(images), before)


def test_cpe_is_translation_equivariant_away_from_the_borders() -> None:
    cpe = POS_ENCODINGS["cpe"](8, (8, 8))
    grid = torch.randn(1, 8, 8, 8)  # (B, C, H, W)
    shifted = grid.roll(shifts=1, dims=3)  # one token to the right

    def run(g: torch.Tensor) -> torch.Tensor:
        out = cpe(g.flatten(2).transpose(1, 2), (8, 8))
        return out.transpose(1, 2).reshape(1, 8, 8, 8)

    with torch.no_grad():
        expected = run(grid).roll(shifts=1, dims=3)
        got = run(shifted)
    # interior: away from the wrapped column and the zero-padded border
    assert torch.allclose(got[..., 1:-1, 2:-1], expected[..., 1:-1, 2:-1], atol=1e-6)
    assert not torch.allclose(got, expected, atol=1e-6)  # the borders do differ


@pytest.mark.parametrize("name", sorted(MIXERS))
@pytest.mark.parametrize("hw", [(4, 4), (6, 6)])
def test_mixer_forward_backward(name: str, hw: tuple[int, int]) -> None:
    from search_spaces.arch import MIXER_SPECS

    block = MIXERS[name](16, 2, grid=(4, 4), **MIXER_OPTIONS.get(name, {}))
    x = torch.randn(2, hw[0] * hw[1], 16, requires_grad=True)
    if MIXER_SPECS[name].carries:  # Mobile-Former: the global tokens come and go with it
        y, _ = block(x, hw, None, torch.randn(2, 3, 16))
    else:
        y = block(x, hw)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None


def test_pooling_mixer_is_zero_on_a_constant_grid() -> None:
    """PoolFormer's mixer returns pool(x) - x: nothing to mix in a constant image."""
    x = torch.ones(1, 16, 8)
    assert MIXERS["pool"](8)(x, (4, 4)).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("stem", "pos_enc", "mixer"), list(itertools.product(STEMS, POS_ENCODINGS, MIXERS))
)
def test_every_combination_builds_a_model(stem: str, pos_enc: str, mixer: str) -> None:
    first = StageConfig(1, 16, 2, 2.0, mixer, **MIXER_OPTIONS.get(mixer, {}))
    arch = ArchConfig(
        stages=(first, StageConfig(1, 24, 2, 2.0, "mhsa", downsample=True)),
        stem=stem,
        pos_enc=pos_enc,
        img_size=16,
        patch_size=2,
        num_classes=5,
    )
    model = LightViT(arch)
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_timm_surface() -> None:
    arch = ArchConfig(
        stages=(StageConfig(2, 32, 2, 2.0, "mhsa"),),
        pos_enc="learned",
        img_size=16,
        patch_size=4,
        num_classes=7,
    )
    model = timm.create_model("lightvit", arch=arch.to_dict())
    assert isinstance(model, LightViT) and model.arch == arch
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    assert feats.shape == (2, 16, 32)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    assert model.forward_head(feats).shape == (2, 7)
    assert model.get_classifier() is model.head
    assert model.no_weight_decay() == {"pos_enc.pos_embed"}
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.arch.num_classes == 3
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)
    assert model.pretrained_cfg["num_classes"] == 7  # the config of the weights, not the head


def test_timm_kwargs_override_the_arch() -> None:
    arch = ArchConfig(stages=(StageConfig(1, 16, 1, 2.0, "pool"),), img_size=16, patch_size=4)
    model = timm.create_model("lightvit", arch=arch.to_json(), num_classes=4, in_chans=1)
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 4)
    assert model.arch.in_chans == 1 and model.arch.num_classes == 4


def test_learned_pos_enc_resamples_to_a_new_resolution() -> None:
    arch = ArchConfig(
        stages=(StageConfig(1, 16, 2, 2.0, "mhsa"),), pos_enc="learned", img_size=16, patch_size=4
    )
    assert LightViT(arch)(torch.randn(1, 3, 24, 24)).shape == (1, 10)


def test_every_block_cites_its_paper_and_model_cards_list_them() -> None:
    from search_spaces.blocks import REGISTRIES, citations, papers_of

    for family, registry in REGISTRIES.items():
        for name, cls in registry.items():
            if (family, name) != ("pos_enc", "none"):
                assert citations(cls), f"{family} '{name}' cites no paper (title, arXiv id)"
    arch = ArchConfig(
        stages=(StageConfig(2, 32, 2, 2.0, "window", window=2), StageConfig(1, 32, 2, 2.0)),
        stem="overlap",
        pos_enc="rel_bias",
        img_size=16,
        exits=(1,),
    )
    ids = [arxiv for _, _, arxiv in papers_of(arch)]
    assert ids[:2] == ["2103.15808", "2106.13797"] and len(ids) == len(set(ids))
    assert "1706.03762" in ids and "1709.01686" in ids


def test_one_table_describes_every_mixer() -> None:
    """`MIXER_SPECS` has one row per registered mixer, and what it says holds: a mixer with an
    option builds with it and shows it in architecture lines; the derived sets agree."""
    from search_spaces.arch import (
        ATTENTION_MIXERS,
        GRID_FREE_MIXERS,
        MIXER_OPTIONS,
        MIXER_SPECS,
        POS_ATTENTION_MIXERS,
        mixer_label,
    )
    from search_spaces.blocks import MIXERS

    assert set(MIXER_SPECS) == set(MIXERS)
    assert ATTENTION_MIXERS == {m for m, s in MIXER_SPECS.items() if s.attention}
    assert POS_ATTENTION_MIXERS <= ATTENTION_MIXERS and GRID_FREE_MIXERS <= ATTENTION_MIXERS
    assert set(MIXER_OPTIONS) == {
        "sr_ratio",
        "window",
        "kernel_size",
        "shift_div",
        "global_tokens",
    }
    values = {"sr_ratio": 2, "window": 2, "kernel_size": 5, "shift_div": 8, "global_tokens": 3}
    for name, spec in MIXER_SPECS.items():
        stage = StageConfig(
            depth=1,
            dim=32,
            heads=2 if spec.attention else 1,
            mixer=name,
            **({spec.option: values[spec.option]} if spec.option else {}),
        )
        arch = ArchConfig(stages=(stage,), img_size=16, patch_size=4, num_classes=3)
        want = f"{name}/{values[spec.option]}" if spec.option else name
        assert mixer_label(stage) == want and f"[{want} 1x32" in arch.describe()
        assert LightViT(arch)(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
        if spec.option:  # the values spaces offer are valid, and fit the grids they can run on
            assert spec.choices and all(spec.fit_option(v, 8, 32) == v for v in spec.choices)


def test_shift_mixer_moves_four_channel_groups_by_one_token_and_nothing_else() -> None:
    """ShiftViT's shift (arXiv 2201.10801): no parameters; with `shift_div` n, four groups of
    dim // n channels move one token left, right, up and down (zeros fill the vacated edge,
    values pushed off the grid are dropped), and every other channel passes unchanged."""
    dim, n, h, w = 24, 12, 5, 6
    mixer = MIXERS["shift"](dim, grid=(h, w), shift_div=n)
    assert sum(p.numel() for p in mixer.parameters()) == 0
    x = torch.randn(2, h * w, dim)
    out = mixer(x, (h, w)).reshape(2, h, w, dim)
    grid, g = x.reshape(2, h, w, dim), dim // n
    assert torch.equal(out[:, :, :-1, :g], grid[:, :, 1:, :g])  # left
    assert torch.equal(out[:, :, 1:, g : 2 * g], grid[:, :, :-1, g : 2 * g])  # right
    assert torch.equal(out[:, :-1, :, 2 * g : 3 * g], grid[:, 1:, :, 2 * g : 3 * g])  # up
    assert torch.equal(out[:, 1:, :, 3 * g : 4 * g], grid[:, :-1, :, 3 * g : 4 * g])  # down
    assert not out[:, :, -1, :g].any() and not out[:, :, 0, g : 2 * g].any()
    assert not out[:, -1, :, 2 * g : 3 * g].any() and not out[:, 0, :, 3 * g : 4 * g].any()
    assert torch.equal(out[..., 4 * g :], grid[..., 4 * g :])
    # the paper's default: a third of the channels move
    assert 4 * MIXERS["shift"](96, grid=(4, 4)).group == 96 // 3


def test_shift_block_is_the_papers_block_without_norm_or_residual_around_the_shift() -> None:
    """ShiftViT's block: `z = shift(x)`, then `z + mlp(norm(z))`: the shift replaces the
    attention branch (no LayerNorm before it, no identity added)."""
    from search_spaces.model import Block

    torch.manual_seed(0)
    cfg = StageConfig(depth=1, dim=24, mixer="shift", shift_div=6)
    block = Block(cfg, (4, 4), None).eval()
    assert not any("norm1" in name for name, _ in block.named_parameters())
    x = torch.randn(2, 16, 24)
    z = block.mixer(x, (4, 4))
    out, _ = block(x, (4, 4), None)
    assert torch.allclose(out, z + block.mlp(block.norm2(z)), atol=1e-6)


def test_configs_that_use_no_new_field_are_written_in_the_schema_they_had() -> None:
    """Schema 4 added `shift_div`: it is written only where set, and a config is written in
    the oldest schema that holds it, so existing architectures keep their JSON (and hashes)."""
    plain = ArchConfig(stages=(StageConfig(depth=1, dim=32, mixer="pool"),), img_size=16)
    data = plain.to_dict()
    assert data["schema_version"] == 3 and "shift_div" not in data["stages"][0]
    shifted = ArchConfig(stages=(StageConfig(depth=1, dim=32, mixer="shift", shift_div=8),))
    data = shifted.to_dict()
    assert data["schema_version"] == 4 and data["stages"][0]["shift_div"] == 8
    for arch in (plain, shifted):
        assert ArchConfig.from_json(arch.to_json()) == arch
    with pytest.raises(ValueError, match="shift needs 4 <= shift_div <= dim"):
        StageConfig(depth=1, dim=32, mixer="shift")


@pytest.mark.parametrize("kernel", [3, 7])
def test_depthwise_conv_mixer_sees_only_its_k_by_k_neighbourhood(kernel: int) -> None:
    """A depthwise k x k convolution (RepViT, ConvNeXt): changing one token changes the output
    only within k // 2 rows and columns of it, and channel by channel."""
    torch.manual_seed(0)
    mixer = MIXERS["dwconv"](8, grid=(9, 9), kernel_size=kernel).eval()
    x = torch.randn(1, 81, 8)
    y = x.clone()
    y[0, 4 * 9 + 4, 3] += 1.0  # the centre token, channel 3
    with torch.no_grad():
        changed = (mixer(y, (9, 9)) - mixer(x, (9, 9))).abs().reshape(9, 9, 8) > 1e-6
    r = kernel // 2
    rows, cols, chans = changed.nonzero(as_tuple=True)
    assert changed.any() and set(chans.tolist()) == {3}
    assert (rows - 4).abs().max() <= r and (cols - 4).abs().max() <= r
    assert changed[4 - r, 4 - r, 3] and changed[4 + r, 4 + r, 3]  # the whole window
