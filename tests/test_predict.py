"""The inference command: preprocessing policy, batching / compile counts, outputs (depth, disparity,
colour maps and bars, point clouds), errors, memory estimate; Depth-Anything-V2 and TiO-Depth (single images,
stereo pairs, training runs and their exports)."""

import json
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tiodepth_jax import export_model, predict
from tiodepth_jax.checkpoint import FORMAT, load, save_model
from tiodepth_jax.colormap import SPECTRAL_HEX, colorize, get_lut, hex_to_rgb
from tiodepth_jax.config import load_config
from tiodepth_jax.images import PLY_VERTEX, image_size, list_images, read_image
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.models.dinov2 import DinoV2Config
from tiodepth_jax.models.dpt import DPTConfig
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.ops.resize import interpolate_bilinear
from tiodepth_jax.train.checkpointing import TrainCheckpoints

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
    # Without decoding ahead on a thread (prefetch=0): the same depth maps.
    predict.predict_files(predictor, paths, tmp_path / "again", input_size=28, batch_size=2,
                          outputs=predict.Outputs(png=False), prefetch=0)
    assert predictor.num_traces == 2
    assert not list((tmp_path / "again").glob("*.png"))
    for name in SIZES:
        np.testing.assert_array_equal(np.load(tmp_path / "again" / f"{name}.npy"), np.load(tmp_path / f"{name}.npy"))


def test_decode_error_on_the_prefetch_thread_is_named(checkpoint, image_dir, tmp_path, capsys):
    """A PNG whose header is fine (so the checks before compute pass) but whose pixels are cut off fails on the
    thread that decodes ahead; the command ends with one line naming it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.png").write_bytes((image_dir / f"{name}.png").read_bytes())
    data = (image_dir / "c.png").read_bytes()
    (folder / "c.png").write_bytes(data[:len(data) // 2])
    err = run_main_error(["--checkpoint", str(checkpoint), "--input", str(folder), "--out", str(tmp_path / "o"),
                          "--input-size", "28", "--batch-size", "1", "--no-png"], capsys)
    last = err.splitlines()[-1]  # after the progress bar
    assert last.startswith("error: cannot decode image") and "c.png" in last and "Traceback" not in err
    assert (tmp_path / "o" / "a.npy").is_file()  # the batches before it were written


def test_main_float32_and_bfloat16_agree(checkpoint, image_dir, tmp_path, capsys):
    """... and the PNG options: float32 with a colour bar, bfloat16 on a fixed --range of the output's values."""
    pngs = {"float32": ["--colorbar"], "bfloat16": ["--range", "0.5", "2"]}
    for dtype in ("float32", "bfloat16"):
        argv = ["--checkpoint", str(checkpoint), "--input", str(image_dir / "a.png"), str(image_dir / "b.png"),
                "--out", str(tmp_path / dtype), "--input-size", "42", "--batch-size", "4", "--dtype", dtype]
        assert predict.main(argv + pngs[dtype]) == 0
    assert "wrote 2 depth map(s)" in capsys.readouterr().out
    for name in ("a", "b"):
        f32, bf16 = (np.load(tmp_path / dtype / f"{name}.npy") for dtype in ("float32", "bfloat16"))
        assert f32.shape == bf16.shape == SIZES[name] and f32.std() > 0
        np.testing.assert_allclose(bf16, f32, rtol=0.03, atol=1e-3)  # bf16 keeps ~3 digits
        with_bar = np.asarray(Image.open(tmp_path / "float32" / f"{name}.png"))
        h, w = SIZES[name]
        assert with_bar.shape[0] >= h and with_bar.shape[1] > w + 20
        np.testing.assert_array_equal(with_bar[:h, :w], colorize(f32))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "bfloat16" / f"{name}.png")),
                                      colorize(bf16, vmin=0.5, vmax=2.0))


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


def test_out_must_be_a_folder(checkpoint, image_dir, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("a file")
    for ckpt in (checkpoint, tmp_path / "no_such_model"):  # refused before the model is even looked at
        err = run_main_error(["--checkpoint", str(ckpt), "--input", str(image_dir / "a.png"),
                              "--out", str(tmp_path / "out.txt")], capsys)
        assert err.count("\n") == 1 and "--out" in err and "out.txt is a file" in err


def fake_png(path, h, w):
    """A PNG header (signature, IHDR and an empty IDAT) claiming h x w RGB pixels: enough for `image_size`."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", b""))


def test_memory_estimate_refuses_a_huge_input_before_compiling(checkpoint, tmp_path, capsys, monkeypatch):
    # The estimate's anchor: TiO-Depth ViT-B (12 heads) on a 6000x4000 photo at --size auto (4004x6006, 122695
    # tokens) allocated one 723 GB buffer of attention logits (the bug report said 724 GB), and needs two.
    tokens = 286 * 429 + 1
    assert 12 * tokens**2 * 4 == pytest.approx(724e9, rel=0.01)
    assert predict.memory_estimate(1, (4004, 6006), 1, 12, 14) == 2 * 12 * tokens**2 * 4 + 4004 * 6006 * 256
    assert predict.available_memory(jax.devices()[0]) > 0
    fake_png(tmp_path / "huge.png", 4000, 6000)
    assert image_size(tmp_path / "huge.png") == (4000, 6000)
    monkeypatch.setattr(predict, "available_memory", lambda device: 100e9)
    predictor = predict.load_predictor(checkpoint)
    monkeypatch.setattr(predict, "load_predictor", lambda *args, **kwargs: predictor)
    err = run_main_error(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "huge.png"),
                          "--out", str(tmp_path / "o"), "--size", "auto"], capsys)
    assert err.count("\n") == 1 and "network input size 4004x6006" in err and "huge.png" in err
    assert "needs about 247.0 GB, more than the 100.0 GB free on cpu" in err and "--size H W or --input-size S" in err
    assert predictor.num_traces == 0 and not (tmp_path / "o").exists()


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


def check_depth_outputs(folder, sizes, png=True):
    """Metric depth maps at the images' own sizes: float32, finite, > 0, and decodable PNGs of that size."""
    for name, hw in sizes.items():
        depth = np.load(folder / f"{name}.npy")
        assert depth.shape == hw and depth.dtype == np.float32
        assert np.isfinite(depth).all() and (depth > 0).all()
        assert not png or read_image(folder / f"{name}.png").shape == (*hw, 3)


def read_ply(path) -> np.ndarray:
    """The vertices of a binary little-endian PLY file of `images.PLY_VERTEX` vertices."""
    data = path.read_bytes()
    header, body = data.split(b"end_header\n", 1)
    assert header.startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert b"property float x\nproperty float y\nproperty float z\nproperty uchar red\n" in header
    count = int(header.split(b"element vertex ")[1].split(b"\n")[0])
    assert len(body) == count * PLY_VERTEX.itemsize
    return np.frombuffer(body, PLY_VERTEX)


def check_point_cloud(path, depth, image, intrinsics):
    """One vertex per pixel (all depths are valid here), in row-major order; pixel (row 7, column 11) at
    X = (u - cx) Z / fx, Y = (v - cy) Z / fy, Z = its depth, coloured like the image."""
    fx, fy, cx, cy = intrinsics
    vertices = read_ply(path)
    assert len(vertices) == depth.size
    v, u = 7, 11
    vertex = vertices[v * depth.shape[1] + u]
    z = depth[v, u]
    np.testing.assert_allclose([vertex["x"], vertex["y"], vertex["z"]], [(u - cx) * z / fx, (v - cy) * z / fy, z],
                               rtol=1e-6)
    assert [vertex["red"], vertex["green"], vertex["blue"]] == list(np.round(image[v, u] * 255).astype(np.uint8))


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

    # Refine, the default mode, at --size auto (a and b: 30x60 -> 28x56), from the command line, coloured on a
    # fixed depth range: 1 m red, 100 m blue (inverse depth from 1/100 to 1).
    pair_ab = [str(stereo_dirs / "left" / f"{name}.png") for name in ("a", "b")]
    refine = ["--checkpoint", str(tio_checkpoint), "--input", *pair_ab, "--out", str(tmp_path / "refine"),
              "--size", "auto", "--batch-size", "1", "--range", "1", "100"]
    assert predict.main(refine) == 0
    out = capsys.readouterr().out
    assert "2 image(s), mode Refine, size auto" in out and "(1 input shape(s) compiled)" in out
    check_depth_outputs(tmp_path / "refine", {name: PAIR_SIZES[name] for name in ("a", "b")})
    refine_a = np.load(tmp_path / "refine" / "a.npy")
    assert not np.allclose(refine_a, np.load(tmp_path / "mono" / "a.npy"), rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "refine" / "a.png")),
                                  colorize(1 / refine_a, vmin=np.float32(1 / 100), vmax=1.0))

    # Mono in bfloat16 agrees with float32 to bfloat16's precision; with a point cloud from --fx --fy --cx --cy.
    bf16 = ["--checkpoint", str(tio_checkpoint), "--input", *map(str, images.values()), "--out", str(tmp_path / "bf16"),
            "--size", "28", "56", "--mode", "Mono", "--dtype", "bfloat16",
            "--pointcloud", "--fx", "50", "--fy", "60", "--cx", "29.5", "--cy", "14"]
    assert predict.main(bf16) == 0
    check_depth_outputs(tmp_path / "bf16", sizes)
    for name in images:
        bf16_depth, f32_depth = (np.load(tmp_path / d / f"{name}.npy") for d in ("bf16", "mono"))
        np.testing.assert_allclose(bf16_depth, f32_depth, rtol=0.02)
        check_point_cloud(tmp_path / "bf16" / f"{name}.ply", bf16_depth, read_image(images[name]), (50, 60, 29.5, 14))


def test_tio_stereo_pair_and_folders(tio_checkpoint, stereo_dirs, tmp_path, capsys):
    """Pairs: depth, disparity at the input resolution, a colour bar on a fixed range, a point cloud from a
    calibration file (the README's command for your own rig)."""
    base = ["--checkpoint", str(tio_checkpoint)]
    left, right = stereo_dirs / "left", stereo_dirs / "right"
    (tmp_path / "calibration.yaml").write_text("fx: 50.0\nfy: 60.0\ncx: 29.5\ncy: 14.0\nbaseline: 0.5\n")
    one = base + ["--left", str(left / "a.png"), "--right", str(right / "a.png"), "--out", str(tmp_path / "one"),
                  "--size", "28", "56", "--range", "1", "80", "--colorbar", "--pointcloud",
                  "--calibration", str(tmp_path / "calibration.yaml")]
    assert predict.main(one) == 0
    assert "1 pair(s), mode Stereo, size 28x56" in capsys.readouterr().out
    check_depth_outputs(tmp_path / "one", {"a": PAIR_SIZES["a"]}, png=False)
    depth = np.load(tmp_path / "one" / "a.npy")
    disparity = np.load(tmp_path / "one" / "a_disp.npy")  # 60-wide image, 56-wide network input
    assert disparity.shape == depth.shape and disparity.dtype == np.float32
    np.testing.assert_allclose(disparity * depth, TIO.d2d * 60 / 56, rtol=1e-6)
    png = np.asarray(Image.open(tmp_path / "one" / "a.png"))
    assert png.shape[0] >= 30 and png.shape[1] > 60 + 20
    np.testing.assert_array_equal(png[:30, :60], colorize(1 / depth, vmin=np.float32(1 / 80), vmax=1.0))
    check_point_cloud(tmp_path / "one" / "a.ply", depth, read_image(left / "a.png"), (50, 60, 29.5, 14))
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["a.npy", "a.ply", "a.png", "a_disp.npy"]

    folders = base + ["--left", str(left), "--right", str(right), "--out", str(tmp_path / "all"),
                      "--size", "28", "56", "--batch-size", "2", "--no-png"]
    assert predict.main(folders) == 0
    out = capsys.readouterr().out  # batches (a, b) and (c, padding): one shape, one compile
    assert "3 pair(s), mode Stereo, size 28x56" in out and "(1 input shape(s) compiled)" in out
    for name, hw in PAIR_SIZES.items():
        depth = np.load(tmp_path / "all" / f"{name}.npy")
        assert depth.shape == hw and np.isfinite(depth).all() and (depth > 0).all()
        np.testing.assert_allclose(np.load(tmp_path / "all" / f"{name}_disp.npy") * depth, TIO.d2d * hw[1] / 56,
                                   rtol=1e-6)
    assert not list((tmp_path / "all").glob("*.png")) and not list((tmp_path / "all").glob("*.ply"))
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


def test_output_option_errors(checkpoint, tio_checkpoint, image_dir, tmp_path, capsys):
    image = ["--input", str(image_dir / "a.png"), "--out", str(tmp_path / "o")]
    err = run_main_error(["--checkpoint", str(checkpoint), *image, "--pointcloud", "--fx", "1", "--fy", "1",
                          "--cx", "0", "--cy", "0"], capsys)
    assert "--pointcloud needs metric depth" in err and "'depth_anything_v2'" in err
    err = run_main_error(["--checkpoint", str(tio_checkpoint), *image, "--pointcloud", "--calibration",
                          str(tmp_path / "calibration.yaml")], capsys)
    assert "calibration.yaml" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    tio = ["--checkpoint", str(tio_checkpoint), *image]
    fx_fy_cx = ["--fx", "1", "--fy", "1", "--cx", "0"]
    for argv, message in ((["--pointcloud"], "--pointcloud needs the intrinsics"),
                          (["--pointcloud", *fx_fy_cx], "--pointcloud needs the intrinsics"),
                          (["--pointcloud", "--calibration", "c.yaml", *fx_fy_cx, "--cy", "0"],
                           "--pointcloud needs the intrinsics"),
                          (["--fx", "1"], "intrinsics of --pointcloud"),
                          (["--pointcloud", "--fx", "0", "--fy", "1", "--cx", "0", "--cy", "0"], "must be positive"),
                          (["--range", "2", "1"], "0 < MIN < MAX"),
                          (["--range", "0", "1"], "0 < MIN < MAX"),
                          (["--colorbar", "--no-png"], "which --no-png turns off")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(tio + argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_output_names_of_different_inputs_must_differ(tmp_path):
    suffixes = (".npy", ".png", ".ply", "_disp.npy")  # a TiO-Depth stereo pair's, with --pointcloud
    assert predict.output_stems([tmp_path / "x.png", tmp_path / "y.png"], tmp_path / "o", suffixes) == ["x", "y"]
    with pytest.raises(predict.InputError, match="x.png and .*X_disp.png would both write X_disp.npy"):
        predict.output_stems([tmp_path / "x.png", tmp_path / "X_disp.png"], tmp_path / "o", suffixes)


@pytest.fixture(scope="module")
def tio_run(tmp_path_factory):
    """A training run of the TIO model (bfloat16 compute, images resized to 42x84 for 28x56 crops, validated
    at 28x56) with one checkpoint, of step 5: the weights of `tiny_tio`."""
    cfg = load_config("configs/demo.yaml", [f"workdir={tmp_path_factory.mktemp('tio_run')}"]).to_dict()
    cfg.update(model=TIO.to_dict(), dtype="bfloat16")
    cfg["data"].update(image_size=[42, 84], crop_size=[28, 56])
    cfg["val"]["image_size"] = [28, 56]
    _, params, stats = nnx.split(tiny_tio(), nnx.Param, nnx.BatchStat)
    ckpts = TrainCheckpoints(f"{cfg['workdir']}/checkpoints", async_save=False, config=cfg)
    ckpts.save(5, {"params": params, "batch_stats": stats}, {"epoch": 1})
    ckpts.close()
    return cfg["workdir"]


def test_export_model(tio_run, stereo_dirs, tmp_path, capsys):
    """An exported run is the same model, graph (with its bfloat16 compute dtype) and parameters, with the same
    default input size (the run's data.image_size, not its crop or validation size): predict runs it as the run."""
    out = tmp_path / "exported"
    argv = ["--run", tio_run, "--out", str(out)]
    assert export_model.main(argv) == 0
    assert "step 5" in capsys.readouterr().out
    run, exported = load(tio_run), load(out)
    assert (run.dtype, run.image_size) == (exported.dtype, exported.image_size) == ("bfloat16", (42, 84))
    assert nnx.graphdef(run.model) == nnx.graphdef(exported.model)
    for a, b in zip(jax.tree.leaves(nnx.state(run.model)), jax.tree.leaves(nnx.state(exported.model)), strict=True):
        np.testing.assert_array_equal(a, b)
    image = ["--input", str(stereo_dirs / "left" / "a.png"), "--mode", "Mono", "--no-png"]
    assert predict.main(["--checkpoint", str(out), *image, "--out", str(tmp_path / "depth")]) == 0
    assert "1 image(s), mode Mono, size 42x84, batch 4, the trained dtype" in capsys.readouterr().out
    assert np.load(tmp_path / "depth" / "a.npy").shape == PAIR_SIZES["a"]

    (tmp_path / "empty").mkdir()
    for args, message in ((argv, "exists; pass --overwrite"),
                          (["--run", str(out), "--out", str(tmp_path / "again")], "is a model directory already"),
                          (["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "again")],
                           "nor a training run with checkpoints"),
                          (["--run", str(tmp_path / "missing"), "--out", str(tmp_path / "again")], "does not exist"),
                          (argv + ["--which", "7", "--overwrite"], "no checkpoint of step 7"),
                          (["--run", tio_run, "--out", str(tmp_path / "empty"), "--overwrite"],
                           "not a model directory")):
        assert export_model.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert (out / "model.json").is_file() and (out / "params").is_dir()  # a failed --overwrite removes nothing
    assert export_model.main(argv + ["--overwrite", "--which", "latest"]) == 0
