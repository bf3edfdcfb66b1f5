"""TensorBoard logging: what `SummaryWriter` writes is read back by TensorBoard's own reader (when the
tensorboard package is installed) and by tensorboardX's Event proto over the file's records."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiodepth_jax.train.summary import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]


def _records(path: Path):
    """The payloads of a TFRecord file, each length and payload checked against its masked CRC-32C."""
    from tensorboardX.record_writer import masked_crc32c

    data, offset = path.read_bytes(), 0
    while offset < len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        payload = data[offset + 12:offset + 12 + length]
        assert struct.unpack_from("<I", data, offset + 8)[0] == masked_crc32c(header)
        assert struct.unpack_from("<I", data, offset + 12 + length)[0] == masked_crc32c(payload)
        yield payload
        offset += 16 + length


def _read_records(logdir: Path):
    """(scalars, images) of the one event file in `logdir`, parsed with tensorboardX's Event proto:
    {tag: [(step, value)]} and {tag: [(step, height, width, png)]}."""
    from tensorboardX.proto.event_pb2 import Event

    (path,) = logdir.glob("events.out.tfevents.*")
    events = [Event.FromString(r) for r in _records(path)]
    assert events[0].file_version == "brain.Event:2"
    scalars, images = {}, {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("image"):
                im = v.image
                images.setdefault(v.tag, []).append((e.step, im.height, im.width, im.encoded_image_string))
            else:
                scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    return scalars, images


def _read_tensorboard(logdir: Path):
    """`_read_records`'s (scalars, images), read by tensorboard's EventAccumulator."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="the tensorboard package is not installed")
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags[ea.SCALARS]}
    images = {t: [(e.step, e.height, e.width, e.encoded_image_string) for e in acc.Images(t)]
              for t in tags[ea.IMAGES]}
    return scalars, images


@pytest.mark.parametrize("read", [_read_records, _read_tensorboard], ids=["records", "tensorboard"])
def test_scalars_and_images_read_back(tmp_path, read):
    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[..., 0] = np.arange(10, dtype=np.uint8) * 25
    rgb[2:4, :, 2] = 255
    with SummaryWriter(tmp_path / "logs") as w:
        w.scalar("loss/total", 0.25, step=1)
        w.scalar("loss/total", np.float32(1.5), step=np.int64(2))
        w.scalar("loss/third", 1 / 3, step=2)
        w.scalars({"lr/param_group1": 1e-4, "lr/param_group2": 5e-5}, step=3)
        w.image("val/rgb", rgb, step=4)
        w.image("val/rgb", rgb[::-1], step=5)

    scalars, images = read(tmp_path / "logs")
    third, lr1, lr2 = (float(np.float32(x)) for x in (1 / 3, 1e-4, 5e-5))  # stored as float32
    assert scalars == {"loss/total": [(1, 0.25), (2, 1.5)], "loss/third": [(2, third)],
                       "lr/param_group1": [(3, lr1)], "lr/param_group2": [(3, lr2)]}
    assert [(step, height, width) for step, height, width, _ in images["val/rgb"]] == [(4, 6, 10), (5, 6, 10)]
    for (*_, png), want in zip(images["val/rgb"], (rgb, rgb[::-1])):
        decoded = Image.open(io.BytesIO(png))
        assert decoded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), want)
    assert list(images) == ["val/rgb"]


def test_disabled_writer_creates_nothing(tmp_path):
    w = SummaryWriter(tmp_path / "off", enabled=False)
    w.scalar("x", 1.0, step=0)
    w.scalars({"y": 2.0}, step=0)
    w.image("z", np.zeros((2, 2, 3), np.uint8), step=0)
    w.close()
    assert not (tmp_path / "off").exists()


def test_image_must_be_uint8_rgb(tmp_path):
    with SummaryWriter(tmp_path) as w:
        for bad in (np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.uint8), np.zeros((2, 2, 4), np.uint8)):
            with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
                w.image("bad", bad, step=0)


def test_close_flushes_and_stops_the_writer_threads(tmp_path):
    before = set(threading.enumerate())
    w = SummaryWriter(tmp_path)
    for step in range(25):  # more than tensorboardX's queue of 10
        w.scalar("x", step, step=step)
    w.close()
    assert _read_records(tmp_path)[0] == {"x": [(s, float(s)) for s in range(25)]}
    for t in set(threading.enumerate()) - before:
        t.join(timeout=10)
        assert not t.is_alive(), t
    w.close()  # idempotent
    w.scalar("x", 99.0, step=99)  # ignored after close
    assert len(list(tmp_path.iterdir())) == 1


def test_no_tensorflow_and_an_unclosed_writer_does_not_block_exit(tmp_path):
    script = """if True:
        import sys
        import numpy as np
        from tiodepth_jax.train.summary import SummaryWriter
        assert "tensorboardX" not in sys.modules  # imported only by an enabled writer
        w = SummaryWriter(sys.argv[1])
        w.scalar("x", 2.5, step=7)
        w.image("y", np.zeros((2, 2, 3), np.uint8), step=7)
        assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tensorflow"))
    """  # exits without close(): tensorboardX's exit handler writes the events, its threads must not hang
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, check=True, timeout=300)
    scalars, images = _read_records(tmp_path)
    assert scalars == {"x": [(7, 2.5)]} and [i[:3] for i in images["y"]] == [(7, 2, 2)]
