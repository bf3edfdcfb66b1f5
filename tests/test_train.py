"""The training command on a tiny config: the same step on 1 and 4 devices, config errors (faults and
--resume: test_faults.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# A tiny run: 1-block DINOv2-S, 28x56 crops of 42x84 scenes (bins up to 48 px < 56), batch 4, 3 epochs (stages
# at 1/2/3).
TINY = ["model.encoder_depth=1", "model.encoder_taps=[0,0,0,0]", "model.decoder_channels=[16,16,16,16]",
        "model.max_disp=48.0",
        "model.image_size=[28,56]", "data.image_size=[42,84]", "data.crop_size=[28,56]", "batch_size=4",
        "epochs=3", "data.synthetic={size: 12, base_seed: 0, scene: {}}", "val.image_size=[42,84]",
        "val.max_samples=2", "val.every_n_epochs=0", "val.at_start=false",
        "optim.param_group1={st_epoch: 1, milestones: [2]}", "optim.param_group2={st_epoch: 2, milestones: [3]}",
        "optim.param_group3={st_epoch: 3, milestones: [3]}", "checkpoint.keep=2", "checkpoint.keep_best=false"]


def run(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.update(kw.pop("env", {}))
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _one_step(tmp_path, meshes: list[str]) -> list[dict]:
    """tests/scripts/one_step.py on each mesh, in concurrent processes (XLA compiles on one core each).

    Each program runs once, so it is compiled for compile time, not speed: LLVM does not optimise (-O0) and
    XLA's older CPU emitters, faster to compile at -O0, generate it (half the compile time together); the RBG
    generator initialises the model as under pytest (conftest.py)."""
    flags = ("--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0 "
             "--xla_cpu_use_fusion_emitters=false")
    procs = [run(["tests/scripts/one_step.py", "configs/demo.yaml", str(tmp_path / m), m, *TINY],
                 env={"XLA_FLAGS": flags, "JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"}) for m in meshes]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
        results += [json.loads(ln) for ln in out.strip().splitlines() if ln.startswith('{"mesh"')]
    return results


def _assert_same_step(one: dict, other: dict):
    # Epoch 1 (Mono stage only, no thresholded masks): the same to float32 reduction order. Adam moves each
    # element by about lr, so an element with a near-zero gradient may flip its step: >= 93 % of every
    # tensor within 1 % of lr (the fixtures README's rule) and all within two steps.
    for k, v in one["mono"]["metrics"].items():
        np.testing.assert_allclose(other["mono"]["metrics"][k], v, rtol=1e-5, atol=1e-8, err_msg=k)
    for k, v in one["mono"]["params"].items():
        a, b = np.asarray(other["mono"]["params"][k]), np.asarray(v)
        assert np.max(np.abs(a - b)) <= 2e-4, k
        assert np.mean(np.abs(a - b) <= 1e-6) >= 0.93, k
    for k, v in one["mono"]["stats"].items():  # BatchNorm over the global batch, wherever its shards lie
        np.testing.assert_allclose(other["mono"]["stats"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # All three groups: the Stereo stage's photometric and guide losses follow thresholded masks, whose
    # pixels flip under rounding (fixtures README: Stereo_gui2 up to 3e-2, Stereo_photo a few 1e-3), and so
    # do the gradients of the parameters they train and the statistics computed after that update.
    loose = {"param_group2/Stereo_gui2": 3e-2, "param_group2/Stereo_photo": 5e-3, "param_group2-loss": 5e-3,
             "loss": 5e-3}
    for k, v in one["all"]["metrics"].items():
        np.testing.assert_allclose(other["all"]["metrics"][k], v, rtol=loose.get(k, 1e-4), atol=1e-7, err_msg=k)
    for k, v in one["all"]["params"].items():
        assert np.max(np.abs(np.asarray(other["all"]["params"][k]) - np.asarray(v))) <= 5e-4, k
    for k, v in one["all"]["stats"].items():
        np.testing.assert_allclose(other["all"]["stats"][k], v, rtol=1e-3, atol=1e-5, err_msg=k)


def test_same_step_on_one_and_four_devices(tmp_path):
    """1 device against 4 on a 2 x 2 mesh: the batch split over all 4, the large parameters and their Adam
    moments split over 'fsdp' (a 4 x 1 data-parallel mesh is the same program without the parameter split)."""
    one, four = _one_step(tmp_path, ["1x1", "2x2"])
    assert (one["fsdp_split_params"], four["devices"]) == (0, 4)
    assert four["fsdp_split_params"] >= 4  # the ViT's qkv / MLP matrices at least
    _assert_same_step(one, four)


def test_unknown_config_key_is_named(tmp_path):
    p = run(["-m", "tiodepth_jax.train", "--config", "configs/demo.yaml", "optim.betaz=[0.5, 0.9]",
             f"workdir={tmp_path}"])
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "optim.betaz" in out


@pytest.mark.parametrize("overrides, message", [
    (["data.flip_mode=k"], "flip_mode 'k'"),
    (["data.name=kitti_raw"], "data.data_dir is not set"),
    (["data.name=kitti_raw", "data.data_dir={tmp}"], "is not built in"),
])
def test_unavailable_data_settings_are_errors(overrides, message, tmp_path):
    from tiodepth_jax.config import ConfigError, load_config
    from tiodepth_jax.train.loop import train_samples
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"workdir={tmp_path}"] +
                      [o.format(tmp=tmp_path) for o in overrides])
    with pytest.raises((ValueError, ConfigError, FileNotFoundError), match=message):
        train_samples(cfg)


def test_trainer_input_errors_are_one_line_and_leave_nothing(tmp_path):
    """A dataset that was not built: one `error:` line, exit code 2, no traceback, no workdir created."""
    workdir = tmp_path / "run"
    p = run(["-m", "tiodepth_jax.train", "--config", "configs/demo.yaml", "data.name=kitti_raw",
             f"data.data_dir={tmp_path / 'tfds'}", f"workdir={workdir}"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "is not built in" in errors[0], out[-3000:]
    assert "Traceback" not in out and not workdir.exists()


def test_overrides_anywhere_on_the_command_line():
    from tiodepth_jax.train.__main__ import parse_args
    args = parse_args(["--config", "c.yaml", "epochs=1", "--resume", "batch_size=2"])
    assert args.resume and args.overrides == ["epochs=1", "batch_size=2"]


@pytest.fixture
def jax_cache_settings():
    """JAX's compilation-cache settings as they were before the test, and its cache reopened with them."""
    import jax
    from tiodepth_jax.train.loop import compile_cache_settings, set_compile_cache
    saved, min_compile_time = compile_cache_settings(), jax.config.jax_persistent_cache_min_compile_time_secs
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time)
    set_compile_cache(*saved)


def test_compile_cache_keeps_the_programs_of_a_run(tmp_path, jax_cache_settings):
    """`compile_cache`: true puts JAX's persistent cache in the workdir (a program compiled there is loaded from it
    after the in-memory caches are gone), or keeps the process's own directory; a directory is used as given;
    false turns the cache off."""
    import jax
    import jax.numpy as jnp
    from tiodepth_jax.config import ConfigError, load_config
    from tiodepth_jax.train.loop import use_compile_cache

    def cfg(*overrides):
        return load_config(REPO / "configs" / "demo.yaml", [f"workdir={tmp_path / 'run'}", *overrides])

    hits = []

    def on_event(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    def program(x):
        return jnp.cumsum(jnp.sin(x) * 1.2345)

    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # JAX keeps programs of >= 1 s otherwise
    cache = tmp_path / "run" / "compile_cache"
    assert use_compile_cache(cfg()) == str(cache) and jax.config.jax_enable_compilation_cache
    x = np.ones(7, np.float32)
    jax.monitoring.register_event_listener(on_event)
    try:
        jax.jit(program)(x).block_until_ready()
        assert [p.name.split("-")[0] for p in cache.iterdir()] == ["jit_program"] and not hits
        jax.clear_caches()
        jax.jit(program)(x).block_until_ready()
    finally:
        jax.monitoring.unregister_event_listener(on_event)
    assert hits == ["/jax/compilation_cache/cache_hits"]  # loaded, not compiled

    own = str(tmp_path / "own")
    jax.config.update("jax_compilation_cache_dir", own)
    assert use_compile_cache(cfg()) == own
    shared = tmp_path / "shared"
    assert use_compile_cache(cfg(f"compile_cache={shared}")) == str(shared) == jax.config.jax_compilation_cache_dir
    assert use_compile_cache(cfg("compile_cache=false")) is None and not jax.config.jax_enable_compilation_cache
    with pytest.raises(ConfigError, match="compile_cache"):
        cfg("compile_cache=''")
