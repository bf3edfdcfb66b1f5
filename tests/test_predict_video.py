"""predict on videos: a clip's depth equals predict's on its frames saved as PNGs, the colour video has every frame
at the clip's rate on one colour range, stereo from two files or one side-by-side file, one-line errors."""

import numpy as np
import pytest

from tests.test_predict import TIO, run_main_error, tiny_model, tiny_tio
from tiodepth_jax import predict, video
from tiodepth_jax.checkpoint import save_model
from tiodepth_jax.colormap import colorize
from tiodepth_jax.images import write_png

av = pytest.importorskip("av")

FRAMES, HW, RATE = 12, (30, 50), 25
STEREO_FRAMES = 6


def write_clip(path, frames, rate=RATE, codec="libx264", pix_fmt="yuv420p"):
    """Encode (H, W, 3) uint8 RGB frames as a video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decode_clip(path):
    """All frames of a video as (H, W, 3) uint8 RGB, decoded by PyAV directly, and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


def scene_frames(h, w, count=FRAMES):
    """`count` generated scenes, the ball moving from frame to frame."""
    return [np.round(predict.synthetic_scene(h, w, seed=k) * 255).astype(np.uint8) for k in range(count)]


@pytest.fixture(scope="module")
def dav2_checkpoint(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "dav2", tiny_model())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", scene_frames(*HW))


@pytest.fixture
def shared_predictor(monkeypatch):
    """The first predictor loaded by predict.main serves its later calls too: one compile for all of them."""
    loaded, load = {}, predict.load_predictor

    def load_once(*args, **kwargs):
        if "p" not in loaded:
            loaded["p"] = load(*args, **kwargs)
        return loaded["p"]

    monkeypatch.setattr(predict, "load_predictor", load_once)
    return loaded


def test_video_depth_equals_predict_on_its_frames(dav2_checkpoint, clip, tmp_path, capsys, shared_predictor):
    """The README's video command on a tiny Depth-Anything-V2 (at --input-size 28): 12 frames in, a 12-frame colour
    video out, and a .npz whose depth is bit for bit predict's on the clip's frames decoded to PNG files: the same
    8-bit RGB (one decoder), the same float conversion and preprocessing, the same batches of 4 through the same
    compiled forward."""
    checkpoint = dav2_checkpoint
    frames, rate = decode_clip(clip)
    assert len(frames) == FRAMES and rate == RATE
    (tmp_path / "frames").mkdir()
    for k, rgb in enumerate(frames):
        write_png(tmp_path / "frames" / f"{k:02d}.png", rgb)
    small = ["--input-size", "28", "--batch-size", "4"]
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "frames"),
                         "--out", str(tmp_path / "images"), "--no-png", *small]) == 0
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(clip), "--out", str(tmp_path / "outputs"),
                         "--npz", *small]) == 0
    out, err = capsys.readouterr()
    assert "1 video(s), input size 28, batch 4" in out and "(12 frames)" in out
    assert "(1 input shape(s) compiled)" in out  # the images' program served the video
    assert "frame/s" in err and "12 frames of 30x50 at 25 frames/s" in err

    depth = np.load(tmp_path / "outputs" / "clip.npz")["depth"]
    assert depth.shape == (FRAMES, *HW) and depth.dtype == np.float32 and depth.std() > 0
    np.testing.assert_array_equal(depth, np.stack([np.load(tmp_path / "images" / f"{k:02d}.npy")
                                                   for k in range(FRAMES)]))

    video_frames, video_rate = decode_clip(tmp_path / "outputs" / "clip.mp4")
    assert len(video_frames) == FRAMES and video_rate == RATE and video_frames[0].shape == (*HW, 3)
    low, high = predict.clip_range(depth)
    assert f"colours from {low:.4g} to {high:.4g}" in err
    # Every frame coloured on the clip's range: the video is that of those colour maps (VideoWriter is reproducible).
    with video.VideoWriter(tmp_path / "expected.mp4", RATE) as writer:
        for k in range(FRAMES):
            writer.write(colorize(depth[k], vmin=low, vmax=high))
    np.testing.assert_array_equal(np.stack(video_frames), np.stack(decode_clip(tmp_path / "expected.mp4")[0]))


def test_video_writer_gives_the_same_file_for_the_same_frames(tmp_path):
    """Two clips of noisy colour waves (30x50 and 90x150, sides not multiples of 16), written 30 times each in
    turn, give two files. With x264's defaults (macroblock-tree on) this failed in 8 runs of 8: encodes of the
    same frames differed with what the heap held."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HW[0], 0:HW[1]]
    frames = [colorize(np.sin(x / 7 + k / 3) + np.cos(y / 5 - k / 4) + 0.05 * rng.random(HW), vmin=-2, vmax=2)
              for k in range(FRAMES)]
    contents = set()
    for _ in range(30):
        for clip in (frames, [np.tile(rgb, (3, 3, 1)) for rgb in frames]):  # the heap left by a larger clip between
            with video.VideoWriter(tmp_path / "waves.mp4", RATE) as writer:
                for rgb in clip:
                    writer.write(rgb)
            contents.add((tmp_path / "waves.mp4").read_bytes())
    assert len(contents) == 2


def test_clip_range_is_robust_and_subsampled(monkeypatch):
    depths = np.tile(np.linspace(1, 100, 100, dtype=np.float32).reshape(10, 10), (3, 1, 1))
    depths[1, 0, 0], depths[2, 0, 0] = 1e6, np.nan  # one extreme pixel and one without depth
    assert predict.clip_range(depths) == pytest.approx((3.0, 99.0), abs=0.2)
    monkeypatch.setattr(predict, "CLIP_RANGE_SAMPLES", 75)  # every 2nd row and column: 3 x 5 x 5 values
    grid = depths[:, ::2, ::2]
    assert predict.clip_range(depths) == pytest.approx(np.percentile(grid[np.isfinite(grid)], (2, 98)))


@pytest.fixture(scope="module")
def tio_checkpoint(tmp_path_factory):
    """The tiny TiO-Depth, recorded as trained on 28x56 images: its default size, as an export's would be."""
    return save_model(tmp_path_factory.mktemp("ckpt") / "tio", tiny_tio(), source={"image_size": list(TIO.image_size)})


def test_stereo_videos(tio_checkpoint, tmp_path, capsys, shared_predictor):
    """The README's side-by-side command, then the same frames as --left/--right videos (with a colour bar, whose
    odd width is padded) and as PNG pairs: the side-by-side depth is predict's on its decoded halves. 6 frames:
    batches of 4 and of 2 padded to 4."""
    # Left and right views 60 wide: the right one sees the scene 4 pixels to the left (a disparity of 4).
    sbs = write_clip(tmp_path / "stereo_clip.mp4", [np.concatenate([f[:, :-4], f[:, 4:]], axis=1)
                                                    for f in scene_frames(30, 64, count=STEREO_FRAMES)])
    assert predict.main(["--checkpoint", str(tio_checkpoint), "--sbs", str(sbs), "--out", str(tmp_path / "outputs"),
                         "--range", "1", "80", "--npz"]) == 0
    assert "1 video(s), mode Stereo, size 28x56, batch 4" in capsys.readouterr().out
    assert len(decode_clip(tmp_path / "outputs" / "stereo_clip.mp4")[0]) == STEREO_FRAMES

    halves = [np.split(f, 2, axis=1) for f in decode_clip(sbs)[0]]
    for v, side in enumerate(("left", "right")):
        (tmp_path / side).mkdir()
        for k, views in enumerate(halves):
            write_png(tmp_path / side / f"{k:02d}.png", views[v])
    assert predict.main(["--checkpoint", str(tio_checkpoint), "--left", str(tmp_path / "left"), "--right",
                         str(tmp_path / "right"), "--out", str(tmp_path / "pairs"), "--no-png"]) == 0
    depth = np.load(tmp_path / "outputs" / "stereo_clip.npz")["depth"]
    assert depth.shape == (STEREO_FRAMES, 30, 60) and (depth > 0).all()
    np.testing.assert_array_equal(depth, np.stack([np.load(tmp_path / "pairs" / f"{k:02d}.npy")
                                                   for k in range(STEREO_FRAMES)]))

    left = write_clip(tmp_path / "L.mp4", [views[0] for views in halves])
    right = write_clip(tmp_path / "R.mp4", [views[1] for views in halves])
    assert predict.main(["--checkpoint", str(tio_checkpoint), "--left", str(left), "--right", str(right),
                         "--out", str(tmp_path / "lr"), "--colorbar"]) == 0
    assert "(1 input shape(s) compiled)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == ["L.mp4"]
    frames, _ = decode_clip(tmp_path / "lr" / "L.mp4")
    h, w = shared_predictor["p"].colour_image(depth[0], predict.Outputs(colorbar=True)).shape[:2]
    assert h % 2  # the colour bar makes the frames 91 high: the video repeats the last row
    assert len(frames) == STEREO_FRAMES and frames[0].shape == (h + 1, w + w % 2, 3)


def test_video_errors(dav2_checkpoint, tio_checkpoint, clip, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    (tmp_path / "garbage.mp4").write_bytes(b"\x00not a video" * 50)
    err = run_main_error(["--checkpoint", str(dav2_checkpoint), "--input", str(tmp_path / "garbage.mp4"), *out], capsys)
    assert err.count("\n") == 1 and "cannot read video" in err and "garbage.mp4" in err

    with av.open(str(tmp_path / "sound.mp4"), "w") as container:  # audio only
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    err = run_main_error(["--checkpoint", str(dav2_checkpoint), "--input", str(tmp_path / "sound.mp4"), *out],
                         capsys)
    assert err.count("\n") == 1 and "sound.mp4 is not a video: it has no video stream" in err

    short = write_clip(tmp_path / "short.mp4", scene_frames(*HW, count=5))
    err = run_main_error(["--checkpoint", str(tio_checkpoint), "--left", str(clip), "--right", str(short), *out],
                         capsys)
    assert err.count("\n") == 1 and "same frame count and size" in err
    assert "clip.mp4 has 12 frames of 30x50" in err and "short.mp4 has 5 frames of 30x50" in err

    odd = write_clip(tmp_path / "odd.avi", scene_frames(30, 51, count=2), codec="rawvideo", pix_fmt="rgb24")
    err = run_main_error(["--checkpoint", str(tio_checkpoint), "--sbs", str(odd), *out], capsys)
    assert err.count("\n") == 1 and "odd.avi has an odd width (51)" in err
    err = run_main_error(["--checkpoint", str(tio_checkpoint), "--sbs", str(tmp_path / "missing.mp4"), *out], capsys)
    assert "missing.mp4 does not exist" in err
    assert not (tmp_path / "o").exists()

    image = tmp_path / "frame.png"
    write_png(image, scene_frames(*HW, count=1)[0])
    for argv, message in ((["--input", str(clip), str(image)], "or images, not both"),
                          (["--input", str(image), "--npz"], "--npz writes the depth of every frame"),
                          (["--input", str(clip), "--no-png"], "--no-png and --pointcloud are for images"),
                          (["--sbs", str(clip), "--left", str(clip), "--right", str(clip)], "one of them"),
                          (["--sbs", str(clip), "--mode", "Mono"], "run --mode Stereo")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(["--checkpoint", str(tio_checkpoint), *argv, *out])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
