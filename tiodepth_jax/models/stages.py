"""Training-mode forward of the three TiO-Depth stages (spec §2.6, §6.3), as pure functions of the model.

Each stage runs its path in training mode (decoder BatchNorm on batch statistics, running statistics
updated) and adds what its losses consume, under the original's names:

    out = stage1(model, vgg, batch)            # Mono on color_{train_side}_aug + discrete warp + VGG
    out = stage2(model, batch, out)            # Stereo + cost guides + reprojections + occlusion target
    out = stage3(model, batch, out)            # Refine + OccLap fusion target

`batch` holds color_s, color_o, color_s_aug, color_o_aug (B, H, W, 3) in [0, 1], K, inv_K, T (B, 4, 4) and
direct (B,). Every output of an earlier stage is detached when the next one starts (spec §12.4 item 21),
so a training step can differentiate one stage's losses with respect to the parameters it updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tiodepth_jax.models.tiodepth import TiODepth
from tiodepth_jax.ops.geometry import (bin_depths, discrete_synthesis, fused_target, occlap_fusion, project_image,
                                       self_occlusion_mask, stereo_visible_mask)
from tiodepth_jax.ops.resize import interpolate_bilinear

COST_GUIDE_FACTORS = (4, 2, 1, 0.5)  # the fork's ViT-grid cost guides, spec §2.6.2 step 1


def other(side: str) -> str:
    return "o" if side == "s" else "s"


def frame_transform(T, frame: str, *, mono: bool):
    """The original's sign handling of T[:, 0, 3] (spec §12.7): the Mono warp negates it for an 'o' frame,
    the Stereo/Refine projections for an 's' frame. With the default sides it never fires."""
    if ("o" in frame) == mono:
        return T.at[:, 0, 3].multiply(-1)
    return T


def stage1(model: TiODepth, vgg, batch: dict) -> dict:
    """Mono stage (spec §2.6.1): mono path on the augmented training side, the discrete-warp synthesis of the
    other view and the VGG19 features of synthesis (with gradient) and target (without)."""
    t = model.cfg.train_side
    frame = other(t)
    out = model.mono(batch[f"color_{t}_aug"], t, train=True)
    T = frame_transform(batch["T"], frame, mono=True)
    cfg = model.cfg
    depths = jnp.asarray(bin_depths(cfg.d2d, cfg.min_disp, cfg.max_disp, cfg.n_bins))
    synth = discrete_synthesis(out[f"mono_dvolume_0_{t}"], batch[f"color_{t}_aug"], depths,
                               batch["inv_K"], T, batch["K"])
    out[f"mono_disproj_img_{frame}_0_{t}"] = synth
    raw = jax.lax.stop_gradient(vgg(batch[f"color_{frame}_aug"]))
    for k, (r, s) in enumerate(zip(raw, vgg(synth))):
        out[f"mono_raw_feats_{frame}_{k}_{t}"] = r
        out[f"mono_synth_feats_{frame}_{k}_{t}"] = s
    return out


def cost_guides(pvolume, side: str) -> dict:
    """Detached mono distributions at the MFM scales: successive bilinear (align_corners True) resizes to
    int((H//14) * f) x int((W//14) * f) for f = 4, 2, 1, 0.5 -> mono_pvolume_cost_{1..4}_{side}."""
    base_h, base_w = pvolume.shape[1] // 14, pvolume.shape[2] // 14
    out, p = {}, jax.lax.stop_gradient(pvolume)
    for i, f in enumerate(COST_GUIDE_FACTORS, 1):
        p = interpolate_bilinear(p, size=(int(base_h * f), int(base_w * f)), align_corners=True)
        out[f"mono_pvolume_cost_{i}_{side}"] = p
    return out


def stage2(model: TiODepth, batch: dict, outputs: dict) -> dict:
    """Stereo stage (spec §2.6.2) for target side s: stereo path, cost guides, the stereo reprojection of the
    non-augmented other view, and the occlusion-aware photometric target built from the mono prediction."""
    out = model.stereo(batch["color_s_aug"], batch["color_o_aug"], batch["direct"], train=True,
                       outputs=jax.lax.stop_gradient(outputs))
    t, frame = "s", "o"
    out.update(cost_guides(out[f"mono_pvolume_0_{t}"], t))
    T = frame_transform(batch["T"], frame, mono=False)
    source = batch[f"color_{frame}"]
    out[f"stereo_proj_img_{frame}_0_{t}"], _ = project_image(out[f"stereo_depth_0_{t}"], batch["inv_K"], T,
                                                             batch["K"], source)
    mono_proj, edge = project_image(out[f"mono_depth_0_{t}"], batch["inv_K"], T, batch["K"], source, with_mask=True)
    out[f"mono_proj_img_{frame}_0_{t}"] = mono_proj
    out[f"edge_mask_{t}"], out[f"inv_edge_mask_{t}"] = edge, 1 - edge
    occ = stereo_visible_mask(out[f"mono_disp_0_{t}"], batch["direct"])
    out[f"mono_occ_mask_{t}"] = occ
    out[f"fused_occ_color_{t}"], out[f"invalid_mask_{t}"] = fused_target(batch[f"color_{t}"], mono_proj, occ, edge)
    return out


def stage3(model: TiODepth, batch: dict, outputs: dict) -> dict:
    """Refine stage (spec §2.6.3): the midout path on the stereo stage's s features and the OccLap fusion of
    the mono and stereo predictions (the distillation target), plus the original's visualisation outputs."""
    out = model.refine(batch["color_s_aug"], train=True, outputs=jax.lax.stop_gradient(outputs))
    t, frame = "s", "o"
    fused = occlap_fusion(out[f"mono_depth_0_{t}"], out[f"stereo_depth_0_{t}"], out[f"stereo_disp_0_{t}"],
                          out[f"mono_pvolume_0_{t}"], out[f"stereo_pvolume_0_{t}"], batch["direct"], model.cfg.d2d)
    for k, v in fused.items():
        out[f"{k}_{t}"] = v
    T = frame_transform(batch["T"], frame, mono=False)
    source = batch[f"color_{frame}"]
    out[f"fuse_proj_img_{frame}_0_{t}"], _ = project_image(fused["fuse_depth"], batch["inv_K"], T, batch["K"], source)
    refmono_proj, _ = project_image(out[f"refmono_depth_0_{t}"], batch["inv_K"], T, batch["K"], source)
    out[f"refmono_proj_img_{frame}_0_{t}"] = refmono_proj
    occ = (self_occlusion_mask(fused["fuse_disp"], jnp.asarray(batch["direct"]) * -1) > 0.5).astype(jnp.float32)
    out[f"fuse_occ_mask_{t}"] = occ
    out[f"fused_fuse_occ_color_{t}"] = occ * batch[f"color_{t}"] + (1 - occ) * refmono_proj
    return out
