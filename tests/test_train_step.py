"""One real TiO-Depth training iteration against the PyTorch fixtures (`step/*` of every TiO-Depth set).

The model and VGG come from the recipe through the converters; the step is the jitted sequential
iteration of `tiodepth_jax.train.step` at the set's epoch (`training.epoch`, 31 in tio_dinov2b: all three
groups, the schedules' rates at that epoch, fresh Adam states). Compared: the learning rate of every trained
tensor, the stage-1 gradients, every loss value, the parameter updates in units of the learning rate
(fixtures README: >= 93 % of each tensor's elements and 99 % on average within 1 % of lr; the CA k_conv biases,
whose true gradient is zero, skipped) and the BatchNorm buffers. Sampled arrays are compared on their samples.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from flax import nnx

from convert.tiodepth import make_torch_key
from convert.vgg19 import convert_vgg19_features
from tests.parity import FixtureSet, failures_table, tio_params, torch_layout
from tests.parity_tio import inputs, model_for
from tiodepth_jax.losses import TRAINING_LOSSES
from tiodepth_jax.config import OptimConfig
from tiodepth_jax.train.optim import active_groups, group_filter, label, lr_factors, optimizer
from tiodepth_jax.train.step import init_state, make_step, stage_loss

FROZEN = ("encoder",)
GROUPS, TX = OptimConfig().groups, optimizer(OptimConfig())  # the fork's groups and plain Adam


@pytest.fixture(scope="module", params=tio_params())
def fs(request) -> FixtureSet:
    fs = request.param
    if not fs.names("step/"):
        pytest.skip(f"fixture set {fs.name} stores no training iteration (step/*)")
    return fs


def epoch_of(fs: FixtureSet) -> int:
    """The epoch of the set's training iteration: `training.epoch`, else the `lr_at_epoch_<E>` keys."""
    training = fs.meta.get("training", {})
    if "epoch" in training:
        return int(training["epoch"])
    keys = {m.group(1) for g in training.get("optimizers", {}).values() for pg in g["param_groups"]
            for k in pg if (m := re.fullmatch(r"lr_at_epoch_(\d+)", k))}
    assert len(keys) == 1, f"{fs.name}: no training epoch in the JSON"
    return int(keys.pop())


def fixture_lrs(fs: FixtureSet) -> dict:
    """{group: {PyTorch parameter name: lr at the set's epoch}} from `training.optimizers`."""
    epoch = epoch_of(fs)
    out = {}
    for g, opt in fs.meta["training"]["optimizers"].items():
        out[g] = {}
        for pg in opt["param_groups"]:
            lr = pg.get(f"lr_at_epoch_{epoch}", pg.get("lr"))
            out[g].update({name: lr for name in pg["params"]})
    return out


def zero_gradient_biases(fs: FixtureSet) -> set:
    """The CA blocks' k_conv biases (`1._convs.<i>` with block ('sfg', ...)): their true gradient is zero."""
    blocks = fs.meta["config"].get("decoder_convblocks(1._convs.<i>)")
    ca = [i for i, b in blocks.items() if b.startswith("('sfg'")] if blocks else ["18", "19", "20"]
    return {f"1._convs.{i}.k_conv.0.bias" for i in ca}


@pytest.fixture(scope="module")
def setup(fs):
    model = model_for(fs)
    vgg, _ = convert_vgg19_features(fs.state_dict("vgg"))
    graphdef = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
    return model, vgg, graphdef, inputs(fs, fs.train_size())


@pytest.fixture(scope="module")
def iteration(fs, setup) -> tuple[dict, dict, dict, dict]:
    """(initial state, stage-1 gradients at it, state after the iteration, the iteration's metrics), computed
    by one compiled program: the iteration's stage 1 is the same forward and backward, which a program of
    its own would compile again."""
    model, vgg, graphdef, batch = setup
    state = init_state(model, GROUPS, FROZEN, TX)
    name, group = GROUPS[0]
    vgg_graphdef, vgg_params = nnx.split(vgg)
    epoch = epoch_of(fs)
    step = make_step(graphdef, vgg_graphdef, GROUPS, active_groups(GROUPS, epoch), TRAINING_LOSSES, FROZEN, TX)

    @jax.jit
    def gradients_and_step(state, vgg_params, batch, factors):
        loss_fn = stage_loss(graphdef, nnx.merge(vgg_graphdef, vgg_params), TRAINING_LOSSES, 0, name)
        params_g, params_rest = nnx.split_state(state["params"], group_filter(group, FROZEN), ...)
        (_, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params_g, params_rest, state["batch_stats"],
                                                                   batch, {})
        return grads, *step(state, vgg_params, batch, factors)

    grads, new_state, metrics = gradients_and_step(state, vgg_params, batch, lr_factors(GROUPS, epoch))
    return state, grads, new_state, jax.device_get(metrics)


def torch_named(model, state) -> dict:
    """{PyTorch key: array in PyTorch layout} for a flat parameter/statistics state."""
    name_of = make_torch_key(model.cfg)
    return {name_of(tuple(k), None): torch_layout(str(k[-1]), np.asarray(v)) for k, v in nnx.to_flat_state(state)}


def test_learning_rates(fs, setup):
    """Every trained tensor's rate at the set's epoch (group lr x schedule factor x member rate) equals the
    fixture optimiser's, group by group; frozen tensors are in no group."""
    model, *_ = setup
    epoch = epoch_of(fs)
    name_of = make_torch_key(model.cfg)
    params = [tuple(k) for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    expected = fixture_lrs(fs)
    factors = lr_factors(GROUPS, epoch)
    assert active_groups(GROUPS, epoch) == tuple(g for g in expected if fs.meta["training"]["optimizers"][g]
                                                 .get("st_epoch", 1) <= epoch)
    for g, group in GROUPS:
        if g not in expected:
            continue
        ours = {}
        for path in params:
            member = label(path, group, FROZEN)
            if member is not None:
                ours[name_of(path, None)] = group.lr * float(factors[g]) * group.members[member]
        assert sorted(ours) == sorted(expected[g]), f"{g}: trained tensors differ"
        bad = {k: (ours[k], v) for k, v in expected[g].items() if not np.isclose(ours[k], v, rtol=1e-6, atol=0)}
        assert not bad, f"{g} learning rates (ours, fixture) at epoch {epoch}: {bad}"


def test_stage1_gradients(fs, setup, iteration):
    model = setup[0]
    _, grads, _, _ = iteration
    ours = torch_named(model, grads)
    names = fs.names("step/grad1/")
    assert sorted(n[len("step/grad1/"):] for n in names) == sorted(ours), "group-1 parameter sets differ"
    results = [fs.compare(n, ours[n[len("step/grad1/"):]]) for n in names]
    worst = max(results, key=lambda c: c.rel_l2 / c.tol)
    print(f"stage-1 gradients: {len(results)} tensors, worst {worst.name} {worst.rel_l2:.2e} (tol {worst.tol:.1e})")
    assert all(c.ok for c in results), failures_table(results)


def test_one_iteration(fs, setup, iteration):
    model = setup[0]
    state, _, new_state, metrics = iteration
    init = torch_named(model, state["params"])

    # Loss values: group 1 at the initial weights, groups 2 and 3 after the earlier steps.
    for name in fs.names("step/loss/"):
        key = name[len("step/loss/"):]
        ours = metrics["loss"] if key == "loss" else (
            metrics[key] if key.endswith("-loss") else metrics[f"{_group_of(key)}/{key.split('/')[1][:-len('-value')]}"])
        tol = 3e-2 if "Stereo_gui2" in key else 1e-3
        c = fs.compare(name, np.asarray(ours), tol=tol)
        print(f"{key}: ours {float(ours):.6g} rel {c.rel_l2:.2e}")
        assert c.ok, f"{key}: {c.rel_l2:.2e} > {tol}"

    # Parameter updates in units of the largest learning rate applied to each tensor.
    after = torch_named(model, new_state["params"])
    lrs = fixture_lrs(fs)
    lr_max = {}
    for name in fs.names("step/param_after/"):
        key = name[len("step/param_after/"):]
        sens = fs.entries[name].get("sensitivity") or fs._resolved(name).get("sensitivity") or {}
        lr_max[key] = sens.get("lr_max") or max(g[key] for g in lrs.values() if key in g)
    skip = zero_gradient_biases(fs)
    fractions = []
    for key, lr in lr_max.items():
        if key in skip:
            continue  # mathematically zero gradient: its update is rounding noise (fixtures README)
        ours_delta, ref_delta = _deltas(fs, f"step/param_after/{key}", after[key], init[key])
        within = np.abs(ours_delta - ref_delta) <= 0.01 * lr
        fractions.append(within.mean())
        assert within.mean() >= 0.93, f"{key}: only {within.mean():.3f} of elements within 1 % of lr"
    print(f"parameter updates: {len(fractions)} tensors, min {min(fractions):.4f}, mean {np.mean(fractions):.4f}")
    assert np.mean(fractions) >= 0.99

    # BatchNorm buffers after the iteration.
    stats = torch_named(model, new_state["batch_stats"])
    for name in fs.names("step/buffer_after/"):
        key = name[len("step/buffer_after/"):]
        if key.endswith("num_batches_tracked"):
            assert int(stats[key]) == int(fs.scalar(name)), key
        else:
            c = fs.compare(name, stats[key])
            assert c.ok, f"{key}: {c.rel_l2:.2e} > {c.tol:.1e}"


def _group_of(key: str) -> str:
    """The group whose loss table holds the term of '<side>/<term>-value'."""
    term = key.split("/")[1][:-len("-value")]
    return next(g for g, terms in TRAINING_LOSSES.items() if any(t.name == term for t in terms))


def _deltas(fs: FixtureSet, name: str, ours_after: np.ndarray, init: np.ndarray):
    """(our update, reference update) on the stored elements (all, or the sampled ones)."""
    idx, val = fs.samples(name)
    init = np.asarray(init).ravel()[idx]
    return np.asarray(ours_after).ravel()[idx] - init, val - init
