"""TiO-Depth training losses (spec §5): per-pixel loss maps and the declarative loss table of the training yaml.

Every loss function is a pure, differentiable, jit-able function of NHWC float32 arrays and returns a per-pixel
map (B, h, w, 1) before any rate or mean:

    photo_loss(pred, target, l1_rate=, l2_rate=, ssim_rate=)    # PhotoLoss: L1 / L2 / SSIM mixture
    smooth_loss(disp, image, gamma_rate=, ...)                    # SmoothLoss: edge-aware disparity smoothness
    grad_loss(pred, target)                                       # GradLoss: gradient-magnitude matching
    cost_loss(pred, target, ...)                                  # CostLoss: probability-volume (bins last) loss

`TRAINING_LOSSES` reproduces the three loss groups of the training yaml (spec §5.6) as `LossTerm`s, and
`evaluate_terms` turns a group into its loss exactly as `Base_of_Model._compute_losses` does (spec §5.1):
a masked map is map * mask, each term contributes rate * mean(map over all B*h*w elements), and the logged
`<term>-value` is the plain mean, or sum(map * mask) / sum(mask) for a masked term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tiodepth_jax.ops.resize import pad_hw

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SMOOTH_RGB_OFFSET = (0.411, 0.432, 0.45)  # added to the image before the gray conversion (SmoothLoss)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
COST_EPS = 1e-5  # CostLoss: log(p + 1e-5), log(q + 1e-5)

# ----------------------------------------------------------------------------------------------------------
# Helpers


def _check_rates(what: str, **rates: float) -> None:
    total = sum(float(r) for r in rates.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{what}: the rates {rates} must sum to 1 (they sum to {total})")


def _avg_pool3(x: jax.Array) -> jax.Array:
    """3x3 average pooling, stride 1, no padding (nn.AvgPool2d(3, 1)): (B, H+2, W+2, C) -> (B, H, W, C)."""
    total = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")
    return total / 9.0  # (a sum of 9 shifted slices compiles ~4x slower under grad and runs ~5x slower on CPU)


def _shifts(p: jax.Array):
    """Centre and the four neighbours (left, right, up, down) of a 1-padded NHWC array."""
    return (p[:, 1:-1, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:], p[:, :-2, 1:-1], p[:, 2:, 1:-1])


# ----------------------------------------------------------------------------------------------------------
# Loss maps


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
    """Monodepth2's SSIM dissimilarity per pixel and channel, clamp((1 - SSIM) / 2, 0, 1), same shape as x.

    Both images are reflection-padded by 1; means, variances and covariance come from 3x3 average pooling."""
    x, y = pad_hw(x, "reflect"), pad_hw(y, "reflect")
    mu_x, mu_y = _avg_pool3(x), _avg_pool3(y)
    sigma_x = _avg_pool3(x**2) - mu_x**2
    sigma_y = _avg_pool3(y**2) - mu_y**2
    sigma_xy = _avg_pool3(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return jnp.clip((1 - num / den) / 2, 0, 1)


def photo_loss(pred: jax.Array, target: jax.Array, *, l1_rate: float = 1.0, l2_rate: float = 0.0,
               ssim_rate: float = 0.0) -> jax.Array:
    """PhotoLoss (spec §5.2): l1 * mean_c|p - t| + l2 * mean_c (p - t)^2 + ssim * mean_c SSIM(p, t) -> (B,h,w,1).

    The rates must sum to 1. Terms with rate 0 are skipped (as in the original)."""
    _check_rates("photo_loss", l1_rate=l1_rate, l2_rate=l2_rate, ssim_rate=ssim_rate)
    loss = jnp.zeros(target.shape[:-1] + (1,), target.dtype)
    if l1_rate != 0:
        loss = loss + l1_rate * jnp.mean(jnp.abs(pred - target), axis=-1, keepdims=True)
    if l2_rate != 0:
        loss = loss + l2_rate * jnp.mean((pred - target) ** 2, axis=-1, keepdims=True)
    if ssim_rate != 0:
        loss = loss + ssim_rate * jnp.mean(ssim(pred, target), axis=-1, keepdims=True)
    return loss


def smooth_loss(disp: jax.Array, image: jax.Array | None = None, *, gamma_rate: float,
                more_kernel: bool = True, gray_img: bool = True, relative_smo: bool = False) -> jax.Array:
    """SmoothLoss (spec §5.3), replicate padding throughout -> (B,h,w,1).

    Disparity gradients: g_x = |d(x) - d(x-1)| (+ |d(x) - d(x+1)| with more_kernel), same for y, averaged over
    the map's channels. Image (optional): I + (0.411, 0.432, 0.45), gray 0.299R + 0.587G + 0.114B if gray_img;
    with more_kernel the second differences |2I(x) - I(x-1) - I(x+1)|, otherwise |I(x) - I(x-1)|, averaged over
    channels after the abs. map = g_x * exp(-gamma * I_x) + g_y * exp(-gamma * I_y).
    relative_smo divides the disparity by its per-image spatial mean (+1e-7) first.

    Note: `more_kernel`/`gray_img` default to True here (the training yaml's setting); the original
    constructor defaults are False (`LossTerm.from_dict` fills those in for the yaml form)."""
    if relative_smo:
        disp = disp / (jnp.mean(jnp.mean(disp, axis=1, keepdims=True), axis=2, keepdims=True) + 1e-7)
    c, left, right, up, down = _shifts(pad_hw(disp, "edge"))
    grad_w = jnp.abs(c - left)
    grad_h = jnp.abs(c - up)
    if more_kernel:
        grad_w = grad_w + jnp.abs(c - right)
        grad_h = grad_h + jnp.abs(c - down)
    grad_w = jnp.mean(grad_w, axis=-1, keepdims=True)
    grad_h = jnp.mean(grad_h, axis=-1, keepdims=True)
    if image is None:
        return grad_w + grad_h
    img = image + jnp.asarray(SMOOTH_RGB_OFFSET, image.dtype)
    if gray_img:
        r, g, b = GRAY_WEIGHTS
        img = (r * img[..., 0] + g * img[..., 1] + b * img[..., 2])[..., None]
    ic, il, ir, iu, id_ = _shifts(pad_hw(img, "edge"))
    if more_kernel:
        img_w = 2 * ic - il - ir
        img_h = 2 * ic - iu - id_
    else:
        img_w = ic - il
        img_h = ic - iu
    img_w = jnp.mean(jnp.abs(img_w), axis=-1, keepdims=True)
    img_h = jnp.mean(jnp.abs(img_h), axis=-1, keepdims=True)
    return grad_w * jnp.exp(-gamma_rate * img_w) + grad_h * jnp.exp(-gamma_rate * img_h)


def grad_loss(pred: jax.Array, target: jax.Array, *, t_grad: float = 0.0) -> jax.Array:
    """GradLoss (spec §5.4): | |dx t| - |dx p| | + | |dy t| - |dy p| | with backward differences and replicate
    padding (gradient magnitudes averaged over channels); the target is detached -> (B,h,w,1).
    With t_grad > 0 the map is max(map - t_grad, 0) (zero gradient where clipped)."""
    target = jax.lax.stop_gradient(target)

    def grads(x):
        c, left, _, up, _ = _shifts(pad_hw(x, "edge"))
        return (jnp.mean(jnp.abs(c - left), axis=-1, keepdims=True),
                jnp.mean(jnp.abs(c - up), axis=-1, keepdims=True))

    pred_w, pred_h = grads(pred)
    target_w, target_h = grads(target)
    loss = jnp.abs(target_w - pred_w) + jnp.abs(target_h - pred_h)
    if t_grad > 0:
        loss = loss - t_grad
        loss = jnp.where(loss < 0, 0.0, loss)
    return loss


def cost_confidence(target: jax.Array) -> jax.Array:
    """Target mass at its argmax bin and the existing neighbours a-1, a+1 (first index on ties) -> (B,h,w,1)."""
    n = target.shape[-1]
    a = jnp.argmax(target, axis=-1)[..., None]
    bins = jnp.concatenate([a - 1, a, a + 1], axis=-1)
    valid = (bins >= 0) & (bins <= n - 1)
    local = jnp.take_along_axis(target, jnp.clip(bins, 0, n - 1), axis=-1)
    return jnp.sum(local * valid.astype(target.dtype), axis=-1, keepdims=True)


def cost_loss(pred: jax.Array, target: jax.Array | Sequence[jax.Array], *, use_confi: bool = True,
              t_confi: float = 0.0, t_l1: float = 0.0, l1_rate: float = 0.0, ce_rate: float = 0.0,
              t_ce: float = 1.0, smol1_rate: float = 1.0, total_tl1: bool = False,
              a_smol1: float | str = 0.05) -> jax.Array:
    """CostLoss (spec §5.5) between probability volumes (B,h,w,N), bins last -> (B,h,w,1).

    target: one volume or a sequence of candidate volumes (then use_confi must be True and each pixel takes the
    candidate with the highest confidence, first on ties).
    * weight: with use_confi the confidence (`cost_confidence`, set to 0 where < t_confi), else 1.
    * ce part: ce_rate * (-sum_j q log(p + 1e-5) + sum_j q log(q + 1e-5)); with t_ce != 1 both p and q are first
      replaced by softmax(. / t_ce) (and the l1/smooth-L1 parts then see the softmaxed pred and label).
    * l1 part: e = |p - q|; t_l1 > 0 and total_tl1: E = sum_j e, E <- 0 where E < t_l1; t_l1 > 0 and not
      total_tl1: e <- 0 where e < t_l1, then E = sum_j e; t_l1 = 0: E = sum_j e (the original crashes there).
    * smooth-L1 part: L = sum_j |p - t|, thr = a_smol1 (or 'max<f>': f * max(L)),
      smol1_rate * (thr * L - thr^2 / 2 where L > thr, else sum_j (p - t)^2 / 2); t is the *last* candidate
      target (softmaxed when use_confi and t_ce != 1), as in the original.
    Zeroed entries carry no gradient. The target is not detached here (the stages already provide constants).
    """
    _check_rates("cost_loss", l1_rate=l1_rate, ce_rate=ce_rate, smol1_rate=smol1_rate)
    targets = [target] if isinstance(target, jax.Array) or hasattr(target, "shape") else list(target)
    if len(targets) > 1 and not use_confi:
        raise ValueError("cost_loss: several targets need use_confi=True to select one per pixel")
    last = targets[-1]
    if use_confi:
        confis = []
        for t in targets:
            if t_ce != 1:
                t = jax.nn.softmax(t, axis=-1)
            last = t
            confis.append(cost_confidence(t))
        if len(targets) == 1:
            weight, label = confis[0], targets[0]
        else:
            confis = jnp.concatenate(confis, axis=-1)  # (B,h,w,T)
            select = jnp.argmax(confis, axis=-1)
            weight = jnp.max(confis, axis=-1, keepdims=True)
            stacked = jnp.stack(targets, axis=-2)  # (B,h,w,T,N)
            label = jnp.take_along_axis(stacked, select[..., None, None], axis=-2)[..., 0, :]
        weight = jnp.where(weight < t_confi, 0.0, weight)
    else:
        label = targets[0]
        weight = None

    loss = jnp.zeros(pred.shape[:-1] + (1,), pred.dtype)
    if ce_rate > 0:
        if t_ce != 1:
            pred = jax.nn.softmax(pred / t_ce, axis=-1)
            label = jax.nn.softmax(label / t_ce, axis=-1)
        ce = -jnp.sum(jnp.log(pred + COST_EPS) * label, axis=-1, keepdims=True)
        ce = ce + jnp.sum(jnp.log(label + COST_EPS) * label, axis=-1, keepdims=True)
        loss = loss + ce_rate * ce
    if l1_rate > 0:
        err = jnp.abs(pred - label)
        if t_l1 > 0 and total_tl1:
            err = jnp.sum(err, axis=-1, keepdims=True)
            err = jnp.where(err < t_l1, 0.0, err)
        else:
            if t_l1 > 0:
                err = jnp.where(err < t_l1, 0.0, err)
            err = jnp.sum(err, axis=-1, keepdims=True)
        loss = loss + l1_rate * err
    if smol1_rate > 0:
        l1 = jnp.sum(jnp.abs(pred - last), axis=-1, keepdims=True)
        if isinstance(a_smol1, str):
            if not a_smol1.startswith("max"):
                raise ValueError(f"cost_loss: a_smol1 must be a number or 'max<factor>', got {a_smol1!r}")
            thres = jnp.max(l1) * float(a_smol1[3:])
        else:
            thres = a_smol1
        mask = (l1 > thres).astype(pred.dtype)
        l1_part = thres * l1 - 0.5 * thres**2
        l2_part = 0.5 * jnp.sum((pred - last) ** 2, axis=-1, keepdims=True)
        loss = loss + smol1_rate * (mask * l1_part + (1 - mask) * l2_part)
    if weight is not None:
        loss = loss * weight
    return loss


# ----------------------------------------------------------------------------------------------------------
# Declarative loss table

LOSS_FUNCTIONS = {"photo": photo_loss, "smooth": smooth_loss, "grad": grad_loss, "cost": cost_loss}
# Parameters each kind accepts, with the original constructors' defaults (used for the yaml form).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "photo": {"l1_rate": 1, "l2_rate": 0, "ssim_rate": 0},
    "smooth": {"gamma_rate": 1, "more_kernel": False, "gray_img": False, "relative_smo": False},
    "grad": {"t_grad": 0},
    "cost": {"use_confi": True, "t_confi": 0, "t_l1": 0, "a_smol1": 0.05, "l1_rate": 0, "ce_rate": 0,
             "t_ce": 1, "smol1_rate": 1, "total_tl1": False},
}
# The original's loss class names (the yaml's `type`) -> kind.
ORIGINAL_TYPES = {"PhotoLoss": "photo", "SmoothLoss": "smooth", "GradLoss": "grad", "CostLoss": "cost"}
# The original's argument name of the second input, per kind.
_TARGET_ARG = {"photo": "target_n", "smooth": "image_n", "grad": "target_n", "cost": "targets_n"}
# Accepted by the original constructors but without effect here (or unsupported unless left at None):
# 'other_side' only chose the side a '{}' target name was filled with, and names are literal here.
_IGNORED_ARGS = {"device", "other_side"}
_UNSUPPORTED_IF_SET = {"cost": ("pred_img_n", "target_img_n", "real_img_n", "able_mask_n")}
_FLAT_KEYS = {"name", "kind", "pred", "target", "image", "rate", "mask", "params"}
_YAML_KEYS = {"type", "rate", "mask", "name", "args"}


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One loss term of a group (one `loss_terms` entry of the training yaml).

    pred, target: names looked up in the batch, then in the model outputs (for 'smooth' `target` is the
    image, or None; for 'cost' it may be a tuple of candidate names). Names are literal: the original's
    '{}' side placeholders are written out (the side of every group is fixed, spec §5.6).
    rate: the weight of rate * mean(map). mask: the name of a map multiplied into the loss map, or None.
    params: keyword arguments of the kind's loss function (validated against `KIND_DEFAULTS`).
    """

    name: str
    kind: str
    pred: str
    target: str | tuple[str, ...] | None
    rate: float
    mask: str | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in LOSS_FUNCTIONS:
            raise ValueError(f"loss term {self.name!r}: unknown kind {self.kind!r} (one of {sorted(LOSS_FUNCTIONS)})")
        unknown = sorted(set(self.params) - set(KIND_DEFAULTS[self.kind]))
        if unknown:
            raise ValueError(f"loss term {self.name!r}: unknown {self.kind} parameters {unknown} "
                             f"(accepted: {sorted(KIND_DEFAULTS[self.kind])})")
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        names = [self.pred, self.mask, *(self.target if isinstance(self.target, tuple) else [self.target])]
        if any("{" in n for n in names if n is not None):
            raise ValueError(f"loss term {self.name!r}: names are literal; write the side out instead of "
                             f"the original's '{{}}' placeholder: {[n for n in names if n and '{' in n]}")
        if isinstance(self.target, tuple) and self.kind != "cost":
            raise ValueError(f"loss term {self.name!r}: only 'cost' terms take several targets")
        if self.target is None and self.kind != "smooth":
            raise ValueError(f"loss term {self.name!r}: a {self.kind} term needs a target")
        object.__setattr__(self, "params", dict(self.params))
        merged = {**KIND_DEFAULTS[self.kind], **self.params}
        if self.kind == "photo":
            _check_rates(f"loss term {self.name!r}", l1_rate=merged["l1_rate"], l2_rate=merged["l2_rate"],
                         ssim_rate=merged["ssim_rate"])
        if self.kind == "cost":
            _check_rates(f"loss term {self.name!r}", l1_rate=merged["l1_rate"], ce_rate=merged["ce_rate"],
                         smol1_rate=merged["smol1_rate"])
            if isinstance(self.target, tuple) and len(self.target) > 1 and not merged["use_confi"]:
                raise ValueError(f"loss term {self.name!r}: several targets need use_confi")

    def __hash__(self):
        return hash((self.name, self.kind, self.pred, self.target, self.rate, self.mask,
                     tuple(sorted(self.params.items()))))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str | None = None) -> "LossTerm":
        """Build a term from a config dict, in either form:

        * flat: {name, kind, pred, target (or image for smooth), rate, mask?, params?}; missing
          params take the loss function's defaults;
        * the original yaml's `loss_terms` entry: {type: PhotoLoss|SmoothLoss|GradLoss|CostLoss, rate, mask?,
          name? (ignored, the yaml has an empty one), args: {pred_n, target_n|image_n|targets_n, ...}}; the
          term name comes from `name` (the yaml key) and missing args take the *original constructors'*
          defaults, written out into params.
        Unknown keys (top level, params or args) raise ValueError naming them."""
        if "type" in d or "args" in d:
            return cls._from_original(d, name)
        unknown = sorted(set(d) - _FLAT_KEYS)
        if unknown:
            raise ValueError(f"loss term {name or d.get('name')!r}: unknown keys {unknown} "
                             f"(accepted: {sorted(_FLAT_KEYS)})")
        term_name = d.get("name", name)
        if term_name is None:
            raise ValueError("loss term: a name is required")
        for key in ("kind", "pred", "rate"):
            if key not in d:
                raise ValueError(f"loss term {term_name!r}: missing key {key!r}")
        if "image" in d and "target" in d:
            raise ValueError(f"loss term {term_name!r}: give either 'target' or 'image', not both")
        if "image" in d and d["kind"] != "smooth":
            raise ValueError(f"loss term {term_name!r}: 'image' is only for smooth terms (use 'target')")
        target = d.get("target", d.get("image"))
        return cls(name=term_name, kind=d["kind"], pred=d["pred"], target=_target_value(target),
                   rate=float(d["rate"]), mask=d.get("mask"), params=dict(d.get("params") or {}))

    @classmethod
    def _from_original(cls, d: Mapping[str, Any], name: str | None) -> "LossTerm":
        unknown = sorted(set(d) - _YAML_KEYS)
        if unknown:
            raise ValueError(f"loss term {name!r}: unknown keys {unknown} (accepted: {sorted(_YAML_KEYS)})")
        if name is None:
            raise ValueError("loss term in the original yaml form: pass its name (the yaml key)")
        if d.get("type") not in ORIGINAL_TYPES:
            raise ValueError(f"loss term {name!r}: unknown type {d.get('type')!r} (one of {sorted(ORIGINAL_TYPES)})")
        kind = ORIGINAL_TYPES[d["type"]]
        args = dict(d.get("args") or {})
        for key in _IGNORED_ARGS:
            args.pop(key, None)
        if kind == "smooth":
            args.pop("map_ch", None)  # the channel count: taken from the input
        for key in _UNSUPPORTED_IF_SET.get(kind, ()):
            if args.pop(key, None) is not None:
                raise ValueError(f"loss term {name!r}: {d['type']} argument {key!r} (the hints mask) is not supported")
        if "pred_n" not in args:
            raise ValueError(f"loss term {name!r}: missing args.pred_n")
        pred = args.pop("pred_n")
        target_arg = _TARGET_ARG[kind]
        if target_arg not in args and kind != "smooth":
            raise ValueError(f"loss term {name!r}: missing args.{target_arg}")
        target = args.pop(target_arg, None)
        unknown = sorted(set(args) - set(KIND_DEFAULTS[kind]))
        if unknown:
            raise ValueError(f"loss term {name!r}: unknown {d['type']} args {unknown}")
        params = {**KIND_DEFAULTS[kind], **args}
        return cls(name=name, kind=kind, pred=pred, target=_target_value(target), rate=float(d["rate"]),
                   mask=d.get("mask"), params=params)


def _target_value(target):
    if isinstance(target, (list, tuple)):
        return target[0] if len(target) == 1 else tuple(target)
    return target


def terms_from_config(loss_terms: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]
                      ) -> tuple[LossTerm, ...]:
    """A group's terms, in order, from a {name: term dict} mapping (the yaml's `loss_terms`) or a list of term
    dicts (each with its `name`)."""
    if isinstance(loss_terms, Mapping):
        return tuple(LossTerm.from_dict(v, name=k) for k, v in loss_terms.items())
    return tuple(LossTerm.from_dict(v) for v in loss_terms)


def _photo(name, pred, target, rate, *, l1=0, l2=0, ssim_=0, mask=None):
    return LossTerm(name, "photo", pred, target, rate, mask, {"l1_rate": l1, "l2_rate": l2, "ssim_rate": ssim_})


def _smooth(name, pred, image, rate):
    return LossTerm(name, "smooth", pred, image, rate, None,
                    {"gamma_rate": 2, "more_kernel": True, "gray_img": True, "relative_smo": False})


def _cost(name, pred, target, rate, **params):
    return LossTerm(name, "cost", pred, target, rate, None, {**KIND_DEFAULTS["cost"], **params})


# The training yaml's loss groups (spec §5.6; param_group1/2/3 start at epochs 1/21/31). All names are literal.
TRAINING_LOSSES: dict[str, tuple[LossTerm, ...]] = {
    "param_group1": (
        _photo("Mono_photo_discrete", "mono_disproj_img_s_0_o", "color_s_aug", 1, l1=1),
        _photo("Mono_perceptual-1", "mono_synth_feats_s_0_o", "mono_raw_feats_s_0_o", 0.01, l2=1),
        _photo("Mono_perceptual-2", "mono_synth_feats_s_1_o", "mono_raw_feats_s_1_o", 0.01, l2=1),
        _photo("Mono_perceptual-3", "mono_synth_feats_s_2_o", "mono_raw_feats_s_2_o", 0.01, l2=1),
        _smooth("Mono_smooth", "mono_disp_0_o", "color_o", 0.0008),
    ),
    "param_group2": (
        _photo("Stereo_photo", "stereo_proj_img_o_0_s", "fused_occ_color_s", 1, l1=0.15, ssim_=0.85),
        _smooth("Stereo_smooth", "stereo_disp_0_s", "color_s", 0.008),
        _cost("Stereo_cost3", "cost_3-s", "mono_pvolume_cost_3_s", 0.01, smol1_rate=0, l1_rate=1, t_l1=1,
              total_tl1=True),
        _cost("Stereo_cost2", "cost_2-s", "mono_pvolume_cost_2_s", 0.01, smol1_rate=0, l1_rate=1, t_l1=1,
              total_tl1=True),
        _cost("Stereo_cost1", "cost_1-s", "mono_pvolume_cost_1_s", 0.01, smol1_rate=0, l1_rate=1, t_l1=1,
              total_tl1=True),
        LossTerm("Stereo_gui1", "grad", "stereo_disp_0_s", "mono_disp_0_s", 0.01, None, {"t_grad": 0}),
        _photo("Stereo_gui2", "stereo_disp_0_s", "mono_disp_0_s", 0.01, l1=1, mask="inv_edge_mask_s"),
    ),
    "param_group3": (
        _cost("Refine_hints", "refmono_pvolume_wg_0_s", "fuse_pvolume_s", 1, use_confi=False, smol1_rate=0,
              ce_rate=1),
    ),
}


def _get(name: str, outputs: Mapping, batch: Mapping):
    # The original merges the outputs, then the inputs into one dict: an input wins a name clash.
    if name in batch:
        return batch[name]
    if name in outputs:
        return outputs[name]
    raise KeyError(f"loss input {name!r} is neither in the batch nor in the outputs")


def _get_float32(name: str, outputs: Mapping, batch: Mapping) -> jax.Array:
    """A loss input in float32: under bfloat16 compute the losses still run in float32 (a no-op in float32)."""
    return jnp.asarray(_get(name, outputs, batch), jnp.float32)


def term_map(term: LossTerm, outputs: Mapping, batch: Mapping) -> jax.Array:
    """The term's per-pixel map (B,h,w,1), before the mask, rate and mean."""
    pred = _get_float32(term.pred, outputs, batch)
    if term.target is None:
        target = None
    elif isinstance(term.target, tuple):
        target = [_get_float32(t, outputs, batch) for t in term.target]
    else:
        target = _get_float32(term.target, outputs, batch)
    return LOSS_FUNCTIONS[term.kind](pred, target, **term.params)


def evaluate_terms(terms: Sequence[LossTerm], outputs: Mapping, batch: Mapping):
    """A group's loss as `Base_of_Model._compute_losses` computes it (spec §5.1) on its side.

    Returns (total, values, maps): total = sum over terms of rate * mean(map) (mean over all B*h*w elements,
    a masked map is *not* renormalised); values[name] = the logged, unweighted `<side>/<name>-value` (the
    plain mean, or sum(map) / sum(mask) for a masked term; gradient stopped); maps[name] = the map (B,h,w,1),
    already multiplied by the mask (the original's `<name>/<side>` entry)."""
    total = jnp.zeros((), jnp.float32)
    values, maps = {}, {}
    for term in terms:
        loss = term_map(term, outputs, batch)
        if term.mask is not None:
            mask = jnp.asarray(_get(term.mask, outputs, batch)).astype(loss.dtype)
            loss = loss * mask
            value = jnp.sum(loss) / jnp.sum(mask)
        else:
            value = jnp.mean(loss)
        total = total + term.rate * jnp.mean(loss)
        values[term.name] = jax.lax.stop_gradient(value)
        maps[term.name] = loss
    return total, values, maps
