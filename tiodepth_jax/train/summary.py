"""TensorBoard event files without TensorFlow or the tensorboard package.

    with SummaryWriter("runs/x/logs") as w:
        w.scalar("loss/total", 0.25, step=10)
        w.scalars({"lr/param_group1": 1e-4, "lr/param_group2": 0.0}, step=10)
        w.image("val/depth", rgb_uint8_hwc, step=10)

An event file (`events.out.tfevents.<time>.<host>`) is a TFRecord stream of serialised `tensorflow.Event`
protos; both are written here by hand:

* a record is  uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)  (little
  endian), masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32), CRC-32C = Castagnoli;
* Event {1: double wall_time, 2: int64 step, 3: string file_version, 5: Summary summary};
  Summary {1: repeated Value value}; Value {1: string tag, 2: float simple_value, 4: Image image};
  Image {1: int32 height, 2: int32 width, 3: int32 colorspace, 4: bytes encoded_image_string (PNG)}.

The first event of a file carries file_version "brain.Event:2". `read_events` parses such files back
(checking every CRC); it is what the tests use and handy for inspecting a run without TensorBoard.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

__all__ = ["SummaryWriter", "crc32c", "masked_crc32c", "read_records", "read_events", "encode_event"]

FILE_VERSION = "brain.Event:2"

# ---------------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()
_TABLE_NP = np.asarray(_TABLE, dtype=np.uint32)
_LANES_MIN_BYTES = 1 << 16       # below this a plain byte loop is faster than the numpy lanes


def _crc_update(reg: int, data) -> int:
    """The raw register after feeding `data` (no pre/post inversion)."""
    t = _TABLE
    for b in data:
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _mat_apply(cols, x: int) -> int:
    """A 32x32 GF(2) matrix (its 32 column images) applied to the 32-bit vector x."""
    out, bit = 0, 0
    while x:
        if x & 1:
            out ^= cols[bit]
        x >>= 1
        bit += 1
    return out


def _mat_mul(a, b):
    return [_mat_apply(a, c) for c in b]


_ONE_ZERO_BYTE = [_crc_update(1 << i, b"\0") for i in range(32)]  # the register map of one zero byte


def _shift_matrix(n_bytes: int):
    """The linear map reg -> register after feeding `n_bytes` zero bytes."""
    result = [1 << i for i in range(32)]
    power = _ONE_ZERO_BYTE
    while n_bytes:
        if n_bytes & 1:
            result = _mat_mul(power, result)
        n_bytes >>= 1
        if n_bytes:
            power = _mat_mul(power, power)
    return result


def _mat_apply_np(cols, x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for bit in range(32):
        out ^= np.where((x >> np.uint32(bit)) & np.uint32(1), np.uint32(cols[bit]), np.uint32(0))
    return out


def _crc_update_lanes(reg: int, data: bytes) -> int:
    """`_crc_update` with the buffer split into parallel lanes updated by numpy, then combined.

    Feeding a chunk is linear over GF(2): update(r, chunk) = Shift_len(r) ^ update(0, chunk). The lanes are
    run side by side (lane 0 starts from `reg`, the others from 0) and combined pairwise, each level
    shifting the left half by the length of the right one."""
    n = len(data)
    lanes = 1 << max(1, int(np.log2(max(2, np.sqrt(n / 4)))))  # about sqrt(n/4) lanes, a power of two
    length = n // lanes
    arr = np.frombuffer(data, dtype=np.uint8, count=lanes * length).reshape(lanes, length).T.astype(np.uint32)
    regs = np.zeros(lanes, dtype=np.uint32)
    regs[0] = reg
    table = _TABLE_NP
    for j in range(length):
        regs = table[(regs ^ arr[j]) & 0xFF] ^ (regs >> np.uint32(8))
    shift = _shift_matrix(length)
    while len(regs) > 1:
        regs = _mat_apply_np(shift, regs[0::2]) ^ regs[1::2]
        if len(regs) > 1:
            shift = _mat_mul(shift, shift)  # the right halves double in length
    return _crc_update(int(regs[0]), data[lanes * length:])


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of `data` (continuing from a previous `crc`), as in TFRecord / iSCSI."""
    data = bytes(data)
    reg = crc ^ 0xFFFFFFFF
    reg = _crc_update_lanes(reg, data) if len(data) >= _LANES_MIN_BYTES else _crc_update(reg, data)
    return reg ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------
# Protobuf encoding (only what Event needs)

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 negatives as ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(payload)) + payload


def _image_proto(height: int, width: int, colorspace: int, png: bytes) -> bytes:
    return (_key(1, _VARINT) + _varint(height) + _key(2, _VARINT) + _varint(width)
            + _key(3, _VARINT) + _varint(colorspace) + _len_field(4, png))


def _value_proto(tag: str, *, simple_value: float | None = None, image: bytes | None = None) -> bytes:
    out = _len_field(1, tag.encode("utf-8"))
    if simple_value is not None:
        out += _key(2, _FIXED32) + struct.pack("<f", simple_value)
    if image is not None:
        out += _len_field(4, image)
    return out


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 values: list[bytes] = ()) -> bytes:
    """A serialised Event; `values` are serialised Summary.Value messages."""
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, _VARINT) + _varint(int(step))
    if file_version is not None:
        out += _len_field(3, file_version.encode("utf-8"))
    if values:
        out += _len_field(5, b"".join(_len_field(1, v) for v in values))
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _png(image: np.ndarray) -> tuple[int, int, int, bytes]:
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"image summaries need a uint8 array, got dtype {a.dtype} "
                        "(scale [0, 1] floats with np.round(x * 255).astype(np.uint8))")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or a.ndim == 3 and a.shape[-1] in (3, 4)) or 0 in a.shape:
        raise ValueError(f"image summaries need an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got {a.shape}")
    colorspace = 1 if a.ndim == 2 else a.shape[-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=1)
    return a.shape[0], a.shape[1], colorspace, buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# The writer


class SummaryWriter:
    """Appends scalar and image summaries to a new event file in `logdir`.

    Writes are buffered and flushed by `flush()`, `close()` and after any write once `flush_secs` have passed
    since the last flush. `enabled=False` gives a writer that does nothing (e.g. on non-zero processes).
    Thread-safe.
    """

    def __init__(self, logdir: str | os.PathLike, *, flush_secs: float = 10.0, filename_suffix: str = "",
                 enabled: bool = True):
        self.logdir = Path(logdir)
        self.enabled = enabled
        self.flush_secs = flush_secs
        self.path: Path | None = None
        self._file = None
        self._lock = threading.Lock()
        if not enabled:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        base = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}{filename_suffix}"
        for n in range(1000):
            path = self.logdir / (base if n == 0 else f"{base}.{n}")
            try:
                self._file = open(path, "xb")
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free event file name {base}.* in {self.logdir}")
        self.path = path
        self._write(encode_event(now, file_version=FILE_VERSION))
        self.flush()

    # -- writing -------------------------------------------------------------------------------------------

    def _write(self, event: bytes) -> None:
        with self._lock:
            if self._file is None:
                raise ValueError("write to a closed SummaryWriter")
            self._file.write(_record(event))
            due = time.monotonic() - getattr(self, "_last_flush", 0.0) >= self.flush_secs
        if due:
            self.flush()

    def _event(self, step: int, values: list[bytes], wall_time: float | None) -> None:
        if self.enabled and values:
            self._write(encode_event(time.time() if wall_time is None else wall_time, int(step), values=values))

    def scalar(self, tag: str, value, step: int, *, wall_time: float | None = None) -> None:
        """One scalar (anything `float()` accepts: Python/numpy/JAX scalars)."""
        self._event(step, [_value_proto(tag, simple_value=float(value))], wall_time)

    def scalars(self, values: Mapping[str, float], step: int, *, wall_time: float | None = None) -> None:
        """Several scalars at the same step, in one event."""
        self._event(step, [_value_proto(t, simple_value=float(v)) for t, v in values.items()], wall_time)

    def image(self, tag: str, image, step: int, *, wall_time: float | None = None) -> None:
        """A uint8 image, (H, W, 3) RGB (also (H, W) / (H, W, 1) grey or (H, W, 4) RGBA), stored as PNG."""
        if not self.enabled:
            return
        self._event(step, [_value_proto(tag, image=_image_proto(*_png(image)))], wall_time)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


# ---------------------------------------------------------------------------------------------------------
# Reading back


def read_records(path: str | os.PathLike, *, check_crc: bool = True) -> Iterator[bytes]:
    """The payloads of a TFRecord file; a CRC mismatch is an error, a truncated last record is dropped
    (as TensorBoard does while a writer is still appending)."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,), (hcrc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if check_crc and hcrc != masked_crc32c(header[:8]):
                raise ValueError(f"{path}: corrupt record header at offset {f.tell() - 12}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                return
            if check_crc and struct.unpack("<I", footer)[0] != masked_crc32c(data):
                raise ValueError(f"{path}: record data CRC mismatch at offset {f.tell() - 4 - length}")
            yield data


def _parse_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of a serialised protobuf message: ints for varints, raw bytes for
    fixed32 / fixed64 / length-delimited fields."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _read_varint(buf, i)
        elif wire == _FIXED64:
            value, i = buf[i:i + 8], i + 8
        elif wire == _FIXED32:
            value, i = buf[i:i + 4], i + 4
        elif wire == _BYTES:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated protobuf message")
        out.append((field, wire, value))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def decode_event(data: bytes) -> dict:
    """An Event as {'wall_time', 'step', ['file_version'], ['values']}; each value {'tag', 'simple_value'} or
    {'tag', 'image': {'height', 'width', 'colorspace', 'encoded_image_string'}}."""
    event: dict = {"wall_time": 0.0, "step": 0}
    for field, _, v in _parse_fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", v)[0]
        elif field == 2:
            event["step"] = _signed64(v)
        elif field == 3:
            event["file_version"] = v.decode("utf-8")
        elif field == 5:
            event.setdefault("values", [])
            for f, _, value in _parse_fields(v):
                if f == 1:
                    event["values"].append(_decode_value(value))
    return event


def _decode_value(data: bytes) -> dict:
    value: dict = {}
    for field, _, v in _parse_fields(data):
        if field == 1:
            value["tag"] = v.decode("utf-8")
        elif field == 2:
            value["simple_value"] = struct.unpack("<f", v)[0]
        elif field == 4:
            names = {1: "height", 2: "width", 3: "colorspace", 4: "encoded_image_string"}
            value["image"] = {names[f]: x for f, _, x in _parse_fields(v) if f in names}
    return value


def read_events(path: str | os.PathLike) -> list[dict]:
    """Every event of an event file, decoded (see `decode_event`)."""
    return [decode_event(r) for r in read_records(path)]
