"""TiO-Depth fixture sets: DINOv2 taps, and the Mono / Stereo / Refine eval outputs at every stored size.

The model comes from the fixture recipe through `convert.tiodepth`; every stored array under a case's
prefix is compared (aliases resolve to the arrays they repeat), none is skipped silently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.tiodepth import convert_state_dict
from tests.parity import FixtureSet, failures_table, nchw
from tiodepth_jax.models.dinov2 import interpolate_pos_embed
from tiodepth_jax.models.tiodepth import TiODepthConfig

# The original's names for a path's final outputs -> ours.
FINAL = {"depth,s": "depth", "disp,s": "disp", "rawdepth": "depth", "rawdisp": "disp", "sdepth": "depth",
         "sdisp": "disp", "refdepth": "depth", "refdisp": "disp"}
_MODELS: dict = {}


def model_for(fs: FixtureSet):
    """The converted model, built once per fixture set."""
    if fs.name not in _MODELS:
        mp = fs.meta["config"]["model_params"]
        cfg = TiODepthConfig(variant="vitb", image_size=tuple(mp["image_size"]), min_disp=mp["min_disp"],
                             max_disp=mp["max_disp"], d2d=mp["d2d"], n_bins=mp["out_ch"],
                             decoder_channels=tuple(mp["decoder_ch_num"]), decoder_name=mp["decoder_name"],
                             train_side=mp["set_train_side"])
        model, report = convert_state_dict(fs.state_dict(), cfg)
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


def compare_all(fs: FixtureSet, prefix: str, ours: dict, exclude=()) -> None:
    names = [n for n in fs.names(prefix) if n[len(prefix):] not in exclude]
    missing = [n for n in names if _missing(ours, n[len(prefix):])]
    assert not missing, f"arrays not produced: {missing}"
    results = [fs.compare(n, lookup(ours, n[len(prefix):])) for n in names]
    worst = max(results, key=lambda c: c.rel_l2 / c.tol)
    print(f"{fs.name} {prefix}: {len(results)} arrays, worst {worst.name} rel L2 {worst.rel_l2:.2e} (tol {worst.tol:.1e})")
    assert all(c.ok for c in results), f"{fs.name} {prefix} parity failures:\n" + failures_table(results)


def _missing(ours: dict, key: str) -> bool:
    try:
        lookup(ours, key)
    except (KeyError, IndexError):
        return True
    return False


def cases(fs: FixtureSet):
    sizes = sorted({n.split("/")[1] for n in fs.names("eval/")})
    vit = sorted({"/".join(n.split("/")[:2]) for n in fs.names("vit/")})
    return vit + [f"eval/{s}/{mode}" for s in sizes for mode in ("Mono", "Stereo", "Refine")]


def check(fs: FixtureSet, case: str):
    model = model_for(fs)
    if case.startswith("vit/"):
        check_vit(fs, case, model)
    else:
        _, size, mode = case.split("/")
        out = nnx.jit(lambda m, batch: m.inference(batch, (mode,)))(model, inputs(fs, size))
        compare_all(fs, case + "/", jax.device_get(out))


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
