"""TiO-Depth fixture sets: DINOv2 taps, the Mono / Stereo / Refine eval outputs at every stored size, and
the training-mode forward of the three stages (epoch 31, initial weights, batch statistics).

The model comes from the fixture recipe through `convert.tiodepth`; every stored array under a case's
prefix is compared (aliases resolve to the arrays they repeat), none is skipped silently.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.tiodepth import convert_state_dict, infer_config
from convert.vgg19 import convert_vgg19_features
from tests.parity import Comparison, FixtureSet, failures_table, nchw
from tests.pytorch_grid import in_view_in_pytorch_order
from tiodepth_jax.models import stages
from tiodepth_jax.models.dinov2 import interpolate_pos_embed
from tiodepth_jax.models.tiodepth import PATHS, TiODepthConfig
from tiodepth_jax.ops.geometry import occlusion_mask_downscaled

# The original's names for a path's final outputs -> ours.
FINAL = {"depth,s": "depth", "disp,s": "disp", "rawdepth": "depth", "rawdisp": "disp", "sdepth": "depth",
         "sdisp": "disp", "refdepth": "depth", "refdisp": "disp"}
# The in-view mask (DepthProjector's is_mask) and the maps built from it. On image rows 0 and H-1 rounding decides it
# (fixtures README): the exact reprojected y is 0 or H-1 whatever the depth, and the side of +-1 its float32 value
# lands on follows the last bits of the mono depth (in PyTorch's own arithmetic, a 1-ulp change of every depth of
# tio_dinov2b flips 37 % of those pixels). They are compared on EVERY row (in_view_comparisons):
# * our mask (from the full jitted stage 2) equals PyTorch's arithmetic (tests.pytorch_grid) on our own mono depth
#   on every pixel, and PyTorch's arithmetic on the reference's depth gives the stored mask at every stored element
#   where that depth is stored too: so a flip can only be at a pixel whose depth differs from the reference's;
# * on rows 0 and H-1 where our depth is the reference's bit for bit, no flip (invalid_mask_s: at most MAX_FLIPS, as
#   it also holds mono_occ_mask_s's threshold flips); on rows 1..H-2 at most MAX_FLIPS (x's border, a continuous
#   threshold: none in tio_dinov2b);
# * on rows 0 and H-1, where the depth differs, the flips are counted by direction and printed. They follow the
#   depth's last bits, so no bound near MAX_FLIPS can hold there; they must not be one-sided (a two-sided binomial
#   test at IN_VIEW_SIDED_P), which is what biased the whole-run Stereo_photo before the grid was PyTorch's;
# * fused_occ_color_s on every row, within its tolerance, and where our visibility is the reference's within
#   mono_proj_img's.
# in_view_decided() gives the pixels where the mask must be the reference's (rows 1..H-2 and bit-equal depth).
IN_VIEW = ("edge_mask_s", "inv_edge_mask_s", "invalid_mask_s", "fused_occ_color_s")
EDGE_DEPTH = "mono_depth_0_s"
IN_VIEW_SIDED_P = 1e-3
# 0/1 maps thresholding continuous values: a few pixels may flip (fixtures README: about 0.1 %), counted on the
# stored elements (all of them, or the samples of a sampled map).
THRESHOLD_MASKS = ("mono_occ_mask_s", "fuse_occ_mask_s")
MAX_FLIPS = 1e-3
# Those thresholds (and the stage-3 plane-mask override, occlusion < 0.8) may flip where the occlusion value lies
# within this of 0.8: on tio_dinov2b our stage-2 disparities move it by at most 2.7e-3 from the reference's, and
# ~4 % of the pixels lie within 2e-2 of 0.8. Where a reference mask is stored only sampled, tests exclude those
# pixels instead of the (unknown) flips, and check on the stored samples that every flip lies among them.
OCC_MARGIN = 2e-2
_MODELS: dict = {}
_TRAIN: dict = {}
_EVAL: dict = {}  # (set name, size) -> {mode: eval outputs not compared yet}


def config_for(fs: FixtureSet, sd: dict | None = None) -> TiODepthConfig:
    """The set's model config: `model_params` of its yaml, the encoder variant and depth read off the weights."""
    mp = fs.meta["config"]["model_params"]
    return infer_config(fs.state_dict() if sd is None else sd, image_size=tuple(mp["image_size"]),
                        min_disp=mp["min_disp"], max_disp=mp["max_disp"], d2d=mp["d2d"], n_bins=mp["out_ch"],
                        decoder_channels=tuple(mp["decoder_ch_num"]), decoder_name=mp["decoder_name"],
                        train_side=mp["set_train_side"])


def model_for(fs: FixtureSet):
    """The converted model, built once per fixture set."""
    if fs.name not in _MODELS:
        sd = fs.state_dict()
        model, report = convert_state_dict(sd, config_for(fs, sd))
        assert not report.missing and not report.unexpected, report.summary()
        _MODELS[fs.name] = model
    return _MODELS[fs.name]


def inputs(fs: FixtureSet, size: str) -> dict:
    """The stored batch, images NCHW -> NHWC."""
    out = {}
    for name in fs.names(f"in/{size}/"):
        a = jnp.asarray(fs.whole(name))
        out[name.split("/")[-1]] = a.transpose(0, 2, 3, 1) if a.ndim == 4 else a
    return out


def lookup(ours: dict, key: str):
    """Our array for a fixture key: final-output aliases, list items ('enc_feats_s.2'), NHWC -> NCHW."""
    key = FINAL.get(key, key)
    base, _, item = key.rpartition(".")
    value = ours[base][int(item)] if base and item.isdigit() else ours[key]
    value = np.asarray(value)
    return nchw(value) if value.ndim == 4 else value


def compare_all(fs: FixtureSet, prefix: str, ours: dict) -> None:
    names = fs.names(prefix)
    missing = [n for n in names if _missing(ours, n[len(prefix):])]
    assert not missing, f"arrays not produced: {missing}"
    results = [c for n in names for c in compare_one(fs, n, lookup(ours, n[len(prefix):]), ours)]
    worst = max(results, key=lambda c: c.rel_l2 / c.tol)
    print(f"{fs.name} {prefix}: {len(results)} arrays, worst {worst.name} rel L2 {worst.rel_l2:.2e} (tol {worst.tol:.1e})")
    assert all(c.ok for c in results), f"{fs.name} {prefix} parity failures:\n" + failures_table(results)


def compare_one(fs: FixtureSet, name: str, value: np.ndarray, ours: dict) -> list[Comparison]:
    """`value` (our array for `name`) against the reference; `ours` are the outputs of the same case."""
    key = name.rsplit("/", 1)[1]
    if key in THRESHOLD_MASKS:
        frac, flips, n = fs.flip_fraction(name, value)
        return [Comparison(name, frac, MAX_FLIPS, f"flipped {flips}/{n} stored elements ({fs.storage(name)})")]
    if key in IN_VIEW:
        return in_view_comparisons(fs, name, value, ours)
    return [fs.compare(name, value)]


@dataclasses.dataclass
class InView:
    """The in-view mask of a stage-2 case, (B, 1, H, W) arrays."""
    expected: np.ndarray   # PyTorch's arithmetic on our mono depth (float32 0/1)
    reference: np.ndarray  # PyTorch's arithmetic on the reference's mono depth where it is stored, else `expected`
    known: np.ndarray      # bool: the reference's mono depth is stored at this pixel
    same: np.ndarray       # bool: stored there and our depth is bit for bit the reference's
    rows: np.ndarray       # bool: image rows 0 and H-1


def in_view_analysis(fs: FixtureSet, prefix: str, ours: dict) -> InView:
    batch = {k: np.asarray(v) for k, v in inputs(fs, fs.train_size()).items()}
    cams = batch["inv_K"], stages.frame_transform(batch["T"], "o", mono=False), batch["K"]
    depth = np.asarray(ours[EDGE_DEPTH], np.float32)
    expected = nchw(in_view_in_pytorch_order(depth, *cams))
    idx, val = fs.samples(prefix + EDGE_DEPTH)
    ref_depth = nchw(depth).copy()
    ref_depth.reshape(-1)[idx] = val
    known = np.zeros(ref_depth.shape, bool)
    known.reshape(-1)[idx] = True
    reference = nchw(in_view_in_pytorch_order(ref_depth.transpose(0, 2, 3, 1), *cams))
    rows = np.zeros(known.shape, bool)
    rows[..., [0, -1], :] = True
    return InView(expected, reference, known, known & (ref_depth == nchw(depth)), rows)


def in_view_comparisons(fs: FixtureSet, name: str, value: np.ndarray, ours: dict) -> list[Comparison]:
    """The IN_VIEW maps on every row (see IN_VIEW); prints the flip counts."""
    prefix, key = name.rsplit("/", 1)
    iv = in_view_analysis(fs, prefix + "/", ours)
    if key == "fused_occ_color_s":
        return _fused_comparisons(fs, name, value, ours, iv)
    # our masks from our depth: exactly PyTorch's arithmetic on it, on every pixel
    visible = iv.expected * nchw(ours["mono_occ_mask_s"])
    own = {"edge_mask_s": iv.expected, "inv_edge_mask_s": 1 - iv.expected, "invalid_mask_s": 1 - visible}[key]
    not_own = int((value != own).sum())
    idx, val = fs.samples(name)
    at = lambda a: np.broadcast_to(a, value.shape).reshape(-1)[idx]  # noqa: E731  (at the stored elements)
    flip, rows, same, known = at(value) != val, at(iv.rows), at(iv.same), at(iv.known)
    ref_in = val == (1 if key == "edge_mask_s" else 0)  # the reference's pixel is in view (visible)
    # the reference's masks from its depth, where stored: PyTorch's arithmetic on it (the in-view masks only)
    not_reference = 0
    if key != "invalid_mask_s":
        ref_own = at(iv.reference if key == "edge_mask_s" else 1 - iv.reference)
        not_reference = int((ref_own != val)[known].sum())
    interior, border_same, border_diff = ~rows, rows & same, rows & known & ~same
    n_in, n_same = int(interior.sum()), int(border_same.sum())
    f_in, f_same = int(flip[interior].sum()), int(flip[border_same].sum())
    in_out = int((flip & border_diff & ref_in).sum())  # the reference's in view, ours not
    out_in = int((flip & border_diff & ~ref_in).sum())
    n_diff = int(border_diff.sum())
    unknown = rows & ~known
    sided_p = binomial_two_sided(in_out, in_out + out_in)
    frac = max(f_in / max(n_in, 1), f_same / max(n_same, 1))
    if not_own or not_reference or (key != "invalid_mask_s" and f_same) or sided_p < IN_VIEW_SIDED_P:
        frac = float("inf")
    word = "visible" if key == "invalid_mask_s" else "in view"
    detail = (f"all rows ({fs.storage(name)}): {not_own} pixels not PyTorch's arithmetic on our depth, "
              f"{not_reference} stored not PyTorch's on the reference's depth; flips on rows 1..H-2 {f_in}/{n_in}, "
              f"rows 0/H-1 where the depth is the reference's {f_same}/{n_same}, where it differs {in_out + out_in}/"
              f"{n_diff} ({word}->not {in_out}, not->{word} {out_in}; two-sided p {sided_p:.2g}), depth not stored "
              f"{int(flip[unknown].sum())}/{int(unknown.sum())}")
    print(f"[in-view] {fs.name} {name}: {detail}")
    return [Comparison(name, frac, MAX_FLIPS, detail)]


def _fused_comparisons(fs, name, value, ours, iv) -> list[Comparison]:
    """fused_occ_color_s = V * color_s + (1 - V) * mono_proj: on every row within its tolerance, and where our V
    is the reference's (known when invalid_mask_s is stored whole, else where V is decided) within mono_proj's."""
    prefix = name.rsplit("/", 1)[0] + "/"
    invalid = nchw(ours["invalid_mask_s"])
    if fs.is_whole(prefix + "invalid_mask_s"):
        agree, where = invalid == fs.whole(prefix + "invalid_mask_s"), "where V is the reference's"
    else:
        direct = np.asarray(inputs(fs, fs.train_size())["direct"])
        occ = nchw(np.asarray(occlusion_mask_downscaled(ours["mono_disp_0_s"], -direct)))
        agree = (~iv.rows | iv.same) & (np.abs(occ - 0.8) > OCC_MARGIN)
        where = "where V is decided"
    proj = prefix + "mono_proj_img_o_0_s"
    tol = fs.tolerance(proj) if proj in fs.entries else 1e-3
    everywhere = fs.compare(name, value)
    agreeing = fs.compare(name, value, tol=tol, keep=agree)
    agreeing = Comparison(f"{name} ({where})", agreeing.rel_l2, agreeing.tol, agreeing.detail)
    print(f"[in-view] {fs.name} {name}: all rows rel L2 {everywhere.rel_l2:.2e} (tol {everywhere.tol:.1e}); "
          f"{where} ({agree.mean():.2%} of the pixels) {agreeing.rel_l2:.2e} (tol {tol:.1e})")
    return [everywhere, agreeing]


def binomial_two_sided(k: int, n: int) -> float:
    """P(a fair coin's n tosses are at least as one-sided as k heads)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, j) for j in range(min(k, n - k) + 1))  # exact integers
    return min(1.0, 2 * tail / 2**n)


def in_view_decided(fs: FixtureSet, prefix: str, ours: dict) -> np.ndarray:
    """(B, 1, H, W) bool: where the in-view mask must match the reference's (IN_VIEW)."""
    depth, name = lookup(ours, EDGE_DEPTH), prefix + EDGE_DEPTH
    keep = depth == fs.whole(name) if fs.is_whole(name) else np.zeros(depth.shape, bool)
    keep[..., 1:-1, :] = True
    return keep


def _missing(ours: dict, key: str) -> bool:
    try:
        lookup(ours, key)
    except (KeyError, IndexError):
        return True
    return False


def cases(fs: FixtureSet):
    sizes = sorted({n.split("/")[1] for n in fs.names("eval/")})
    vit = sorted({"/".join(n.split("/")[:2]) for n in fs.names("vit/")})
    train = sorted({"/".join(n.split("/")[:2]) for n in fs.names("train/stage")})
    return vit + [f"eval/{s}/{mode}" for s in sizes for mode in ("Mono", "Stereo", "Refine")] + train


def check(fs: FixtureSet, case: str):
    model = model_for(fs)
    if case.startswith("vit/"):
        check_vit(fs, case, model)
    elif case.startswith("train/"):
        compare_all(fs, case + "/", train_outputs(fs)[case.split("/")[1]])
    else:
        _, size, mode = case.split("/")
        compare_all(fs, case + "/", eval_outputs(fs, size, mode))


def eval_outputs(fs: FixtureSet, size: str, mode: str) -> dict:
    """The eval outputs of `mode` alone at `size`. The three modes' runs are one compiled program, in which
    XLA computes the encoder they share once (a third less compile time); each mode's outputs are kept
    until its case takes them."""
    key = (fs.name, size)
    if mode not in _EVAL.get(key, {}):
        _EVAL.clear()
        run = nnx.jit(lambda m, batch: {path: m.inference(batch, (path,)) for path in PATHS})
        _EVAL[key] = jax.device_get(run(model_for(fs), inputs(fs, size)))
    return _EVAL[key].pop(mode)


def check_vit(fs: FixtureSet, case: str, model):
    """DINOv2 taps of the normalised target image."""
    size = case.split("/")[1]
    enc = model.encoder

    @nnx.jit
    def run(enc, x):
        x = enc.normalise(x)
        pos = interpolate_pos_embed(enc.pretrained.pos_embed[...], (x.shape[1] // 14, x.shape[2] // 14),
                                    enc.cfg.dinov2)
        return enc.pretrained(x, enc.cfg.taps), pos

    layers, pos = jax.device_get(run(enc, inputs(fs, size)["color_s"]))
    ours = {"pos_embed_interp": pos}
    for i, (tokens, cls) in enumerate(layers):
        ours[f"layer{i}/tokens"], ours[f"layer{i}/cls"] = tokens, cls
    compare_all(fs, case + "/", ours)


def train_outputs(fs: FixtureSet) -> dict:
    """{'stage1'|'stage2'|'stage3': outputs}: the three stages in order on the stored training batch, each
    seeing the initial weights (as the fixture's no-step forward does)."""
    if fs.name not in _TRAIN:
        batch = inputs(fs, fs.train_size())
        vgg, report = convert_vgg19_features(fs.state_dict("vgg"))
        assert not report.missing and not report.unexpected
        model = nnx.clone(model_for(fs))  # training mode updates BatchNorm statistics in place
        s1 = nnx.jit(stages.stage1)(model, vgg, batch)
        s2 = nnx.jit(stages.stage2)(model, batch, s1)
        s3 = nnx.jit(stages.stage3)(model, batch, s2)
        _TRAIN[fs.name] = jax.device_get({"stage1": s1, "stage2": s2, "stage3": s3})
    return _TRAIN[fs.name]
