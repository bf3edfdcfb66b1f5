"""TiO-Depth training losses (tiodepth_jax.losses, spec §5).

Fixture parity on every TiO-Depth set found in $TIODEPTH_FIXTURES (../shared/fixtures/README.md; test ids name
the set), whatever its sizes, batch and storage (whole, sampled or alias):
* every loss map `train/loss/<term>/<side>` and value `train/loss/<side>/<term>-value` of the three groups, and the
  group totals, computed from OUR stage outputs (tests.parity_tio.train_outputs);
* the loss functions alone on the reference's own inputs where they are stored whole (separates loss errors from
  upstream errors); an input stored only sampled is replaced by our own stage output, and the result is then held
  to the from-our-outputs tolerance;
* Stereo_photo also where no flip of the visibility (occlusion and in-view masks) reaches the 3x3 SSIM window.
Plus analytic checks (SSIM of identical images, KL of equal volumes, confidence of one-hot targets, finite
gradients, the thresholded L1's zero gradient, jit) and the yaml -> LossTerm path.
Run with -s to see the measured errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.parity import Comparison, FixtureSet, nchw, tio_params
from tests.parity_tio import OCC_MARGIN, in_view_decided
from tiodepth_jax.losses import (TRAINING_LOSSES, LossTerm, cost_confidence, cost_loss, evaluate_terms, grad_loss,
                                 photo_loss, smooth_loss, ssim, terms_from_config)
from tiodepth_jax.ops.geometry import fused_target, occlusion_mask_downscaled

# The fork's loss groups: their training stage and loss side (a set's `training.stages` must agree).
SIDES = {"param_group1": "o", "param_group2": "s", "param_group3": "s"}
STAGES = {"param_group1": "stage1", "param_group2": "stage2", "param_group3": "stage3"}
# Stereo_gui2 (masked by inv_edge_mask_s) and Stereo_photo (whose target fused_occ_color_s is the colour where
# visible, V = occlusion x in view) follow the visibility masks, whose rows 0 and H-1 follow the last bits of the
# mono depth (tests.parity_tio.IN_VIEW: in tio_dinov2b 353 of the 797 row pixels whose depth differs flip, with
# PyTorch's own arithmetic). Both maps are compared on every row, twice: with our masks (Stereo_gui2 within its
# fixtures-README tolerance, 10 x its sensitivity; Stereo_photo within STEREO_PHOTO_TOL), and, where the reference's
# masks are stored whole, evaluated on our stage outputs with the reference's masks, within the tolerances of the
# other loss maps (Stereo_gui2: 10 x its sensitivity without rows 0 and H-1; Stereo_photo: 1e-3) and the values
# within 1e-3; the share of the difference with our masks that the flipped pixels hold is printed.
VISIBILITY_TERMS = ("Stereo_photo", "Stereo_gui2")
VALUE_TOL = {"Stereo_gui2": 3e-2}  # with our mask: fixtures README tolerances table (the flips move it 5.1e-3)
MAP_TOL = {"Refine_hints": 1e-2}
# Stereo_photo follows the visibility flips: its recorded sensitivity (rel L2 3.3e-2 whole, 2.3e-2 without rows 0
# and H-1 in tio_dinov2b) is the size of the differences to expect, so it is the bound (no x10).
STEREO_PHOTO_TOL = 5e-2
# The loss functions alone on the reference's own inputs: only float32 rounding differs.
ISOLATED_TOL = 1e-5


@pytest.fixture(scope="module", params=tio_params())
def fs(request) -> FixtureSet:
    return request.param


def _groups(fs) -> dict:
    """{param_group: (stage, side)} of the set's training forward (checked against the fork's table)."""
    stages = fs.meta.get("training", {}).get("stages") or {}
    got = {v["param_group"]: (k, v["loss_sides"][0]) for k, v in stages.items()} or \
        {g: (STAGES[g], SIDES[g]) for g in TRAINING_LOSSES}
    assert all(got[g] == (STAGES[g], SIDES[g]) for g in got), f"{fs.name}: training stages {got}"
    return {g: got[g] for g in TRAINING_LOSSES if g in got}


@pytest.fixture(scope="module")
def computed(fs):
    """Our stage outputs, the batch, and every group's (total, values, maps) from them."""
    from tests.parity_tio import inputs, train_outputs

    outs = train_outputs(fs)
    batch = inputs(fs, fs.train_size())
    groups = {}
    for g, (stage, _) in _groups(fs).items():
        run = jax.jit(functools.partial(evaluate_terms, TRAINING_LOSSES[g]))
        groups[g] = jax.device_get(run(outs[stage], batch))
    return outs, batch, groups


@pytest.fixture(scope="module")
def reference_masks(fs, computed):
    """(values, maps) of VISIBILITY_TERMS on our stage-2 outputs with the reference's inv_edge_mask_s and
    visibility (1 - invalid_mask_s) in place of ours; None unless both are stored whole."""
    outs, batch, _ = computed
    s2 = "train/stage2/"
    if "param_group2" not in _groups(fs) or not all(fs.is_whole(s2 + k) for k in ("inv_edge_mask_s",
                                                                                    "invalid_mask_s")):
        return None
    terms = tuple(t for t in TRAINING_LOSSES["param_group2"] if t.name in VISIBILITY_TERMS)

    @jax.jit
    def run(stage2, batch, inv_edge, visible):
        stage2 = dict(stage2, inv_edge_mask_s=inv_edge)
        stage2["fused_occ_color_s"], _ = fused_target(batch["color_s"], stage2["mono_proj_img_o_0_s"], visible,
                                                      jnp.ones_like(visible))
        return evaluate_terms(terms, stage2, batch)[1:]

    return jax.device_get(run(outs["stage2"], batch, _nhwc(fs.whole(s2 + "inv_edge_mask_s")),
                              1 - _nhwc(fs.whole(s2 + "invalid_mask_s"))))


def _nhwc(a):
    a = np.asarray(a)
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _map_tolerance(fs, name, term, outs):
    """(tol, keep) of a loss map computed from our stage outputs `outs` (fixtures README tolerances)."""
    if term == "Stereo_gui2":  # where the in-view mask is decided; the sensitivity without rows 0 and H-1
        sens = fs.entries[name].get("sensitivity") or {}
        sens = sens.get("rel_l2_without_rows_0_and_H-1", sens.get("rel_l2", 0.0))
        return max(1e-4, 10 * sens), in_view_decided(fs, "train/stage2/", outs["stage2"])
    if term == "Stereo_photo":
        return STEREO_PHOTO_TOL, None
    return max(fs.tolerance(name), MAP_TOL.get(term, 0)), None


def _dilate3(mask):
    """3x3 binary dilation of (B, H, W) (a pixel whose SSIM window sees a True)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    out = np.zeros_like(mask)
    for i in range(3):
        for j in range(3):
            out |= padded[:, i:i + h, j:j + w]
    return out


# ----------------------------------------------------------------------------------------------------------
# Fixture parity from our stage outputs


def test_loss_maps_match_fixture(fs, computed, reference_masks):
    outs, _, groups = computed
    results = []
    for g, (_, side) in _groups(fs).items():
        maps = groups[g][2]
        for term in TRAINING_LOSSES[g]:
            name = f"train/loss/{term.name}/{side}"
            if term.name in VISIBILITY_TERMS:
                results += _visibility_comparisons(fs, name, term.name, nchw(maps[term.name]), outs, reference_masks)
                continue
            tol, keep = _map_tolerance(fs, name, term.name, outs)
            c = fs.compare(name, nchw(maps[term.name]), tol=tol, keep=keep)
            results.append(c)
            print(f"map {name} ({fs.storage(name)}): rel L2 {c.rel_l2:.2e} (tol {c.tol:.1e}) {c.detail}")
    bad = [f"{c.name}: {c.rel_l2:.3e} > {c.tol:.1e}" for c in results if not c.ok]
    assert not bad, "\n".join(bad)


def _visibility_comparisons(fs, name, term, ours, outs, reference_masks):
    """A VISIBILITY_TERMS map (NCHW) on every row: with our masks, and with the reference's (see VISIBILITY_TERMS)
    or, where those are not stored whole, Stereo_gui2 where the in-view mask is decided."""
    tight = _map_tolerance(fs, name, "Stereo_gui2", outs)[0] if term == "Stereo_gui2" else 1e-3
    ours_c = fs.compare(name, ours, tol=fs.tolerance(name) if term == "Stereo_gui2" else STEREO_PHOTO_TOL)
    line = (f"map {name} ({fs.storage(name)}), every row: with our masks rel L2 {ours_c.rel_l2:.2e} "
            f"(tol {ours_c.tol:.1e})")
    results = [ours_c]
    if reference_masks is not None:
        ref_map = nchw(reference_masks[1][term])
        c = fs.compare(name, ref_map, tol=tight)
        results.append(Comparison(f"{name} (reference masks)", c.rel_l2, c.tol, c.detail))
        line += f"; with the reference's masks {c.rel_l2:.2e} (tol {tight:.1e})"
        if fs.is_whole(name):
            s2 = "train/stage2/"
            if term == "Stereo_gui2":
                flipped = nchw(outs["stage2"]["inv_edge_mask_s"]) != fs.whole(s2 + "inv_edge_mask_s")
            else:  # a flip of V reaches the 3x3 SSIM window around it
                flips = nchw(outs["stage2"]["invalid_mask_s"]) != fs.whole(s2 + "invalid_mask_s")
                flipped = _dilate3(flips[:, 0])[:, None]
            diff = ours.astype(np.float64) - fs.whole(name)
            share = np.linalg.norm(diff[np.broadcast_to(flipped, diff.shape)]) / max(np.linalg.norm(diff), 1e-30)
            line += (f"; the {int(flipped.sum())} pixels a flip reaches hold {share:.4%} of the difference with our "
                     f"masks")
    elif term == "Stereo_gui2":
        keep = in_view_decided(fs, "train/stage2/", outs["stage2"])
        c = fs.compare(name, ours, tol=tight, keep=keep)
        results.append(Comparison(f"{name} (where the in-view mask is decided)", c.rel_l2, c.tol, c.detail))
        line += f"; where the in-view mask is decided {c.rel_l2:.2e} (tol {tight:.1e}) {c.detail}"
    print(line)
    return results


def test_loss_values_and_totals_match_fixture(fs, computed, reference_masks):
    _, _, groups = computed
    bad = []
    if reference_masks is not None:  # the values of VISIBILITY_TERMS with the reference's masks
        for term in VISIBILITY_TERMS:
            name = f"train/loss/s/{term}-value"
            c = fs.compare(name, np.asarray(reference_masks[0][term]), tol=1e-3)
            print(f"value {name} with the reference's masks: rel {c.rel_l2:.2e} (tol {c.tol:.0e})")
            bad += [] if c.ok else [f"{name} (reference masks): {c.rel_l2:.3e}"]
    grand = 0.0
    for g, (_, side) in _groups(fs).items():
        total, values, _ = groups[g]
        grand += float(total)
        for term in TRAINING_LOSSES[g]:
            name = f"train/loss/{side}/{term.name}-value"
            c = fs.compare(name, np.asarray(values[term.name]), tol=VALUE_TOL.get(term.name, 1e-3))
            print(f"value {name}: ours {float(values[term.name]):.6g} ref {fs.scalar(name):.6g} "
                  f"rel {c.rel_l2:.2e} (tol {c.tol:.0e})")
            bad += [] if c.ok else [f"{name}: {c.rel_l2:.3e}"]
        c = fs.compare(f"train/loss/{g}-loss", np.asarray(total), tol=1e-3)
        print(f"total train/loss/{g}-loss: ours {float(total):.6g} rel {c.rel_l2:.2e}")
        bad += [] if c.ok else [f"{g}-loss: {c.rel_l2:.3e}"]
    c = fs.compare("train/loss/loss", np.asarray(grand, np.float32), tol=1e-3)
    print(f"total train/loss/loss: ours {grand:.6g} rel {c.rel_l2:.2e}")
    bad += [] if c.ok else [f"loss: {c.rel_l2:.3e}"]
    assert not bad, "\n".join(bad)


def test_stereo_photo_away_from_mask_flips(fs, computed):
    """Stereo_photo where the 3x3 SSIM window sees no flip of the visibility (1 - invalid_mask_s, which holds
    the occlusion and in-view masks): the remaining error is the loss's own.

    With invalid_mask_s stored whole the flips are known exactly. With it sampled, every pixel that may flip is
    excluded instead: those where the in-view mask is not decided (tests.parity_tio.IN_VIEW) and those whose
    occlusion value (from our stage-2 disparity) lies within OCC_MARGIN of the 0.8 threshold; every flip found on
    the stored samples must be one of those."""
    outs, batch, groups = computed
    mask_name = "train/stage2/invalid_mask_s"
    ours_inv = nchw(outs["stage2"]["invalid_mask_s"])
    if fs.is_whole(mask_name):
        flips = (ours_inv != fs.whole(mask_name))[:, 0]
        how = f"{int(flips.sum())} visibility flips"
    else:
        occ = np.asarray(occlusion_mask_downscaled(outs["stage2"]["mono_disp_0_s"], -np.asarray(batch["direct"])))
        undecided = ~in_view_decided(fs, "train/stage2/", outs["stage2"])[:, 0]
        flips = (np.abs(occ[..., 0] - 0.8) <= OCC_MARGIN) | undecided
        frac, n_flips, n = fs.flip_fraction(mask_name, ours_inv, keep=~flips[:, None])
        assert n_flips == 0, f"{n_flips}/{n} stored samples of {mask_name} flipped where the in-view mask is " \
                             f"decided, off the occlusion threshold margin"
        how = f"{int(flips.sum())} possible visibility flips (sampled mask, {n} samples checked)"
    keep = ~_dilate3(flips)[:, None]
    c = fs.compare("train/loss/Stereo_photo/s", nchw(groups["param_group2"][2]["Stereo_photo"]), tol=1e-3, keep=keep)
    print(f"Stereo_photo away from {how} ({keep.mean():.1%} kept): rel L2 {c.rel_l2:.2e} {c.detail}")
    assert c.ok, f"{c.rel_l2:.3e} > {c.tol}"


# ----------------------------------------------------------------------------------------------------------
# The loss functions alone on the stored inputs


def _isolated_cases(fs, ours):
    """{map name: (our map NHWC, every input was the reference's)}, plus the Stereo_gui2 mask and its origin.
    `ours(name)` gives our own value (NHWC) of a stage output, used where the reference's is only sampled."""
    size = fs.train_size()

    def feed(name):
        if fs.is_whole(name):
            return _nhwc(fs.whole(name)), True
        return ours(name), False

    s1, s2 = "train/stage1/", "train/stage2/"
    (mono_o, r1), (color_o, _), (color_s, _) = feed(s1 + "mono_disp_0_o"), feed(f"in/{size}/color_o"), \
        feed(f"in/{size}/color_s")
    (stereo_disp, r2), (mono_disp, r3) = feed(s2 + "stereo_disp_0_s"), feed(s2 + "mono_disp_0_s")
    inv_edge, r4 = feed(s2 + "inv_edge_mask_s")
    cost = dict(l1_rate=1, t_l1=1, total_tl1=True, smol1_rate=0)
    cases = {
        "Mono_smooth/o": (smooth_loss(mono_o, color_o, gamma_rate=2), r1),
        "Stereo_smooth/s": (smooth_loss(stereo_disp, color_s, gamma_rate=2), r2),
        "Stereo_gui1/s": (grad_loss(stereo_disp, mono_disp), r2 and r3),
        "Stereo_gui2/s": (photo_loss(stereo_disp, mono_disp, l1_rate=1, ssim_rate=0) * inv_edge, r2 and r3 and r4),
    }
    for k in (3, 2):
        (p, rp), (q, rq) = feed(f"{s2}cost_{k}-s"), feed(f"{s2}mono_pvolume_cost_{k}_s")
        cases[f"Stereo_cost{k}/s"] = (cost_loss(p, q, **cost), rp and rq)
    return cases, inv_edge


def test_loss_functions_on_stored_inputs(fs, request):
    def ours(name):
        from tests.parity_tio import lookup

        outs = request.getfixturevalue("computed")[0]
        _, stage, key = name.split("/")
        return _nhwc(lookup(outs[stage], key))

    cases, inv_edge = _isolated_cases(fs, ours)
    bad = []
    for key, (map_, reference_inputs) in cases.items():
        name = f"train/loss/{key}"
        if reference_inputs:  # the reference's own inputs: only float32 rounding differs
            tol, keep = ISOLATED_TOL, None
        else:  # our stage outputs stand in for inputs stored sampled
            tol, keep = _map_tolerance(fs, name, key.split("/")[0], request.getfixturevalue("computed")[0])
        c = fs.compare(name, nchw(map_), tol=tol, keep=keep)
        print(f"isolated {name} ({'reference' if reference_inputs else 'our'} inputs, map {fs.storage(name)}): "
              f"rel L2 {c.rel_l2:.2e} (tol {c.tol:.1e}) {c.detail}")
        bad += [] if c.ok else [f"{name}: {c.rel_l2:.3e} > {c.tol:.1e}"]
    gui2, reference_inputs = cases["Stereo_gui2/s"]
    value = float(jnp.sum(gui2) / jnp.sum(inv_edge))
    c = fs.compare("train/loss/s/Stereo_gui2-value", np.asarray(value),
                   tol=1e-5 if reference_inputs else VALUE_TOL["Stereo_gui2"])
    print(f"isolated Stereo_gui2-value (mask-normalised): rel {c.rel_l2:.2e} (tol {c.tol:.0e})")
    bad += [] if c.ok else [f"Stereo_gui2-value: {c.rel_l2:.3e}"]
    assert not bad, "\n".join(bad)


def test_group_rates_reproduce_fixture_totals(fs):
    """sum(rate * mean(reference map)) over a group's terms = the reference group loss: checks the table.
    The means come from the exact sums (the `@stats` sum of a sampled map)."""
    grand = 0.0
    for g, (_, side) in _groups(fs).items():
        total = 0.0
        for t in TRAINING_LOSSES[g]:
            name = f"train/loss/{t.name}/{side}"
            total += t.rate * fs.total(name) / int(np.prod(fs.shape(name)))
        grand += total
        ref = fs.scalar(f"train/loss/{g}-loss")
        assert abs(total - ref) <= 1e-5 * abs(ref), (g, total, ref)
    assert abs(grand - fs.scalar("train/loss/loss")) <= 1e-5 * grand


def test_training_table_equals_fixture_yaml(fs):
    yaml_groups = fs.meta["config"]["losses_yaml"]
    assert list(yaml_groups) == list(TRAINING_LOSSES)
    for g, group in yaml_groups.items():
        assert terms_from_config(group["loss_terms"]) == TRAINING_LOSSES[g], g


# ----------------------------------------------------------------------------------------------------------
# Analytic checks (no fixtures)


# Test data from numpy (eager jax.random would compile one program per shape and op).
def _rand(key, shape, lo=0.0, hi=1.0):
    return jnp.asarray(np.random.default_rng(key).uniform(lo, hi, shape), jnp.float32)


def _volume(key, shape, scale=3.0):
    logits = scale * np.random.default_rng(key).standard_normal(shape)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return jnp.asarray(e / e.sum(-1, keepdims=True), jnp.float32)


def test_ssim_identical_images_is_zero():
    x = _rand(0, (2, 9, 13, 3))
    np.testing.assert_allclose(np.asarray(ssim(x, x)), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(photo_loss(x, x, l1_rate=0.15, ssim_rate=0.85)), 0.0, atol=1e-7)
    assert float(jnp.max(ssim(x, _rand(1, x.shape)))) > 0.05


def test_ssim_reflection_padding_and_pooling():
    """Against a direct numpy evaluation of the formula with ReflectionPad2d(1) and 3x3 VALID pooling."""
    x, y = np.asarray(_rand(2, (1, 5, 6, 2))), np.asarray(_rand(3, (1, 5, 6, 2)))
    px, py = (np.pad(a.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect") for a in (x, y))

    def pool(a):
        return sum(a[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3)) / 9

    mx, my = pool(px), pool(py)
    sx, sy, sxy = pool(px * px) - mx**2, pool(py * py) - my**2, pool(px * py) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = np.clip((1 - (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sx + sy + c2))) / 2, 0, 1)
    # atol: float32 E[x^2] - E[x]^2 cancellation
    np.testing.assert_allclose(np.asarray(ssim(jnp.asarray(x), jnp.asarray(y))), ref, atol=1e-5)


def test_cost_loss_kl_of_equal_volumes_is_zero():
    p = _volume(4, (2, 5, 7, 49))
    kl = cost_loss(p, p, use_confi=False, ce_rate=1, smol1_rate=0)
    assert kl.shape == (2, 5, 7, 1)
    np.testing.assert_allclose(np.asarray(kl), 0.0, atol=1e-6)
    assert float(jnp.min(cost_loss(_volume(5, p.shape), p, use_confi=False, ce_rate=1, smol1_rate=0))) > 0


def test_confidence_of_one_hot_target_is_one():
    n = 49
    idx = jnp.array([[0, 1, 24], [47, 48, 3]])  # the end bins have one missing neighbour
    onehot = jax.nn.one_hot(idx, n)[:, None]  # (2, 1, 3, 49)
    np.testing.assert_array_equal(np.asarray(cost_confidence(onehot)), 1.0)
    # confidence = mass at argmax and its existing neighbours; first index wins ties (torch and jnp argmax)
    q = jnp.zeros((1, 1, 1, n)).at[..., [0, 1, 10, 30]].set(jnp.array([0.2, 0.1, 0.35, 0.35]))
    np.testing.assert_allclose(np.asarray(cost_confidence(q)), 0.35)
    q = q.at[..., 11].set(0.05)  # bin 11 neighbours the first maximum (10), not the second (30)
    np.testing.assert_allclose(np.asarray(cost_confidence(q)), 0.4, rtol=1e-6)
    # weight applied: one-hot target, l1 map = sum|p - q|
    p = _volume(6, onehot.shape)
    l1 = cost_loss(p, onehot, l1_rate=1, smol1_rate=0)
    np.testing.assert_allclose(np.asarray(l1), np.asarray(jnp.sum(jnp.abs(p - onehot), -1, keepdims=True)), rtol=1e-6)


def test_cost_loss_several_targets_pick_the_most_confident():
    a, b = _volume(7, (1, 4, 5, 49), 10.0), _volume(8, (1, 4, 5, 49), 0.1)  # a peaked, b flat
    p = _volume(9, a.shape)
    both = cost_loss(p, [b, a], l1_rate=1, smol1_rate=0)
    only_a = cost_loss(p, a, l1_rate=1, smol1_rate=0)
    np.testing.assert_allclose(np.asarray(both), np.asarray(only_a), rtol=1e-6)
    with pytest.raises(ValueError):
        cost_loss(p, [a, b], use_confi=False)


def test_thresholded_l1_has_no_gradient_below_threshold():
    q = _volume(10, (1, 6, 8, 49), 8.0)
    p = jnp.where(jnp.arange(8)[None, None, :, None] < 4, q * 0.9 + 0.1 / 49, _volume(11, q.shape, 8.0))
    f = functools.partial(cost_loss, target=q, l1_rate=1, t_l1=1, total_tl1=True, smol1_rate=0)
    tv = np.asarray(jnp.sum(jnp.abs(p - q), -1))
    low = tv < 1
    assert low.any() and (~low).any()
    np.testing.assert_array_equal(np.asarray(f(p))[..., 0][low], 0.0)
    g = np.asarray(jax.grad(lambda x: jnp.sum(f(x)))(p))
    assert np.all(g[low] == 0)
    assert np.all(np.abs(g[~low]).sum(-1) > 0)
    # per-bin thresholding (total_tl1 False)
    g2 = np.asarray(jax.grad(lambda x: jnp.sum(cost_loss(x, q, l1_rate=1, t_l1=0.3, smol1_rate=0)))(p))
    assert np.all(g2[np.asarray(jnp.abs(p - q)) < 0.3] == 0)


def test_gradients_are_finite_and_jit_matches():
    """All four losses, through evaluate_terms on random stand-ins for group 2 and 3 outputs."""
    b, h, w, n = 2, 12, 20, 49
    outs = {
        "stereo_proj_img_o_0_s": _rand(12, (b, h, w, 3)), "fused_occ_color_s": _rand(13, (b, h, w, 3)),
        "stereo_disp_0_s": _rand(14, (b, h, w, 1), 2, 300), "mono_disp_0_s": _rand(15, (b, h, w, 1), 2, 300),
        "inv_edge_mask_s": (_rand(16, (b, h, w, 1)) > 0.9).astype(jnp.float32),
        "refmono_pvolume_wg_0_s": _volume(17, (b, h, w, n)), "fuse_pvolume_s": _volume(18, (b, h, w, n)),
    }
    for k, (hh, ww) in zip((3, 2, 1), ((3, 5), (6, 10), (12, 20))):
        outs[f"cost_{k}-s"] = _volume(20 + k, (b, hh, ww, n), 6.0)
        outs[f"mono_pvolume_cost_{k}_s"] = _volume(30 + k, (b, hh, ww, n), 6.0)
    batch = {"color_s": _rand(40, (b, h, w, 3)), "color_o": _rand(41, (b, h, w, 3))}
    terms = TRAINING_LOSSES["param_group2"] + TRAINING_LOSSES["param_group3"]

    run = jax.jit(functools.partial(evaluate_terms, terms))

    @jax.jit
    def value_and_grads(o):
        return jax.value_and_grad(lambda x: run(x, batch)[0])(o)

    value, grads = value_and_grads(outs)
    assert np.isfinite(float(value))
    for k, g in grads.items():
        assert np.all(np.isfinite(np.asarray(g))), k
    for k in ("stereo_proj_img_o_0_s", "stereo_disp_0_s", "cost_1-s", "refmono_pvolume_wg_0_s"):
        assert float(jnp.max(jnp.abs(grads[k]))) > 0, k
    assert float(jnp.max(jnp.abs(grads["mono_disp_0_s"]))) > 0  # through Stereo_gui2 (L1), not GradLoss
    gui1 = terms[5]
    g_target = jax.jit(jax.grad(lambda t: jnp.sum(grad_loss(outs["stereo_disp_0_s"], t))))(outs["mono_disp_0_s"])
    assert gui1.kind == "grad" and float(jnp.max(jnp.abs(g_target))) == 0  # GradLoss detaches its target
    total, values, maps = run(outs, batch)
    np.testing.assert_allclose(float(total), float(value), rtol=1e-6)
    manual = sum(t.rate * float(jnp.mean(maps[t.name])) for t in terms)
    np.testing.assert_allclose(float(total), manual, rtol=1e-5)
    assert set(values) == set(maps) == {t.name for t in terms}
    for name, m in maps.items():
        assert m.ndim == 4 and m.shape[-1] == 1 and m.shape[0] == b, name


def test_evaluate_terms_mask_and_means():
    pred, target = _rand(50, (2, 4, 6, 1)), _rand(51, (2, 4, 6, 1))
    mask = (_rand(52, (2, 4, 6, 1)) > 0.5).astype(jnp.float32)
    term = LossTerm("t", "photo", "p", "q", 0.5, mask="m", params={"l1_rate": 1})
    total, values, maps = evaluate_terms([term], {"p": pred, "m": mask}, {"q": target})
    masked = jnp.abs(pred - target) * mask
    np.testing.assert_allclose(np.asarray(maps["t"]), np.asarray(masked), rtol=1e-6)
    np.testing.assert_allclose(float(total), 0.5 * float(jnp.mean(masked)), rtol=1e-6)  # not mask-normalised
    np.testing.assert_allclose(float(values["t"]), float(jnp.sum(masked) / jnp.sum(mask)), rtol=1e-6)
    # names are literal: the original's '{}' side placeholders are refused, naming them
    with pytest.raises(ValueError, match="literal"):
        LossTerm("t", "photo", "p_{}", "q_{}", 1.0, params={"l1_rate": 1})


def test_smooth_loss_analytic():
    """Constant disparity -> 0; a vertical step -> only g_x, weighted by the image's second difference."""
    img = _rand(53, (1, 5, 7, 3))
    assert float(jnp.max(smooth_loss(jnp.full((1, 5, 7, 1), 3.0), img, gamma_rate=2))) == 0
    d = jnp.zeros((1, 5, 7, 1)).at[:, :, 4:].set(1.0)
    flat = jnp.full_like(img, 0.5)  # flat image: exp(0) = 1
    m = np.asarray(smooth_loss(d, flat, gamma_rate=2))[0, :, :, 0]
    expected = np.zeros((5, 7))
    expected[:, 3:5] = 1.0  # |d(x) - d(x+1)| at x = 3, |d(x) - d(x-1)| at x = 4 (more_kernel)
    np.testing.assert_allclose(m, expected, atol=1e-6)
    m1 = np.asarray(smooth_loss(d, flat, gamma_rate=2, more_kernel=False))[0, :, :, 0]
    np.testing.assert_allclose(m1, np.where(np.arange(7) == 4, 1.0, 0.0)[None].repeat(5, 0), atol=1e-6)


def test_from_dict_forms_and_errors():
    flat = {"name": "x", "kind": "smooth", "pred": "d", "image": "color_s", "rate": 0.1,
            "params": {"gamma_rate": 2}}
    t = LossTerm.from_dict(flat)
    assert t.target == "color_s" and t.params == {"gamma_rate": 2} and t.mask is None
    with pytest.raises(ValueError, match="bogus"):
        LossTerm.from_dict({**flat, "bogus": 1})
    with pytest.raises(ValueError, match="gama_rate"):
        LossTerm.from_dict({**flat, "params": {"gama_rate": 2}})
    with pytest.raises(ValueError, match="l2_ratee"):
        LossTerm.from_dict({"type": "PhotoLoss", "rate": 1, "args": {"pred_n": "a", "target_n": "b",
                                                                     "l2_ratee": 1}}, name="y")
    with pytest.raises(ValueError, match="sum to 1"):
        LossTerm.from_dict({"type": "PhotoLoss", "rate": 1, "args": {"pred_n": "a", "target_n": "b",
                                                                     "l2_rate": 1}}, name="y")
    with pytest.raises(ValueError, match="kind"):
        LossTerm.from_dict({"name": "z", "kind": "ssim", "pred": "a", "target": "b", "rate": 1})
    yaml_form = LossTerm.from_dict({"type": "SmoothLoss", "rate": 0.5, "name": None,
                                    "args": {"pred_n": "d", "image_n": "c", "device": "cpu"}}, name="s")
    # missing args take the ORIGINAL constructor's defaults (more_kernel/gray_img False, gamma 1)
    assert yaml_form.params == {"gamma_rate": 1, "more_kernel": False, "gray_img": False, "relative_smo": False}
    assert hash(yaml_form) == hash(LossTerm.from_dict({"type": "SmoothLoss", "rate": 0.5,
                                                       "args": {"pred_n": "d", "image_n": "c"}}, name="s"))


def test_terms_from_config_takes_a_list_of_flat_terms():
    """The config's `losses.<group>` list form (flat terms with their names), as the mapping form."""
    for terms in TRAINING_LOSSES.values():
        flat = [{"name": t.name, "kind": t.kind, "pred": t.pred, "target": t.target, "rate": t.rate, "mask": t.mask,
                 "params": dict(t.params)} for t in terms]
        assert terms_from_config(flat) == terms
