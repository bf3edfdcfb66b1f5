"""Video files in and out with PyAV (the optional `video` extra: pip install 'tiodepth_jax[video]').

    info = probe("clip.mp4")                 # frames, height, width, frame rate; errors before any decoding
    for rgb in read_frames("clip.mp4", info.num_frames): ...   # (H, W, 3) uint8 RGB, exactly that many
    with VideoWriter("depth.mp4", info.rate) as out: out.write(rgb)   # H.264 in MP4, yuv420p

Frames are converted to RGB by FFmpeg's swscale (`VideoFrame.to_ndarray(format="rgb24")`); audio and other
streams are ignored. Problems with a file (not a video, undecodable, ending early) are `InputError`s naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from tiodepth_jax.errors import InputError, UserError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts")
CODEC = "libx264"  # in PyAV's wheels; with pixel format yuv420p, what players expect
# x264's macroblock-tree rate control off: with it, PyAV's x264 encodes a clip whose sides are not multiples of
# 16 differently from run to run (measured: 3 of 12 encodes of the same 376x1242 frames, ~1 in 5 at 30x50);
# without it the same frames give the same file.
CODEC_OPTIONS = {"x264-params": "mbtree=0"}


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether `path` names a video by its extension (case-insensitive); whether it is one, `probe` says."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av():
    """PyAV, imported when a video is used: the core install does not need it."""
    try:
        import av
    except ImportError as e:
        raise UserError("videos need PyAV: pip install 'tiodepth_jax[video]'") from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` reads from a video file's first video stream."""

    path: Path
    num_frames: int
    height: int
    width: int
    rate: Fraction  # frames per second (the stream's average rate)


def probe(path: str | os.PathLike) -> VideoInfo:
    """The frame count, size and frame rate of the video `path`, without decoding it. The count is the
    container's, or the number of the stream's packets where the container has none. Raises InputError for a
    missing, undecodable or frameless file and one without a video stream."""
    av, path = _av(), Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} is not a video: it has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            info = (stream.frames or sum(1 for p in container.demux(stream) if p.size),
                    stream.codec_context.height, stream.codec_context.width)
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"cannot read video {path}: {e}") from e
    if not info[0] or not rate:
        raise InputError(f"{path} is not a video: it has no frames or no frame rate")
    return VideoInfo(path, *info, Fraction(rate))


def read_frames(path: str | os.PathLike, num_frames: int):
    """Yield the first `num_frames` frames of the video `path` as (H, W, 3) uint8 RGB; raises InputError naming
    the file when it cannot be decoded or has fewer frames."""
    av, count = _av(), 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
            for frame in container.decode(stream):
                if count == num_frames:
                    return
                yield frame.to_ndarray(format="rgb24")
                count += 1
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"cannot decode video {path} at frame {count}: {e}") from e
    if count < num_frames:
        raise InputError(f"video {path} ended after {count} of its {num_frames} frames")


def even(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) with its last row and/or column repeated to even sides, which yuv420p needs."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter:
    """An H.264 (`CODEC`, yuv420p) video of (H, W, 3) uint8 RGB frames at a constant frame `rate`; frames of odd
    sides are padded by `even`. All frames must have the size of the first. The same frames give the same file
    (`CODEC_OPTIONS`). A context manager."""

    def __init__(self, path: str | os.PathLike, rate: Fraction):
        av = _av()
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path), "w")
        except (av.error.FFmpegError, OSError) as e:
            raise InputError(f"cannot write {self.path}: {e}") from e
        self.stream = self.container.add_stream(CODEC, rate=rate, options=CODEC_OPTIONS)
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        rgb = even(rgb)
        if self.frames == 0:
            self.stream.height, self.stream.width = rgb.shape[:2]
        frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self.frames:
            self.container.mux(self.stream.encode(None))
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
