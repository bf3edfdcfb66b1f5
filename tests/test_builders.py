"""TFDS builders (array_record, no TensorFlow) and the stereo-folder format, on tiny fake trees."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
import yaml
from PIL import Image

from tiodepth_jax.data import build as build_cli
from tiodepth_jax.data import builders, fake_kitti, kitti, stereo_folder, synthetic
from tiodepth_jax.data.kitti import DataFileError

CALIB = {"fx": 50.0, "fy": 48.0, "cx": 31.5, "cy": 11.5, "baseline": 0.3}
SIZE = (24, 64)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _source(data_dir, name, split):
    return tfds.data_source(name, data_dir=str(data_dir), split=split)


@pytest.fixture(scope="module")
def fake_raw(tmp_path_factory):
    return fake_kitti.make_fake_kitti_raw(tmp_path_factory.mktemp("raw"), frames=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def _write_pair(folder: Path, stem: str, seed: int, mode: str = "RGB") -> dict:
    """Render a pair and save left/right PNGs under ``folder`` (the left one in ``mode``); returns the pair."""
    cfg = synthetic.SceneConfig(height=SIZE[0], width=SIZE[1], fx=CALIB["fx"], fy=CALIB["fy"], cx=CALIB["cx"],
                                cy=CALIB["cy"], baseline=CALIB["baseline"], num_objects=2)
    pair = synthetic.render_pair(cfg, seed)
    for side in ("left", "right"):
        (folder / side).mkdir(parents=True, exist_ok=True)
        pixels = (pair[f"color_{side[0]}"] * 255).round().astype(np.uint8)
        Image.fromarray(pixels).convert(mode if side == "left" else "RGB").save(folder / side / f"{stem}.png")
    return pair


@pytest.fixture(scope="module")
def stereo_root(tmp_path_factory):
    """train/ (2 pairs, one left image RGBA), test/seq_a (own calibration, .npy depth), test/seq_b (no depth)."""
    root = tmp_path_factory.mktemp("stereo")
    (root / "calibration.yaml").write_text(yaml.safe_dump(CALIB))
    _write_pair(root / "train", "000000", 0)
    _write_pair(root / "train", "000001", 1, mode="RGBA")
    pair = _write_pair(root / "test" / "seq_a", "f0", 2)
    depth = pair["depth_l"].copy()
    depth[0, :3] = np.nan
    (root / "test" / "seq_a" / "depth").mkdir()
    np.save(root / "test" / "seq_a" / "depth" / "f0.npy", depth)
    (root / "test" / "seq_a" / "calibration.yaml").write_text(yaml.safe_dump({**CALIB, "baseline": 0.12}))
    _write_pair(root / "test" / "seq_b", "f0", 3)
    return root


# ---------------------------------------------------------------------------------------------------------------
# KITTI


def test_kitti_raw_records_and_grain(fake_raw, data_dir):
    result = builders.build("kitti_raw", fake_raw.root, data_dir, progress=False,
                            split_file={"train": fake_raw.train_split, "val": fake_raw.test_split})
    assert result.num_examples == {"train": len(fake_raw.train_lines), "val": len(fake_raw.test_lines)}
    assert result.path == data_dir / "kitti_raw" / "1.0.0" and not (result.path / builders.SKIPPED_FILE).exists()
    ds = _source(data_dir, "kitti_raw", "train")
    assert len(ds) == len(fake_raw.train_lines)
    for record, line in zip(ds, fake_raw.train_lines):
        assert record["name"].decode() == str(line)
        np.testing.assert_array_equal(record["image_s"], _pixels(kitti.image_path(fake_raw.root, line)))
        np.testing.assert_array_equal(record["image_o"], _pixels(kitti.image_path(fake_raw.root, line, other=True)))
        np.testing.assert_array_equal(record["K"], kitti.KITTI_K.astype(np.float32))
        assert record["K"].dtype == np.float32 and record["baseline"] == np.float32(kitti.KITTI_BASELINE)
        assert record["direct"] == (1.0 if line.side == "l" else -1.0)
    raw = tfds.data_source("kitti_raw", data_dir=str(data_dir), split="train",
                           decoders={"image_s": tfds.decode.SkipDecoding()})
    assert raw[0]["image_s"] == kitti.image_path(fake_raw.root, fake_raw.train_lines[0]).read_bytes()  # as-is

    batches = list(grain.MapDataset.source(ds).shuffle(seed=0).batch(2, drop_remainder=True))
    assert len(batches) == len(ds) // 2
    height, width = fake_raw.depth_l[0].shape
    assert batches[0]["image_s"].shape == (2, height, width, 3) and batches[0]["K"].shape == (2, 3, 3)
    names = [n.decode() for b in batches for n in b["name"]]
    assert sorted(names) == sorted(str(line) for line in fake_raw.train_lines)  # 6 lines: 3 whole batches

    with pytest.raises(FileExistsError, match="already built"):
        builders.build("kitti_raw", fake_raw.root, data_dir, split_file=fake_raw.train_split, progress=False)


def test_kitti_raw_calibration_k(tmp_path):
    """fixed_k=False: K = P_rect_02 / P_rect_03 of the calibration file and the baseline of the width table."""
    fake = fake_kitti.make_fake_kitti_raw(tmp_path / "raw", size=(12, 1242), drives=(1,), frames=1)
    builders.build("kitti_raw", fake.root, tmp_path / "tfds", split_file=fake.train_split, fixed_k=False,
                   progress=False)
    ds = _source(tmp_path / "tfds", "kitti_raw", "train")
    assert [r["name"].decode() for r in ds] == [str(line) for line in fake.train_lines]  # one 'l', one 'r' line
    for record in ds:
        np.testing.assert_allclose(record["K"], fake.K, rtol=1e-6)
        assert record["baseline"] == np.float32(kitti.WIDTH_TO_BASELINE[1242])


@pytest.mark.parametrize("config", ["raw", "improved"])
def test_kitti_eigen_test_depth_gt(fake_raw, data_dir, config):
    builders.build("kitti_eigen_test", fake_raw.root, data_dir, split_file=fake_raw.test_split, config=config,
                   progress=False)
    ds = _source(data_dir, f"kitti_eigen_test/{config}", "test")
    assert len(ds) == len(fake_raw.test_lines)
    for record, line in zip(ds, fake_raw.test_lines):
        if config == "raw":
            expected = kitti.generate_depth_map(kitti.calib_dir(fake_raw.root, line),
                                                kitti.velodyne_path(fake_raw.root, line), cam=2, vel_depth=True)
        else:
            expected = kitti.read_depth_png(kitti.improved_gt_path(fake_raw.root, line))
        assert record["depth_gt"].dtype == np.float32 and (record["depth_gt"] > 0).any()
        np.testing.assert_array_equal(record["depth_gt"], expected)
        assert record["name"].decode() == str(line) and record["direct"] == 1.0


def test_kitti_stereo2015_records(tmp_path, data_dir):
    fake = fake_kitti.make_fake_kitti2015(tmp_path / "k15", count=2)
    builders.build("kitti_stereo2015", fake.root, data_dir, progress=False)
    ds = _source(data_dir, "kitti_stereo2015", "train")
    assert len(ds) == 2
    for index, record in enumerate(ds):
        left, right, disp_path = kitti.kitti2015_paths(fake.root, index)
        assert record["name"] == f"{index:06d}_10".encode()
        np.testing.assert_array_equal(record["image_s"], _pixels(left))
        np.testing.assert_array_equal(record["image_o"], _pixels(right))
        disp = kitti.read_kitti2015_disparity(disp_path)
        np.testing.assert_array_equal(record["disp_gt"], disp)
        valid = disp > 0
        np.testing.assert_array_equal(record["depth_gt"] > 0, valid)
        np.testing.assert_allclose(record["depth_gt"][valid], kitti.KITTI2015_FX_BASELINE / disp[valid], rtol=1e-6)
        np.testing.assert_allclose(record["depth_gt"][valid], fake.depth[index][valid], rtol=2e-3)
        assert record["direct"] == 1.0 and record["baseline"] == np.float32(0.54)


def test_missing_image_fails_or_is_skipped(tmp_path):
    fake = fake_kitti.make_fake_kitti_raw(tmp_path / "raw", drives=(1,), frames=2)
    missing = kitti.image_path(fake.root, fake.test_lines[1])
    missing.unlink()
    with pytest.raises(DataFileError, match=str(missing)):
        builders.build("kitti_raw", fake.root, tmp_path / "tfds", split_file=fake.test_split, progress=False)
    assert not (tmp_path / "tfds" / "kitti_raw" / "1.0.0").exists()

    result = builders.build("kitti_raw", fake.root, tmp_path / "tfds", split_file=fake.test_split, skip_bad=True,
                            progress=False)
    skipped = [{"split": "train", "file": str(missing), "reason": "missing file"}]
    assert result.skipped == skipped
    assert json.loads((result.path / builders.SKIPPED_FILE).read_text()) == skipped
    ds = _source(tmp_path / "tfds", "kitti_raw", "train")
    assert [r["name"].decode() for r in ds] == [str(fake.test_lines[0])]


def test_unreadable_image_names_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataFileError, match="broken.png: cannot read image"):
        builders.encoded_rgb(path)


# ---------------------------------------------------------------------------------------------------------------
# Stereo folder


def test_stereo_folder_records(stereo_root, data_dir):
    result = builders.build("stereo_folder", stereo_root, data_dir, both_sides=True, progress=False)
    assert result.num_examples == {"test": 2, "train": 4}
    train = _source(data_dir, "stereo_folder", "train")
    assert [r["name"].decode() for r in train] == ["000000 l", "000000 r", "000001 l", "000001 r"]
    for index, stem in enumerate(("000000", "000001")):
        left, right = (_pixels(stereo_root / "train" / side / f"{stem}.png") for side in ("left", "right"))
        record_l, record_r = train[2 * index], train[2 * index + 1]
        np.testing.assert_array_equal(record_l["image_s"], left)
        np.testing.assert_array_equal(record_l["image_o"], right)
        np.testing.assert_array_equal(record_r["image_s"], right)
        np.testing.assert_array_equal(record_r["image_o"], left)
        assert (record_l["direct"], record_r["direct"]) == (1.0, -1.0)
        np.testing.assert_array_equal(record_r["depth_gt"], np.zeros(SIZE, np.float32))
    np.testing.assert_allclose(train[0]["K"], [[50, 0, 31.5], [0, 48, 11.5], [0, 0, 1]])
    assert train[0]["baseline"] == np.float32(0.3)

    test = _source(data_dir, "stereo_folder", "test")
    assert [r["name"].decode() for r in test] == ["seq_a/f0 l", "seq_b/f0 l"]
    expected = np.load(stereo_root / "test/seq_a/depth/f0.npy")
    expected[~np.isfinite(expected)] = 0
    np.testing.assert_array_equal(test[0]["depth_gt"], expected)
    np.testing.assert_array_equal(test[1]["depth_gt"], np.zeros(SIZE, np.float32))
    assert (test[0]["baseline"], test[1]["baseline"]) == (np.float32(0.12), np.float32(0.3))


def test_stereo_folder_unmatched_files(tmp_path):
    root = tmp_path / "folder"
    (root / "train").mkdir(parents=True)
    (root / "calibration.yaml").write_text(yaml.safe_dump(CALIB))
    _write_pair(root / "train", "a", 0)
    _write_pair(root / "train", "b", 1)
    (root / "train/right/b.png").rename(root / "train/right/c.png")
    with pytest.raises(DataFileError, match="right/c.png: no left image"):
        stereo_folder.list_pairs(root, "train")
    problems = []
    pairs = stereo_folder.list_pairs(root, "train", on_bad=problems.append)
    assert [p.name for p in pairs] == ["a"]
    assert sorted(p.path.name for p in problems) == ["b.png", "c.png"]

    result = builders.build("stereo_folder", root, tmp_path / "tfds", skip_bad=True, progress=False)
    assert result.num_examples == {"train": 1}
    assert {entry["file"] for entry in result.skipped} == {str(root / "train/left/b.png"),
                                                           str(root / "train/right/c.png")}
    assert build_cli.main(["stereo_folder", "--root", str(root), "--data-dir", str(tmp_path / "t2")]) == 2


def test_stereo_folder_pair_checks(tmp_path):
    root = tmp_path / "folder"
    _write_pair(root / "train", "a", 0)
    (root / "calibration.yaml").write_text(yaml.safe_dump(CALIB))
    Image.new("RGB", (SIZE[1] + 1, SIZE[0])).save(root / "train/right/a.png")
    (pair,) = stereo_folder.list_pairs(root, "train")
    with pytest.raises(DataFileError, match="right/a.png: image size 65x24 differs"):
        builders.build("stereo_folder", root, tmp_path / "tfds", progress=False)
    with pytest.raises(DataFileError, match="principal point"):
        stereo_folder.check_pair(pair, (10, 20), (10, 20))


def _plane_view(doffs: float, right: bool) -> np.ndarray:
    """(H, W, 3) uint8 view of a textured plane Z(v) = 4 + 0.1 v, texture 128 + 90 sin(2 pi X / 2 m), seen by the
    left camera of CALIB or the right one (at +baseline, principal point cx + doffs)."""
    height, width = SIZE
    v, u = np.mgrid[:height, :width].astype(np.float64)
    z = 4 + 0.1 * v
    cx = CALIB["cx"] + (doffs if right else 0.0)
    x = (u - cx) * z / CALIB["fx"] + (CALIB["baseline"] if right else 0.0)
    grey = np.round(128 + 90 * np.sin(2 * np.pi * x / 2.0)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


@pytest.mark.parametrize("doffs", [6.5, -3.0])
def test_stereo_folder_doffs_alignment(tmp_path, doffs):
    """A rig whose principal points differ by doffs: the built right view, warped with the stored depth_gt, K and
    baseline (disparity K[0, 0] * baseline / depth), reproduces the built left view; ignoring doffs does not."""
    root = tmp_path / "rig"
    for side in ("left", "right", "depth"):
        (root / "test" / side).mkdir(parents=True)
    Image.fromarray(_plane_view(doffs, right=False)).save(root / "test/left/a.png")
    Image.fromarray(_plane_view(doffs, right=True)).save(root / "test/right/a.png")
    np.save(root / "test/depth/a.npy", np.broadcast_to((4 + 0.1 * np.arange(SIZE[0]))[:, None], SIZE))
    (root / "calibration.yaml").write_text(yaml.safe_dump({**CALIB, "doffs": doffs}))
    builders.build("stereo_folder", root, tmp_path / "tfds", progress=False)
    (record,) = _source(tmp_path / "tfds", "stereo_folder", "test")
    kept = SIZE[1] - abs(math.floor(doffs)) - (doffs % 1 > 0)
    assert record["image_s"].shape == record["image_o"].shape == (SIZE[0], kept, 3)
    assert record["depth_gt"].shape == (SIZE[0], kept)

    def warp_error(left, right, disparity):  # |left(u) - right(u - d)| where u - d is inside the image
        u = np.arange(left.shape[1], dtype=np.float64)
        errors = [np.abs(left[v, :, 0] - np.interp(u - disparity[v], u, right[v, :, 0]))[u - disparity[v] >= 0]
                  for v in range(left.shape[0])]
        return max(e.max() for e in errors)

    disparity = record["K"][0, 0] * record["baseline"] / record["depth_gt"][:, 0].astype(np.float64)
    assert warp_error(record["image_s"].astype(float), record["image_o"].astype(float), disparity) < 3
    raw_l, raw_r = (_plane_view(doffs, right).astype(float) for right in (False, True))
    assert warp_error(raw_l, raw_r, CALIB["fx"] * CALIB["baseline"] / (4 + 0.1 * np.arange(SIZE[0]))) > 30
    summary = json.loads((Path(tfds.builder_from_directory(str(next((tmp_path / "tfds").glob("*/*")))).data_dir)
                          / builders.CALIBRATION_FILE).read_text())
    assert summary["alignments"][f"calibration.yaml {SIZE[1]}x{SIZE[0]}"]["doffs"] == doffs
    assert summary["fx_baseline_per_width"]["test"] == [pytest.approx(CALIB["fx"] * CALIB["baseline"] / kept)]


@pytest.mark.parametrize("content, match", [
    ({**CALIB, "fy_right": 47.0}, "fy_right 47.0 differs from fy 48.0"),
    ({**CALIB, "doffs": 2.0, "cx_right": 35.5}, "doffs 2.0 disagrees with cx_right - cx = 4.0"),
    ({**CALIB, "basline": 0.5}, "unknown key.*basline"),
    ({k: v for k, v in CALIB.items() if k != "fy"}, "missing key.*fy"),
    ({**CALIB, "baseline": -0.5}, "baseline must be > 0"),
    ({**CALIB, "cx": "left"}, "cx must be a finite number"),
])
def test_calibration_errors_name_file_and_key(tmp_path, content, match):
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(DataFileError, match=f"calibration.yaml: .*{match}"):
        stereo_folder.read_calibration(path)


def test_options_and_cli_errors(fake_raw, tmp_path, capsys):
    with pytest.raises(ValueError, match="config do not apply to dataset kitti_raw"):
        builders.build("kitti_raw", fake_raw.root, tmp_path, config="raw")
    with pytest.raises(ValueError, match="unknown dataset"):
        builders.build("kitti", fake_raw.root, tmp_path)
    assert build_cli.main(["kitti_raw", "--root", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere: dataset root is not a directory" in err
    assert build_cli._split_files(["x.txt"]) == "x.txt"
    assert build_cli._split_files(["train=a.txt", "val=b.txt"]) == {"train": "a.txt", "val": "b.txt"}


def test_build_and_read_without_tensorflow(fake_raw, tmp_path):
    """CLI build, data_source and grain in a fresh interpreter: TensorFlow is never imported."""
    code = textwrap.dedent(f"""
        import sys
        import grain
        import tensorflow_datasets as tfds
        from tiodepth_jax.data import build
        assert build.main(["kitti_eigen_test", "--root", {str(fake_raw.root)!r}, "--data-dir", {str(tmp_path)!r},
                           "--split-file", {str(fake_raw.test_split)!r}, "--config", "improved"]) == 0
        ds = tfds.data_source("kitti_eigen_test/improved", data_dir={str(tmp_path)!r}, split="test")
        batch = next(iter(grain.MapDataset.source(ds).shuffle(seed=0).batch(2)))
        assert batch["image_s"].shape[0] == 2 and batch["depth_gt"].ndim == 3
        assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if "tensorflow." in m)[:5]
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("OK") and "kitti_eigen_test: test" in proc.stdout
