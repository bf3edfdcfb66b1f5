"""The inference command: preprocessing policy, batching / compile counts, outputs, errors, colour maps;
Depth-Anything-V2 and TiO-Depth (single images, stereo pairs)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tiodepth_jax import predict
from tiodepth_jax.checkpoint import FORMAT, save_model
from tiodepth_jax.colormap import SPECTRAL_HEX, colorize, get_lut, hex_to_rgb
from tiodepth_jax.images import image_size, list_images, read_image
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.models.dinov2 import DinoV2Config
from tiodepth_jax.models.dpt import DPTConfig
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.ops.resize import interpolate_bilinear

TINY = DepthAnythingV2Config(dinov2=DinoV2Config(embed_dim=32, depth=2, num_heads=2),
                             dpt=DPTConfig(in_channels=32, features=8, out_channels=(8, 8, 8, 8)),
                             taps=(0, 1, 0, 1))
SIZES = {"a": (30, 50), "b": (30, 50), "c": (30, 50), "d": (45, 40)}  # network shapes (28, 42) x3, (28, 28)


def tiny_model() -> DepthAnythingV2:
    """TINY with its last bias at 1, so that depth is mostly positive rather than cut to 0 by the ReLU."""
    model = DepthAnythingV2(TINY, rngs=nnx.Rngs(0))
    model.depth_head.scratch.output_conv2[2].bias[...] = 1.0
    return model


def write_rgb(path, h, w, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "tiny", tiny_model())


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for k, (name, (h, w)) in enumerate(SIZES.items()):
        write_rgb(folder / f"{name}.png", h, w, seed=k)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("hw, size, expected", [
    ((240, 320), 518, (518, 686)),    # w: 320 * 518/240 / 14 = 49.33 -> 49 * 14
    ((1080, 1920), 518, (518, 924)),  # w: 1920 * 518/1080 / 14 = 65.78 -> 66 * 14
    ((30, 50), 28, (28, 42)),         # w: 50 * 28/30 / 14 = 3.33 -> 3 * 14
    ((45, 40), 28, (28, 28)),         # scale 28/40; h: 31.5 / 14 = 2.25 -> 2 * 14
    ((28, 49), 28, (28, 56)),         # w: 49 / 14 = 3.5 -> 4 (round half to even)
    ((28, 35), 28, (28, 28)),         # w: 35 / 14 = 2.5 -> 2 (round half to even)
    ((100, 100), 20, (28, 28)),       # 20 / 14 rounds to 14 < 20 -> ceil -> 28
])
def test_network_input_shape(hw, size, expected):
    assert predict.network_input_shape(*hw, size) == expected


def test_plan_batches_one_batch_size_per_shape():
    sizes = [(30, 50), (45, 40), (30, 50), (30, 50)]
    batches = predict.plan_batches(sizes, input_size=28, batch_size=2)
    assert [(b.shape, b.indices, b.padded_size) for b in batches] == [
        ((28, 42), (0, 2), 2), ((28, 42), (3,), 2), ((28, 28), (1,), 1)]


def test_preprocess_normalises():
    image = np.full((30, 50, 3), 0.5, np.float32)
    x = predict.preprocess(image, (28, 42))
    assert x.shape == (28, 42, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[5, 5], (0.5 - predict.IMAGENET_MEAN) / predict.IMAGENET_STD, rtol=1e-5)


def test_predict_files_shapes_outputs_and_compile_count(checkpoint, image_dir, tmp_path):
    predictor = predict.load_predictor(checkpoint)
    paths = list_images([image_dir])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png", "d.png"]
    predict.predict_files(predictor, paths, tmp_path, input_size=28, batch_size=2)
    assert predictor.num_traces == 2  # (2, 28, 42) for a,b and padded c; (1, 28, 28) for d
    for name, hw in SIZES.items():
        depth = np.load(tmp_path / f"{name}.npy")
        assert depth.shape == hw and depth.dtype == np.float32
        assert np.isfinite(depth).all() and (depth >= 0).all()
        assert read_image(tmp_path / f"{name}.png").shape == (*hw, 3)
    predict.predict_files(predictor, paths, tmp_path / "again", input_size=28, batch_size=2, png=False)
    assert predictor.num_traces == 2
    assert not list((tmp_path / "again").glob("*.png"))
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "c.npy"), np.load(tmp_path / "c.npy"))


def test_main_float32_and_bfloat16_agree(checkpoint, image_dir, tmp_path, capsys):
    for dtype in ("float32", "bfloat16"):
        argv = ["--checkpoint", str(checkpoint), "--input", str(image_dir / "a.png"), str(image_dir / "b.png"),
                "--out", str(tmp_path / dtype), "--input-size", "42", "--batch-size", "4", "--dtype", dtype]
        assert predict.main(argv) == 0
    assert "wrote 2 depth map(s)" in capsys.readouterr().out
    for name in ("a", "b"):
        f32, bf16 = (np.load(tmp_path / dtype / f"{name}.npy") for dtype in ("float32", "bfloat16"))
        assert f32.shape == bf16.shape == SIZES[name] and f32.std() > 0
        np.testing.assert_allclose(bf16, f32, rtol=0.03, atol=1e-3)  # bf16 keeps ~3 digits


def run_main_error(argv, capsys) -> str:
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_undecodable_image_is_named(checkpoint, tmp_path, capsys):
    write_rgb(tmp_path / "good.png", 30, 50)
    (tmp_path / "x.png").write_bytes(b"\x00garbage, not a png" * 10)
    err = run_main_error(["--checkpoint", str(checkpoint), "--input", str(tmp_path), "--out", str(tmp_path / "o")],
                         capsys)
    assert "x.png" in err and "cannot decode" in err
    assert not (tmp_path / "o" / "good.npy").exists()  # headers are checked before anything runs


def test_input_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    base = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--input"]
    assert "empty" in run_main_error(base + [str(tmp_path / "empty")], capsys)
    assert "missing.jpg" in run_main_error(base + [str(tmp_path / "missing.jpg")], capsys)
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        write_rgb(tmp_path / folder / "img.png", 20, 20)
    err = run_main_error(base + [str(tmp_path / "one"), str(tmp_path / "two")], capsys)
    assert "one/img.png" in err and "two/img.png" in err
    in_place = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "one"), "--out", str(tmp_path / "one")]
    assert "would overwrite an input" in run_main_error(in_place, capsys)


def test_checkpoint_errors(tmp_path, capsys):
    write_rgb(tmp_path / "img.png", 20, 20)
    argv = ["--input", str(tmp_path / "img.png"), "--out", str(tmp_path / "o"), "--checkpoint"]
    assert "neither a tiodepth_jax model directory" in run_main_error(argv + [str(tmp_path)], capsys)
    other = tmp_path / "stereo"
    (other / "params").mkdir(parents=True)
    (other / "model.json").write_text(json.dumps({"format": FORMAT, "kind": "tiodepth_stereo", "config": {}}))
    assert "'tiodepth_stereo'" in run_main_error(argv + [str(other)], capsys)


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert predict.main(["--demo", "--out", str(tmp_path), "--input-size", "28", "--batch-size", "2"]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    for k in range(predict.DEMO_NUM_IMAGES):
        depth = np.load(tmp_path / f"demo_{k}.npy")
        assert depth.shape == predict.DEMO_IMAGE_HW and np.isfinite(depth).all()
        assert read_image(tmp_path / f"demo_{k}.png").shape == (*predict.DEMO_IMAGE_HW, 3)


def test_list_and_read_images(tmp_path):
    write_rgb(tmp_path / "B.JPG", 8, 6)
    Image.fromarray(np.full((5, 7), 128, np.uint8)).save(tmp_path / "a.png")          # greyscale
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "c16.png")     # 16-bit
    Image.fromarray(np.zeros((3, 3, 4), np.uint8)).save(tmp_path / "d.webp")          # RGBA
    paths = list_images([tmp_path, tmp_path / "a.png"])
    assert [p.name for p in paths] == ["B.JPG", "a.png", "c16.png", "d.webp"]
    grey = read_image(tmp_path / "a.png")
    assert grey.shape == (5, 7, 3) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 128 / 255)
    np.testing.assert_allclose(read_image(tmp_path / "c16.png"), 1.0)
    assert read_image(tmp_path / "d.webp").shape == (3, 3, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: width and height swap
    Image.fromarray(np.zeros((4, 9, 3), np.uint8)).save(tmp_path / "rot.jpg", exif=exif)
    assert image_size(tmp_path / "rot.jpg") == read_image(tmp_path / "rot.jpg").shape[:2] == (9, 4)


def test_colormap_handles_degenerate_input():
    spectral, spectral_r = get_lut("spectral"), get_lut("Spectral_r")
    assert spectral.shape == (256, 3) and spectral.dtype == np.uint8
    assert tuple(spectral[0]) == hex_to_rgb(SPECTRAL_HEX[0]) and tuple(spectral[-1]) == hex_to_rgb(SPECTRAL_HEX[-1])
    assert tuple(spectral_r[0]) == hex_to_rgb(SPECTRAL_HEX[-1]) and tuple(spectral_r[-1]) == hex_to_rgb(SPECTRAL_HEX[0])
    # (tests/test_colormap.py checks every entry against matplotlib)

    ramp = np.linspace(0.0, 3.0, 12, dtype=np.float32).reshape(3, 4)
    rgb = colorize(ramp)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == tuple(spectral_r[0]) and tuple(rgb[-1, -1]) == tuple(spectral_r[255])
    np.testing.assert_array_equal(colorize(np.full((4, 5), 7.0)), np.broadcast_to(spectral_r[0], (4, 5, 3)))
    special = colorize(np.array([[0.0, 1.0, np.nan, np.inf, -np.inf]]), cmap="gray")
    assert special[0, :, 0].tolist() == [0, 255, 0, 255, 0]


# ---------------------------------------------------------------------------------------------------
# TiO-Depth
# ---------------------------------------------------------------------------------------------------

# Decoder widths of 16: the SE layer's reduction of 16 needs C >= 16.
TIO = TiODepthConfig(variant="vits", encoder_depth=1, encoder_taps=(0, 0, 0, 0), decoder_channels=(16, 16, 16, 16),
                     image_size=(28, 56))
PAIR_SIZES = {"a": (30, 60), "b": (30, 60), "c": (40, 72)}  # --size auto: (28, 56) x2, (42, 70)


def tiny_tio() -> TiODepth:
    """TiODepth(TIO) with seeded numpy weights (normal, std 1/sqrt(fan-in), 0.1 for vectors) and BatchNorm
    statistics at mean 0, var 1. Faster than the initialisers, which compile a program per parameter shape
    (~7 s on 2 cores); the model is still built by its constructor (under `nnx.eval_shape`)."""
    rng = np.random.default_rng(0)

    def fill(path, v):
        if path[-1] in ("mean", "num_batches_tracked", "var"):
            return jnp.full(v.shape, path[-1] == "var", v.dtype)
        std = 0.1 if len(v.shape) < 2 else np.prod(v.shape[:-1]) ** -0.5
        return jnp.asarray(rng.normal(0.0, std, v.shape), v.dtype)

    graphdef, state = nnx.split(nnx.eval_shape(lambda: TiODepth(TIO, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.map_state(fill, state))


@pytest.fixture(scope="module")
def tio_checkpoint(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "tio", tiny_tio())


@pytest.fixture(scope="module")
def stereo_dirs(tmp_path_factory):
    """left/ and right/ folders with the images of PAIR_SIZES; right = left shifted by 2 columns plus noise."""
    root = tmp_path_factory.mktemp("stereo")
    for side in ("left", "right"):
        (root / side).mkdir()
    for k, (name, (h, w)) in enumerate(PAIR_SIZES.items()):
        rng = np.random.default_rng(k)
        left = rng.integers(0, 256, (h, w + 2, 3), dtype=np.uint8)
        right = np.clip(left[:, 2:].astype(int) + rng.integers(-10, 11, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(left[:, :w]).save(root / "left" / f"{name}.png")
        Image.fromarray(right).save(root / "right" / f"{name}.png")
    return root


def check_depth_outputs(folder, sizes):
    """Metric depth maps at the images' own sizes: float32, finite, > 0, and decodable PNGs."""
    for name, hw in sizes.items():
        depth = np.load(folder / f"{name}.npy")
        assert depth.shape == hw and depth.dtype == np.float32
        assert np.isfinite(depth).all() and (depth > 0).all()
        assert read_image(folder / f"{name}.png").shape == (*hw, 3)


@pytest.mark.parametrize("hw, expected", [
    ((375, 1242), (378, 1246)),  # 26.79 -> 27, 88.71 -> 89
    ((30, 60), (28, 56)),        # 2.14 -> 2, 4.29 -> 4
    ((40, 72), (42, 70)),        # 2.86 -> 3, 5.14 -> 5
    ((21, 35), (28, 42)),        # 1.5 -> 2, 2.5 -> 3: halves round up
    ((5, 100), (14, 98)),        # 0.36 -> 0 -> at least 14
])
def test_auto_size(hw, expected):
    assert predict.nearest_multiple_shape(*hw) == expected
    assert predict.network_input_shape(*hw, "auto") == expected
    assert predict.network_input_shape(*hw, (378, 1260)) == (378, 1260)


def test_fixed_size_must_be_patch_multiples():
    with pytest.raises(ValueError, match="multiples of 14"):
        predict.network_input_shape(30, 60, (30, 56))


def test_lanczos_preprocess_is_the_8bit_pil_transform():
    image = np.random.default_rng(0).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    x = predict.preprocess_lanczos(image.astype(np.float32) / 255, (28, 56))
    expected = np.asarray(Image.fromarray(image).resize((56, 28), Image.Resampling.LANCZOS), np.float32) / 255
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, expected)  # the original's Resize(LANCZOS) + ToTensor, bit for bit


def test_tio_single_images(tio_checkpoint, stereo_dirs, tmp_path, capsys):
    images = {name: stereo_dirs / "left" / f"{name}.png" for name in ("a", "c")}
    sizes = {name: PAIR_SIZES[name] for name in images}
    # Mono through predict_files: one compile for both images at the fixed size, depth resized back.
    predictor = predict.load_predictor(tio_checkpoint, mode="Mono")
    assert predictor.views == 1
    predict.predict_files(predictor, list(images.values()), tmp_path / "mono", input_size=(28, 56))
    check_depth_outputs(tmp_path / "mono", sizes)
    x = np.stack([predict.preprocess_lanczos(read_image(p), (28, 56)) for p in images.values()])
    depth = np.asarray(predictor(x))  # (2, 28, 56), the same shape: no new compile
    assert predictor.num_traces == 1
    for k, (name, hw) in enumerate(sizes.items()):
        back = interpolate_bilinear(depth[k][None, ..., None], size=hw, align_corners=False)[0, ..., 0]
        np.testing.assert_allclose(np.load(tmp_path / "mono" / f"{name}.npy"), back, rtol=1e-6)

    # Refine, the default mode, at --size auto (a and b: 30x60 -> 28x56), from the command line.
    pair_ab = [str(stereo_dirs / "left" / f"{name}.png") for name in ("a", "b")]
    refine = ["--checkpoint", str(tio_checkpoint), "--input", *pair_ab, "--out", str(tmp_path / "refine"),
              "--size", "auto", "--batch-size", "1"]
    assert predict.main(refine) == 0
    out = capsys.readouterr().out
    assert "2 image(s), mode Refine, size auto" in out and "(1 input shape(s) compiled)" in out
    check_depth_outputs(tmp_path / "refine", {name: PAIR_SIZES[name] for name in ("a", "b")})
    assert not np.allclose(np.load(tmp_path / "refine" / "a.npy"), np.load(tmp_path / "mono" / "a.npy"), rtol=1e-3)

    # Mono in bfloat16 agrees with float32 to bfloat16's precision.
    bf16 = ["--checkpoint", str(tio_checkpoint), "--input", *map(str, images.values()), "--out", str(tmp_path / "bf16"),
            "--size", "28", "56", "--mode", "Mono", "--dtype", "bfloat16"]
    assert predict.main(bf16) == 0
    check_depth_outputs(tmp_path / "bf16", sizes)
    for name in images:
        bf16_depth, f32_depth = (np.load(tmp_path / d / f"{name}.npy") for d in ("bf16", "mono"))
        np.testing.assert_allclose(bf16_depth, f32_depth, rtol=0.02)


def test_tio_stereo_pair_and_folders(tio_checkpoint, stereo_dirs, tmp_path, capsys):
    base = ["--checkpoint", str(tio_checkpoint)]
    left, right = stereo_dirs / "left", stereo_dirs / "right"
    one = base + ["--left", str(left / "a.png"), "--right", str(right / "a.png"), "--out", str(tmp_path / "one"),
                  "--size", "28", "56"]
    assert predict.main(one) == 0
    assert "1 pair(s), mode Stereo, size 28x56" in capsys.readouterr().out
    check_depth_outputs(tmp_path / "one", {"a": PAIR_SIZES["a"]})

    folders = base + ["--left", str(left), "--right", str(right), "--out", str(tmp_path / "all"),
                      "--size", "28", "56", "--batch-size", "2", "--no-png"]
    assert predict.main(folders) == 0
    out = capsys.readouterr().out  # batches (a, b) and (c, padding): one shape, one compile
    assert "3 pair(s), mode Stereo, size 28x56" in out and "(1 input shape(s) compiled)" in out
    for name, hw in PAIR_SIZES.items():
        depth = np.load(tmp_path / "all" / f"{name}.npy")
        assert depth.shape == hw and np.isfinite(depth).all() and (depth > 0).all()
    assert not list((tmp_path / "all").glob("*.png"))
    # The folders were paired by name: a's depth is the one of the single pair a.
    np.testing.assert_allclose(np.load(tmp_path / "all" / "a.npy"), np.load(tmp_path / "one" / "a.npy"), rtol=1e-5)
    assert not np.allclose(np.load(tmp_path / "all" / "b.npy"), np.load(tmp_path / "one" / "a.npy"), rtol=1e-3)


def test_list_pairs(stereo_dirs):
    left, right = stereo_dirs / "left", stereo_dirs / "right"
    assert predict.list_pairs(left, right) == [(left / n, right / n) for n in ("a.png", "b.png", "c.png")]
    assert predict.list_pairs(left / "b.png", right / "c.png") == [(left / "b.png", right / "c.png")]


def test_tio_pair_errors(tio_checkpoint, checkpoint, stereo_dirs, tmp_path, capsys):
    for side in ("l", "r", "empty"):
        (tmp_path / side).mkdir()
    for name in ("a", "b"):
        write_rgb(tmp_path / "l" / f"{name}.png", 30, 60)
    write_rgb(tmp_path / "l" / "only_left.png", 30, 60)
    write_rgb(tmp_path / "r" / "a.png", 30, 60)
    write_rgb(tmp_path / "r" / "b.png", 30, 62)  # not the size of l/b.png
    out = ["--out", str(tmp_path / "o")]

    def pair_error(left, right, ckpt=tio_checkpoint):
        return run_main_error(["--checkpoint", str(ckpt), "--left", str(left), "--right", str(right), *out], capsys)

    err = pair_error(tmp_path / "l", tmp_path / "r")
    assert "only_left.png" in err and "no partner" in err
    (tmp_path / "l" / "only_left.png").unlink()
    err = pair_error(tmp_path / "l", tmp_path / "r")
    assert "l/b.png is 30x60" in err and "r/b.png is 30x62" in err and "same size" in err
    assert not (tmp_path / "o").exists()  # sizes are checked before anything runs
    assert "r/b.png" in pair_error(tmp_path / "l" / "b.png", tmp_path / "r" / "b.png")
    assert "no images" in pair_error(tmp_path / "empty", tmp_path / "r")
    assert "missing.png" in pair_error(tmp_path / "l" / "a.png", tmp_path / "missing.png")
    assert "both be files or both be folders" in pair_error(tmp_path / "l" / "a.png", tmp_path / "r")
    (tmp_path / "r" / "a.png").write_bytes(b"\x00garbage, not a png" * 10)
    assert "cannot decode" in pair_error(tmp_path / "l" / "a.png", tmp_path / "r" / "a.png")
    assert "need a TiO-Depth checkpoint" in pair_error(stereo_dirs / "left", stereo_dirs / "right", ckpt=checkpoint)
    single = ["--input", str(tmp_path / "l" / "a.png"), *out, "--mode"]
    assert "need a TiO-Depth checkpoint" in run_main_error(["--checkpoint", str(checkpoint), *single, "Mono"], capsys)
    mode = ["--checkpoint", str(tio_checkpoint), *single]
    for argv in (mode + ["Stereo"],                                               # Stereo needs pairs
                 ["--checkpoint", str(tio_checkpoint), "--left", str(tmp_path / "l"), *out],  # no --right
                 ["--checkpoint", str(tio_checkpoint), "--left", str(tmp_path / "l"), "--right", str(tmp_path / "r"),
                  "--mode", "Refine", *out],                                      # pairs run Stereo
                 mode + ["Mono", "--size", "28", "50"],                           # not a multiple of 14
                 mode + ["Mono", "--size", "28", "56", "--input-size", "28"]):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(argv)
        assert exit_info.value.code == 2
    assert "multiples of 14" in capsys.readouterr().err
