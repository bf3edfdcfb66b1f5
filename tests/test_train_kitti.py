"""The trainer on TFDS datasets: a fake KITTI raw tree built with the TFDS builders, trained for one epoch
(Mono stage) through the grain pipeline and validated on the fake Eigen test set with the spec §8.1 metrics."""

import json
import sys

import numpy as np
import pytest

from tiodepth_jax.checkpoint import BEST_KEY, run_manager
from tiodepth_jax.config import load_config
from tiodepth_jax.data import builders, fake_kitti
from tiodepth_jax.train.loop import Trainer, compile_cache_settings, val_batches, val_set
from tests.test_summary import _read_records
from tests.test_train import REPO, TINY


@pytest.fixture(scope="module")
def kitti_data_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kitti")
    fake = fake_kitti.make_fake_kitti_raw(tmp / "raw", size=(56, 196))
    data_dir = tmp / "tfds"
    builders.build("kitti_raw", fake.root, data_dir, split_file=fake.train_split, progress=False)
    builders.build("kitti_eigen_test", fake.root, data_dir, split_file=fake.test_split, config="raw", progress=False)
    return data_dir


def kitti_config(tmp_path, data_dir, *extra):
    return load_config(REPO / "configs" / "demo.yaml", [
        f"workdir={tmp_path}", *TINY, "epochs=1", "batch_size=2", "data.name=kitti_raw", f"data.data_dir={data_dir}",
        "data.num_workers=2", "val.name=kitti_eigen_test/raw", "val.split=test", "val.every_n_epochs=1",
        "val.at_start=false", "val.image_size=[42,140]", "val.metric=depth_kitti", "val.max_samples=null", *extra])


def test_val_batches_resize_inputs_and_keep_native_gt(tmp_path, kitti_data_dir):
    cfg = kitti_config(tmp_path, kitti_data_dir, "val.batch_size=2")
    source = val_set(cfg)
    got = list(val_batches(cfg, source))
    assert sum(len(gts) for _, gts in got) == len(source) == 6  # 2 drives x 3 frames
    inputs, gts = got[0]
    assert inputs["color_s"].shape == (2, 42, 140, 3) and inputs["direct"].tolist() == [1.0, 1.0]
    assert gts[0]["depth_gt"].shape == (56, 196)  # native resolution, not resized


def test_one_epoch_on_kitti_records_with_eigen_validation(tmp_path, kitti_data_dir):
    """Also: training images every logging.image_every_n_steps steps, checkpoints ranked by
    checkpoint.best_metric (a1: higher is better, so the stored score is -a1), and the run's compilation cache
    in use from the Trainer's start to its end, the process's own settings back after it."""
    programs = tmp_path / "programs"
    cfg = kitti_config(tmp_path, kitti_data_dir, "logging.image_every_n_steps=2", "checkpoint.keep_best=true",
                       "checkpoint.best_metric=a1", "checkpoint.async_save=false", f"compile_cache={programs}")
    process_cache = compile_cache_settings()
    trainer = Trainer(cfg)
    assert compile_cache_settings() == (str(programs), True)
    assert len(trainer.train_ds) == 10  # 6 "l" lines + 4 "r" lines (even frames)
    result = trainer.run()
    assert compile_cache_settings() == process_cache
    losses = [json.loads(ln) for ln in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5]  # 10 samples, batch 2
    assert all(np.isfinite(r["loss"]) for r in losses)
    for mode in ("Mono", "Stereo", "Refine"):
        assert 0 < result[f"val/{mode}/abs_rel"] < 10 and 0 <= result[f"val/{mode}/a1"] <= 1
    assert "tensorflow" not in sys.modules
    _, images = _read_records(tmp_path / "logs")
    for tag in ("train/color_s", "train/Mono/inverse_depth", "train/Refine/inverse_depth"):
        assert [step for step, *_ in images[tag]] == [2, 4], tag
    assert images["train/Mono/inverse_depth"][0][1:3] == (28, 56)  # the training crop
    assert [step for step, *_ in images["val/Mono/inverse_depth"]] == [5]
    with run_manager(tmp_path / "checkpoints") as manager:
        (step,) = manager.all_steps()
        assert manager.metrics(step)[BEST_KEY] == -result["val/Refine/a1"]
