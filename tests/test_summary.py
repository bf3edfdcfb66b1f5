"""TensorBoard event files written without TensorFlow: CRC-32C, TFRecord framing, Event protos, read back."""

from __future__ import annotations

import io
import os
import re
import socket
import struct

import numpy as np
import pytest
from PIL import Image

from tiodepth_jax.train import summary as S
from tiodepth_jax.train.summary import SummaryWriter, crc32c, masked_crc32c, read_events, read_records


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) B.4 and the common check value
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # continuation
    c = crc32c(b"123456789")
    assert masked_crc32c(b"123456789") == (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_numpy_lanes_match_the_byte_loop():
    rng = np.random.default_rng(0)
    for n in (1, 9, 1000, S._LANES_MIN_BYTES - 1, S._LANES_MIN_BYTES, S._LANES_MIN_BYTES + 7, 200_003):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for reg in (0, 0xFFFFFFFF, 0x12345678):
            assert S._crc_update_lanes(reg, data) == S._crc_update(reg, data), (n, reg)
        assert crc32c(data) == S._crc_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_event_encoding_by_hand():
    value = b"\x0a\x01a" + b"\x15" + struct.pack("<f", 2.0)         # Value{tag: "a", simple_value: 2}
    summary = b"\x0a" + bytes([len(value)]) + value                 # Summary{value: [...]}
    want = b"\x09" + struct.pack("<d", 1.5) + b"\x10\x03" + b"\x2a" + bytes([len(summary)]) + summary
    assert S.encode_event(1.5, 3, values=[S._value_proto("a", simple_value=2.0)]) == want
    first = S.encode_event(7.0, file_version="brain.Event:2")
    assert first == b"\x09" + struct.pack("<d", 7.0) + b"\x1a\x0dbrain.Event:2"
    # int64 step: multi-byte and negative varints
    assert S.decode_event(S.encode_event(0.0, 300))["step"] == 300
    assert S.decode_event(S.encode_event(0.0, -2))["step"] == -2
    assert S._varint(300) == b"\xac\x02" and len(S._varint(-1)) == 10


def _write_run(logdir):
    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[..., 0] = np.arange(10, dtype=np.uint8) * 25
    rgb[2:4, :, 2] = 255
    with SummaryWriter(logdir) as w:
        w.scalar("loss/total", 0.25, step=1)
        w.scalar("loss/np", np.float32(1.5), step=2)
        w.scalars({"lr/param_group1": 1e-4, "lr/param_group2": 5e-5}, step=3)
        w.image("vis/rgb", rgb, step=4)
        w.image("vis/grey", rgb[..., 0], step=5)
        w.flush()
        path = w.path
    return path, rgb


def test_writer_round_trip(tmp_path):
    path, rgb = _write_run(tmp_path / "logs")
    assert re.fullmatch(rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}", path.name)
    events = read_events(path)
    assert events[0]["file_version"] == "brain.Event:2" and "values" not in events[0]
    assert all(e["wall_time"] > 1e9 for e in events)
    scalars = [(e["step"], v["tag"], v["simple_value"]) for e in events for v in e.get("values", [])
               if "simple_value" in v]
    assert scalars == [(1, "loss/total", 0.25), (2, "loss/np", 1.5),
                       (3, "lr/param_group1", pytest.approx(1e-4)), (3, "lr/param_group2", pytest.approx(5e-5))]
    images = [(e["step"], v["tag"], v["image"]) for e in events for v in e.get("values", []) if "image" in v]
    assert [(s, t) for s, t, _ in images] == [(4, "vis/rgb"), (5, "vis/grey")]
    for (_, _, im), want, space in zip(images, (rgb, rgb[..., 0]), (3, 1)):
        assert (im["height"], im["width"], im["colorspace"]) == (6, 10, space)
        decoded = np.asarray(Image.open(io.BytesIO(im["encoded_image_string"])))
        np.testing.assert_array_equal(decoded, want)


def test_writer_records_are_valid_tfrecords(tmp_path):
    path, _ = _write_run(tmp_path)
    raw = path.read_bytes()
    offset, n = 0, 0
    while offset < len(raw):  # re-frame by hand, independently of read_records
        (length,) = struct.unpack_from("<Q", raw, offset)
        assert struct.unpack_from("<I", raw, offset + 8)[0] == masked_crc32c(raw[offset:offset + 8])
        data = raw[offset + 12:offset + 12 + length]
        assert struct.unpack_from("<I", raw, offset + 12 + length)[0] == masked_crc32c(data)
        offset += 16 + length
        n += 1
    assert offset == len(raw) and n == 6 == len(list(read_records(path)))

    corrupt = bytearray(raw)
    corrupt[40] ^= 0x01
    bad = tmp_path / "events.out.tfevents.corrupt"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="CRC|corrupt"):
        read_events(bad)
    truncated = tmp_path / "events.out.tfevents.truncated"
    truncated.write_bytes(raw[:-5])  # a writer still appending: the partial last record is ignored
    assert len(read_events(truncated)) == 5


def test_protobuf_runtime_decodes_the_events(tmp_path):
    """An independent decoder: the installed protobuf runtime with the Event schema declared here."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tio_event_test.proto", package="tiotest", syntax="proto3")

    def message(name, *fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("Image", ("height", 1, F.TYPE_INT32, opt, None), ("width", 2, F.TYPE_INT32, opt, None),
            ("colorspace", 3, F.TYPE_INT32, opt, None), ("encoded_image_string", 4, F.TYPE_BYTES, opt, None))
    message("Value", ("tag", 1, F.TYPE_STRING, opt, None), ("simple_value", 2, F.TYPE_FLOAT, opt, None),
            ("image", 4, F.TYPE_MESSAGE, opt, ".tiotest.Image"))
    message("Summary", ("value", 1, F.TYPE_MESSAGE, rep, ".tiotest.Value"))
    message("Event", ("wall_time", 1, F.TYPE_DOUBLE, opt, None), ("step", 2, F.TYPE_INT64, opt, None),
            ("file_version", 3, F.TYPE_STRING, opt, None), ("summary", 5, F.TYPE_MESSAGE, opt, ".tiotest.Summary"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("tiotest.Event"))

    path, rgb = _write_run(tmp_path)
    events = [Event.FromString(r) for r in read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, v.tag) for e in events for v in e.summary.value] == [
        (1, "loss/total"), (2, "loss/np"), (3, "lr/param_group1"), (3, "lr/param_group2"), (4, "vis/rgb"),
        (5, "vis/grey")]
    assert events[1].summary.value[0].simple_value == 0.25
    img = events[4].summary.value[0].image
    assert (img.height, img.width, img.colorspace) == (6, 10, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encoded_image_string))), rgb)


def test_tensorboard_reads_the_file_if_installed(tmp_path):
    loader_mod = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader",
                                     reason="the tensorboard package is not installed (optional check)")
    path, _ = _write_run(tmp_path)
    events = list(loader_mod.EventFileLoader(str(path)).Load())
    assert events[0].file_version == "brain.Event:2"
    tags = [v.tag for e in events for v in e.summary.value]
    assert tags == ["loss/total", "loss/np", "lr/param_group1", "lr/param_group2", "vis/rgb", "vis/grey"]


def test_writer_lifecycle(tmp_path):
    a, b = SummaryWriter(tmp_path), SummaryWriter(tmp_path)  # same second: distinct files
    assert a.path != b.path and a.path.exists() and b.path.exists()
    a.close()
    a.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        a.scalar("x", 1.0, step=0)
    b.close()
    off = SummaryWriter(tmp_path / "off", enabled=False)
    off.scalar("x", 1.0, step=0)
    off.image("y", np.zeros((2, 2, 3), np.uint8), step=0)
    off.close()
    assert off.path is None and not (tmp_path / "off").exists()
    with SummaryWriter(tmp_path / "bad") as w:
        with pytest.raises(TypeError, match="uint8"):
            w.image("f", np.zeros((2, 2, 3), np.float32), step=0)
        with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
            w.image("f", np.zeros((2, 2, 2), np.uint8), step=0)
    # auto-flush: with flush_secs=0 every write is on disk without an explicit flush
    w = SummaryWriter(tmp_path / "auto", flush_secs=0)
    w.scalar("x", 3.0, step=9)
    assert read_events(w.path)[-1]["values"][0]["simple_value"] == 3.0
    w.close()
    assert os.path.getsize(w.path) > 0
