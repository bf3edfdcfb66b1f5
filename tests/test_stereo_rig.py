"""Your own stereo rig, end to end as README "Train on your own stereo rig" runs it: a generated stereo folder
whose principal points differ by DOFFS pixels and whose GT has invalid pixels, built, trained with the geometry
derived from its calibration, evaluated (EPE / D1 checked against the saved disparities), predicted from the run.
Also the geometry resolution on its own."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex

import numpy as np
import pytest
import yaml
from PIL import Image

from tiodepth_jax import evaluate, export_model, predict
from tiodepth_jax.checkpoint import load
from tiodepth_jax.config import load_config
from tiodepth_jax.data import build, synthetic
from tiodepth_jax.train import __main__ as train
from tiodepth_jax.schema import ConfigError
from tiodepth_jax.train.loop import resolve_geometry, train_samples
from tests.test_predict import read_ply
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
])
def test_geometry_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(REPO / "configs/demo.yaml", [*TINY, *overrides, f"workdir={tmp_path}"])


def test_training_refuses_bins_beyond_the_crop(tmp_path):
    """Explicit bins are checked when a training starts; a stored run's config still loads (inference)."""
    cfg = load_config(REPO / "configs/demo.yaml", [*TINY, "model.max_disp=900.0", f"workdir={tmp_path}"])
    with pytest.raises(ConfigError, match="model.max_disp: 900 is not below the training width 56"):
        resolve_geometry(cfg, train_samples(cfg))


DOFFS = 4            # cx_right - cx_left in pixels
RIG_HW = (42, 88)    # stored images; the aligned views are 84 wide (data.image_size, no resize)
SECTION = "## Train on your own stereo rig\n"
MAINS = {"tiodepth_jax.data.build": build.main, "tiodepth_jax.train": train.main,
         "tiodepth_jax.evaluate": evaluate.main, "tiodepth_jax.predict": predict.main,
         "tiodepth_jax.export_model": export_model.main}
# Appended to the README's training command: a tiny model, the photometric Mono loss, no downloads.
TINY_RIG = [*TINY, "init_from=null", "vgg_from=null", "model.variant=vits", "model.min_disp=auto",
            "model.max_disp=auto", "epochs=1", "batch_size=2", "data.num_workers=0", "checkpoint.async_save=false",
            "losses.param_group1={photo: {kind: photo, pred: mono_disproj_img_s_0_o, target: color_s_aug, rate: 1}}"]


def readme_commands() -> list[list[str]]:
    """The commands of the README section, in order, as argument lists ('python', '-m', module, ...)."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text
    section = re.sub(r"\\\n\s*", " ", text.split(SECTION, 1)[1].split("\n## ", 1)[0])
    return [shlex.split(line) for line in (ln.strip() for ln in section.splitlines()) if line.startswith("python -m")]


def write_rig(root) -> dict:
    """train/ (2 pairs) and test/ (2 pairs with depth/*.npy, 3 invalid pixels each: inf, NaN, 0) of a rig whose
    right camera's principal point is DOFFS pixels right of the left one's: scenes rendered DOFFS pixels wider,
    the left view keeping the right-most columns (its cx moves left by DOFFS), the right view the left-most."""
    height, width = RIG_HW
    scene = synthetic.SceneConfig(height=height, width=width + DOFFS, num_objects=2)
    fx, fy, cx, cy = synthetic.intrinsics(scene)
    calibration = {"fx": fx, "fy": fy, "cx": cx - DOFFS, "cy": cy, "baseline": scene.baseline, "doffs": DOFFS}
    root.mkdir(parents=True)
    (root / "calibration.yaml").write_text(yaml.safe_dump(calibration))
    for split, seeds in (("train", (0, 1)), ("test", (10, 11))):
        for side in ("left", "right", "depth"):
            (root / split / side).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            pair = synthetic.render_pair(scene, seed)
            left, right = (np.round(pair[f"color_{s}"] * 255).astype(np.uint8) for s in "lr")
            Image.fromarray(left[:, DOFFS:]).save(root / split / "left" / f"{seed:03d}.png")
            Image.fromarray(right[:, :width]).save(root / split / "right" / f"{seed:03d}.png")
            depth = pair["depth_l"][:, DOFFS:].copy()
            depth[0, 0], depth[1, 1], depth[2, 2] = np.inf, np.nan, 0
            np.save(root / split / "depth" / f"{seed:03d}.npy", depth)
    return calibration


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """The README section's commands, run in order in a folder holding the generated rig as my_rig/ (and
    configs/): the folder and the console output of each command."""
    tmp = tmp_path_factory.mktemp("rig")
    write_rig(tmp / "my_rig")
    (tmp / "configs").symlink_to(REPO / "configs")
    printed, cwd = {}, os.getcwd()
    os.chdir(tmp)
    try:
        for command in readme_commands():
            assert command[:2] == ["python", "-m"], command
            module, args = command[2], command[3:] + (TINY_RIG if command[2] == "tiodepth_jax.train" else [])
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert MAINS[module](args) == 0, f"{' '.join(command)} failed"
            printed[module] = out.getvalue()
    finally:
        os.chdir(cwd)
    return tmp, printed


def test_readme_runs_every_step(rig):
    assert list(rig[1]) == list(MAINS)  # build, train, evaluate, predict, export: each once, in this order


def test_training_takes_its_geometry_from_the_calibration(rig):
    tmp, _ = rig
    calibration = yaml.safe_load((tmp / "my_rig/calibration.yaml").read_text())
    model = yaml.safe_load((tmp / "runs/my_rig/config.yaml").read_text())["model"]
    near, far = model_range = (1, 50)  # the README's model.depth_range
    d2d = calibration["fx"] * calibration["baseline"]  # the aligned views keep fx, at data.image_size's width
    assert model["d2d"] == pytest.approx(d2d, rel=1e-6), model_range
    assert (model["min_disp"], model["max_disp"]) == (pytest.approx(d2d / far), pytest.approx(d2d / near))
    losses = [json.loads(line) for line in (tmp / "runs/my_rig/losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]  # 2 pairs x data.repeat 4 / batch 2
    assert all(np.isfinite(r["loss"]) for r in losses)


def test_evaluate_reports_epe_and_d1_of_the_saved_disparities(rig):
    tmp, printed = rig
    out = tmp / "eval_my_rig"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["crop"] == "none"
    per_image = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    for mode in ("Stereo", "Refine"):
        rows = [r for r in per_image if r["mode"] == mode]
        assert len(rows) == 2
        for row in rows:
            saved = np.load(out / "predictions" / f"{row['index']:05d}_{mode}.npz")
            gt, pred = saved["disp_gt"].astype(np.float64), saved["disp"].astype(np.float64)
            valid = np.isfinite(gt) & (gt > 0)
            assert valid.sum() == gt.size - 3  # the inf, NaN and 0 of the depth file
            err = np.abs(pred[valid] - gt[valid])
            assert row["epe_all"] == pytest.approx(err.mean(), abs=1e-6)
            assert row["d1_all"] == pytest.approx(100 * np.mean((err > 3) & (err > 0.05 * gt[valid])), abs=1e-6)
        means = summary["results"][mode]
        assert means["epe_all"] == pytest.approx(np.mean([r["epe_all"] for r in rows]), abs=1e-6)
        line = next(ln for ln in printed["tiodepth_jax.evaluate"].splitlines() if ln.startswith(mode))
        assert f"{means['epe_all']:.3f}" in line and f"{means['d1_all']:.3f}" in line


def test_predict_from_the_run_aligns_the_pair_and_writes_metric_outputs(rig):
    """Input resolution (the columns the alignment crops are NaN), disparity x_left - x_right of the input
    images, a point cloud of the valid pixels with the calibration's intrinsics."""
    tmp, _ = rig
    calibration = yaml.safe_load((tmp / "my_rig/calibration.yaml").read_text())
    d2d = yaml.safe_load((tmp / "runs/my_rig/config.yaml").read_text())["model"]["d2d"]
    for stem in ("010", "011"):
        depth = np.load(tmp / "pred_my_rig" / f"{stem}.npy")
        assert depth.shape == RIG_HW
        assert np.isnan(depth[:, -DOFFS:]).all() and np.isfinite(depth[:, :-DOFFS]).all()
        disp = np.load(tmp / "pred_my_rig" / f"{stem}_disp.npy")  # the network saw the 84-wide aligned views
        np.testing.assert_allclose(disp[:, :-DOFFS], d2d / depth[:, :-DOFFS] - DOFFS, rtol=1e-5, atol=1e-5)
        vertices = read_ply(tmp / "pred_my_rig" / f"{stem}.ply")
        assert len(vertices) == np.count_nonzero(np.isfinite(depth) & (depth > 0))
        v, u = 7, 11  # row-major order, every pixel left of the cropped columns is valid
        vertex, z = vertices[v * (RIG_HW[1] - DOFFS) + u], depth[v, u]
        np.testing.assert_allclose([vertex["x"], vertex["y"], vertex["z"]],
                                   [(u - calibration["cx"]) * z / calibration["fx"],
                                    (v - calibration["cy"]) * z / calibration["fy"], z], rtol=1e-6)
        assert Image.open(tmp / "pred_my_rig" / f"{stem}.png").width > RIG_HW[1]  # with its colour bar


def test_export_model_writes_the_run_as_a_model_directory(rig):
    tmp, _ = rig
    loaded = load(tmp / "models/my_rig")
    assert loaded.source["kind"] == "model" and loaded.image_size == (42, 84)
    run = load(tmp / "runs/my_rig")
    assert loaded.model.cfg == run.model.cfg
