"""Depth-Anything-V2 fixture sets: every stored pos-embed, tapped layer, DPT stage and depth map."""

from __future__ import annotations

import jax
from flax import nnx

from convert.depth_anything_v2 import convert_state_dict
from tests.parity import FixtureSet, failures_table, nchw
from tiodepth_jax.models.dinov2 import interpolate_pos_embed


def cases(fs: FixtureSet):
    """One case per stored input size."""
    return [n[: -len("/input")] for n in fs.names() if n.endswith("/input")]


def check(fs: FixtureSet, size: str):
    cfg = fs.meta["config"]
    model, report = convert_state_dict(fs.state_dict(), variant=cfg["constructor_args"]["encoder"],
                                       taps=tuple(cfg["intermediate_layer_idx"]))
    assert not report.missing and not report.unexpected

    @nnx.jit
    def run(model, x):
        inter = model.intermediate_layers(x)
        pos = interpolate_pos_embed(model.pretrained.pos_embed[...], model.grid(x), model.cfg.dinov2)
        return inter, pos, model.stage_outputs(x)

    x = fs.whole(f"{size}/input").transpose(0, 2, 3, 1)  # NCHW -> NHWC
    inter, pos, stages = jax.device_get(run(model, x))
    ours = {f"{size}/pos_embed_interp": pos, f"{size}/depth": stages.pop("depth")}
    for i, (tokens, cls) in enumerate(inter):
        ours[f"{size}/inter/layer{i}/tokens"] = tokens
        ours[f"{size}/inter/layer{i}/cls"] = cls
    ours.update({f"{size}/head/{k}": nchw(v) for k, v in stages.items()})
    expected = [n for n in fs.names(size + "/") if n != f"{size}/input"]
    assert sorted(expected) == sorted(ours), f"arrays not produced: {sorted(set(expected) - set(ours))}"
    results = [fs.compare(n, ours[n]) for n in expected]
    worst = max(results, key=lambda c: c.rel_l2 / c.tol)
    print(f"{fs.name} {size}: {len(results)} arrays, worst {worst.name} rel L2 {worst.rel_l2:.2e} (tol {worst.tol:.0e})")
    assert all(c.ok for c in results), f"{fs.name} {size} parity failures:\n" + failures_table(results)
