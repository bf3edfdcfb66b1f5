"""Your own stereo rig, end to end as README "Train on your own stereo rig" runs it: a generated stereo folder
whose principal points differ by DOFFS pixels and whose GT has invalid pixels, built, trained with the geometry
derived from its calibration, evaluated (EPE / D1 checked against the saved disparities), predicted from the run.
Also the geometry resolution on its own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tiodepth_jax import evaluate
from tiodepth_jax.config import load_config
from tiodepth_jax.data import build, synthetic
from tiodepth_jax.train import __main__ as train
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


DOFFS = 4            # cx_right - cx_left in pixels
RIG_HW = (42, 88)    # stored images; the aligned views are 84 wide (data.image_size, no resize)
# The README's commands plus a tiny model, one epoch of the photometric Mono loss, no downloads.
TINY_RIG = [*TINY, "init_from=null", "vgg_from=null", "model.variant=vits", "model.min_disp=auto",
            "model.max_disp=auto", "model.depth_range=[2,80]", "epochs=1", "batch_size=2", "data.repeat=2",
            "data.num_workers=0",
            "checkpoint.async_save=false", "losses.param_group1={photo: {kind: photo, pred: mono_disproj_img_s_0_o, "
                                           "target: color_s_aug, rate: 1}}"]


def write_rig(root) -> dict:
    """train/ (2 pairs) and test/ (2 pairs with depth/*.npy, 3 invalid pixels each: inf, NaN, 0) of a rig whose
    right camera's principal point is DOFFS pixels right of the left one's: scenes rendered DOFFS pixels wider,
    the left view keeping the right-most columns (its cx moves left by DOFFS), the right view the left-most."""
    height, width = RIG_HW
    scene = synthetic.SceneConfig(height=height, width=width + DOFFS, num_objects=2)
    fx, fy, cx, cy = synthetic.intrinsics(scene)
    calibration = {"fx": fx, "fy": fy, "cx": cx - DOFFS, "cy": cy, "baseline": scene.baseline, "doffs": DOFFS}
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
def rig_run(tmp_path_factory):
    """The README's build and train commands on the generated rig: (tmp folder, rig root, data dir, run)."""
    tmp = tmp_path_factory.mktemp("rig")
    root, data_dir, run = tmp / "my_rig", tmp / "tfds", tmp / "runs" / "my_rig"
    root.mkdir()
    write_rig(root)
    assert build.main(["stereo_folder", "--root", str(root), "--data-dir", str(data_dir)]) == 0
    assert train.main(["--config", str(REPO / "configs/stereo_rig.yaml"), f"data.data_dir={data_dir}",
                       f"workdir={run}", *TINY_RIG]) == 0
    return tmp, root, data_dir, run


def test_training_takes_its_geometry_from_the_calibration(rig_run):
    _, root, _, run = rig_run
    calibration = yaml.safe_load((root / "calibration.yaml").read_text())
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    d2d = calibration["fx"] * calibration["baseline"]  # the aligned views keep fx, at data.image_size's width
    assert model["d2d"] == pytest.approx(d2d, rel=1e-6)
    assert (model["min_disp"], model["max_disp"]) == (pytest.approx(d2d / 80), pytest.approx(d2d / 2))
    losses = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2] and all(np.isfinite(r["loss"]) for r in losses)


def test_evaluate_reports_epe_and_d1_of_the_saved_disparities(rig_run, capsys):
    tmp, _, data_dir, run = rig_run
    out = tmp / "eval_my_rig"
    assert evaluate.main(["--config", str(REPO / "configs/stereo_rig.yaml"), "--checkpoint", str(run),
                          "--data-dir", str(data_dir), "--save-predictions", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["crop"] == "none" if "settings" in summary else summary["crop"] == "none"
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
        line = next(ln for ln in printed.splitlines() if ln.startswith(mode))
        assert f"{means['epe_all']:.3f}" in line and f"{means['d1_all']:.3f}" in line
