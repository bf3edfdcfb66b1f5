"""Your own stereo rig: stereo geometry derived from the training set (``model.d2d: auto`` and the bins)."""

from __future__ import annotations

import pytest

from tiodepth_jax.config import load_config
from tiodepth_jax.data import synthetic
from tiodepth_jax.schema import ConfigError
from tiodepth_jax.train.loop import resolve_geometry, train_samples
from tests.test_train import REPO, TINY

AUTO = ["model.d2d=auto", "model.min_disp=auto", "model.max_disp=auto", "model.depth_range=[2,80]"]


def test_auto_geometry_from_the_training_set(tmp_path):
    """d2d = fx * baseline at data.image_size's width; bins = d2d / depth_range; explicit numbers win."""
    cfg = load_config(REPO / "configs/demo.yaml", [*TINY, *AUTO, f"workdir={tmp_path}"])
    samples = train_samples(cfg)
    fx = synthetic.intrinsics(synthetic.SceneConfig(height=42, width=84))[0]
    model = resolve_geometry(cfg, samples).model
    assert model.d2d == pytest.approx(fx * 0.54, rel=1e-12)
    assert (model.min_disp, model.max_disp) == (pytest.approx(model.d2d / 80), pytest.approx(model.d2d / 2))
    assert model.resolved and model.depth_range is None

    explicit = load_config(REPO / "configs/demo.yaml", [*TINY, *AUTO, "model.d2d=30.0", f"workdir={tmp_path}"])
    assert resolve_geometry(explicit, samples).model.max_disp == pytest.approx(15.0)
    near = load_config(REPO / "configs/demo.yaml", [*TINY, *AUTO, "model.depth_range=[0.2,80]", f"workdir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"model.max_disp: 131.8 is not below the training width 56.*depth_range, its minimum must exceed d2d / 56 = 0.4706 m"):
        resolve_geometry(near, samples)


@pytest.mark.parametrize("overrides, match", [
    (["model.min_disp=auto"], "min_disp: auto needs depth_range"),
    (["model.depth_range=[1,50]"], "depth_range sets the bins only with min_disp: auto and max_disp: auto"),
    (["model.max_disp=900.0"], "model.max_disp: 900 is not below the training width 56"),
])
def test_geometry_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(REPO / "configs/demo.yaml", [*TINY, *overrides, f"workdir={tmp_path}"])
