"""A group's optimiser (`tiodepth_jax.train.optim.optimizer`) against PyTorch: Adam with betas (0.5, 0.999),
`weight_decay` and `torch.nn.utils.clip_grad_norm_`, over several steps; and the config keys reaching the
training step (a step with clipping and weight decay differs from the default one and equals the update
computed by hand from the step's own gradients)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tiodepth_jax.config import OptimConfig, load_config
from tiodepth_jax.data.synthetic import SceneConfig, make_batch
from tiodepth_jax.losses import TRAINING_LOSSES
from tiodepth_jax.models.tiodepth import TiODepth
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features
from tiodepth_jax.train.optim import active_groups, group_filter, lr_factors, optimizer
from tiodepth_jax.train.step import init_state, make_step, stage_loss

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Group 1's terms without the VGG perceptual ones: the same update path, a much smaller program to compile.
MONO_TERMS = {"param_group1": tuple(t for t in TRAINING_LOSSES["param_group1"] if "perceptual" not in t.name)}
SHAPES = {"w": (4, 3, 3, 8), "b": (8,), "v": (5, 7)}


def _torch_steps(params, grads_per_step, lr, *, weight_decay, clip):
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(list(tensors.values()), lr=lr, betas=(0.5, 0.999), eps=1e-8, weight_decay=weight_decay)
    for grads in grads_per_step:
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def _optax_steps(params, grads_per_step, lr, *, weight_decay, clip):
    tx = optimizer(OptimConfig(weight_decay=weight_decay, clip_grad_norm=clip))
    params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(params)
    for grads in grads_per_step:
        direction, state = tx.update({k: jnp.asarray(v) for k, v in grads.items()}, state, params)
        params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
    return {k: np.asarray(v) for k, v in params.items()}


@pytest.mark.parametrize("weight_decay,clip", [(0.0, None), (0.05, None), (0.0, 0.5), (0.05, 0.5), (0.0, 1e3)])
def test_matches_torch_adam(weight_decay, clip):
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: (rng.normal(size=s) * (1 + 3 * i)).astype(np.float32) for k, s in SHAPES.items()} for i in range(4)]
    ours = _optax_steps(params, grads, 1e-2, weight_decay=weight_decay, clip=clip)
    ref = _torch_steps(params, grads, 1e-2, weight_decay=weight_decay, clip=clip)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-7, err_msg=k)
    if weight_decay or clip == 0.5:  # the options change the result
        plain = _optax_steps(params, grads, 1e-2, weight_decay=0.0, clip=None)
        assert max(np.max(np.abs(ours[k] - plain[k])) for k in SHAPES) > 1e-4


def test_plain_adam_keeps_its_state_layout():
    """Without clipping and decay the optimiser is optax's scale_by_adam itself (checkpoints stay compatible)."""
    tx = optimizer(OptimConfig())
    state = tx.init({"w": jnp.zeros(3)})
    assert type(state).__name__ == "ScaleByAdamState"


def _tiny():
    cfg = load_config(DEMO, ["workdir=unused", "model.encoder_depth=1", "model.encoder_taps=[0,0,0,0]",
                             "model.decoder_channels=[16,16,16,16]", "model.image_size=[28,56]",
                             "data.image_size=[28,56]", "data.crop_size=[28,56]", "val.image_size=[28,56]"])
    model = TiODepth(cfg.model, rngs=nnx.Rngs(0))
    # MONO_TERMS never read the VGG features: zeros stand in for its weights (no slow random init)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: VGG19Features(VGG19Config(), rngs=nnx.Rngs(1))))
    vgg = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract))
    batch = {k: jnp.asarray(v) for k, v in make_batch(SceneConfig(height=28, width=56), [0, 1]).items()}
    return cfg, model, vgg, batch


def test_clip_and_decay_reach_the_step():
    """optim.clip_grad_norm and optim.weight_decay from the config change the step: it equals the update
    computed by hand from the step's own gradients and differs from the plain Adam update."""
    cfg, model, vgg, batch = _tiny()
    graphdef = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
    vgg_graphdef, vgg_params = nnx.split(vgg)
    options = load_config(DEMO, ["workdir=unused", "optim.clip_grad_norm=0.01", "optim.weight_decay=0.5"]).optim
    groups, frozen, epoch = cfg.optim.groups, cfg.model.frozen, 1
    name, group = groups[0]
    tx = optimizer(options)
    step = make_step(graphdef, vgg_graphdef, groups, active_groups(groups, epoch), MONO_TERMS, frozen, tx)

    @jax.jit
    def step_and_gradients(state, vgg_params, batch, factors):
        """The stepped parameters and the group-1 parameters and gradients at `state`: one program, as the step
        computes the same forward and backward."""
        params_g, params_rest = nnx.split_state(state["params"], group_filter(group, frozen), ...)
        loss_fn = stage_loss(graphdef, nnx.merge(vgg_graphdef, vgg_params), MONO_TERMS, 0, name)
        grads = jax.grad(loss_fn, has_aux=True)(params_g, params_rest, state["batch_stats"], batch, {})[0]
        return step(state, vgg_params, batch, factors)[0]["params"], params_g, grads

    stepped, params_g, grads = step_and_gradients(init_state(model, groups, frozen, tx), vgg_params, batch,
                                                  lr_factors(groups, epoch))
    stepped = dict(nnx.to_flat_state(stepped))
    # By hand: the group-1 gradients at the initial parameters, clipped to norm 0.01 as torch does, plus
    # 0.5 * param, then Adam's first step: m / (sqrt(v) + eps) with bias correction = g' / (|g'| + eps).
    flat_g = {k: np.asarray(v, np.float64) for k, v in nnx.to_flat_state(grads)}
    flat_p = {k: np.asarray(v, np.float64) for k, v in nnx.to_flat_state(params_g)}
    norm = np.linalg.norm([np.linalg.norm(g) for g in flat_g.values()])
    assert norm > 0.01  # the clipping is active
    coef = min(1.0, 0.01 / (norm + 1e-6))
    lr = group.lr * group.lr_factor(epoch) * group.members["BB"]
    changed = 0
    for k, p in flat_p.items():
        g = flat_g[k] * coef + 0.5 * p
        want = p - lr * g / (np.abs(g) + 1e-8)
        np.testing.assert_allclose(np.asarray(stepped[k]), want, rtol=0, atol=lr * 1e-3, err_msg=str(k))
        plain = p - lr * flat_g[k] / (np.abs(flat_g[k]) + 1e-8)
        changed += int(np.max(np.abs(want - plain)) > lr * 1e-2)
    assert changed > len(flat_p) // 2  # and differs from the plain Adam step


def test_bfloat16_compute_keeps_float32_parameters_and_adam_moments():
    """dtype: bfloat16 runs the network in bfloat16 while the parameters, the BatchNorm statistics and every
    group's Adam moments stay float32, before and after a step of all three groups (dtypes come from tracing,
    so `jax.eval_shape` of the step shows them without compiling it)."""
    cfg = load_config(DEMO, ["workdir=unused", "dtype=bfloat16", "model.encoder_depth=1",
                             "model.encoder_taps=[0,0,0,0]", "model.decoder_channels=[16,16,16,16]",
                             "model.image_size=[28,56]", "data.image_size=[28,56]", "data.crop_size=[28,56]"])
    groups, frozen, tx = cfg.optim.groups, cfg.model.frozen, optimizer(cfg.optim)
    build = lambda: TiODepth(cfg.model, dtype=cfg.compute_dtype, rngs=nnx.Rngs(0))  # noqa: E731
    vgg = lambda: VGG19Features(VGG19Config(), dtype=cfg.compute_dtype, rngs=nnx.Rngs(1))  # noqa: E731
    graphdef = nnx.split(nnx.eval_shape(build), nnx.Param, nnx.BatchStat)[0]
    vgg_graphdef, vgg_params = nnx.split(nnx.eval_shape(vgg))
    state = jax.eval_shape(lambda: init_state(build(), groups, frozen, tx))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
             for k, v in make_batch(SceneConfig(height=28, width=56), [0, 1]).items()}
    last = max(g.st_epoch for _, g in groups)
    step = make_step(graphdef, vgg_graphdef, groups, active_groups(groups, last), TRAINING_LOSSES, frozen, tx)
    new_state, metrics = jax.eval_shape(step, state, vgg_params, batch, lr_factors(groups, last))

    def float_dtypes(tree):
        return {a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}

    for s in (state, new_state):
        assert float_dtypes(s) == {jnp.dtype(jnp.float32)}
        assert set(s["opt"]) == {name for name, _ in groups}
        for opt in s["opt"].values():
            assert float_dtypes((opt.mu, opt.nu)) == {jnp.dtype(jnp.float32)}
    assert float_dtypes(metrics) == {jnp.dtype(jnp.float32)}
    model = nnx.eval_shape(build)
    out = nnx.eval_shape(lambda m, x: m.mono(x, train=True), model, batch["color_s"])
    assert {f.dtype for f in out["enc_feats_s"]} == {jnp.dtype(jnp.bfloat16)}
    assert out["mono_dvolume_0_s"].dtype == jnp.bfloat16
