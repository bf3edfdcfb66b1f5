"""Colour maps for depth visualisation, bit-exact with matplotlib and Depth-Anything-V2's `run.py`.

`colorize(depth)` reproduces run.py's colour PNGs without a matplotlib dependency:

    depth = (depth - depth.min()) / (depth.max() - depth.min()) * 255.0   # float32
    depth = depth.astype(np.uint8)                                          # LUT index, truncated
    rgb = (cmap(depth)[:, :, :3] * 255).astype(np.uint8)                    # cmap = 'Spectral_r'

'spectral' is matplotlib's 'Spectral': `LinearSegmentedColormap.from_list` through the 11 ColorBrewer
colours, equally spaced, with matplotlib's 256-entry lookup-table construction
(`colors._create_lookup_table`); '_r' reverses the segment data as `LinearSegmentedColormap.reversed`
does. 'gray' is the identity ramp of run.py's `--grayscale`.

The table index is run.py's floor(t * 255) of the normalised value t, not the floor(t * 256) that
matplotlib's `cmap(t)` takes for float input; NaN (black), under and over (the end colours) are matplotlib's
defaults either way. tests/test_colormap.py checks all of this against matplotlib.

`add_colorbar` draws a labelled colour bar beside a coloured image with PIL (no matplotlib).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LUT_SIZE = 256
SPECTRAL_HEX = ("#9e0142", "#d53e4f", "#f46d43", "#fdae61", "#fee08b", "#ffffbf",
                "#e6f598", "#abdda4", "#66c2a5", "#3288bd", "#5e4fa2")
NAN_COLOR = (0, 0, 0)


def hex_to_rgb(code: str) -> tuple[int, int, int]:
    """'#rrggbb' -> (r, g, b) in 0..255."""
    return tuple(int(code[i:i + 2], 16) for i in (1, 3, 5))


def _lookup_table(x, y0, y1, n: int = LUT_SIZE) -> np.ndarray:
    """matplotlib's `_create_lookup_table` (gamma 1) for one channel's (x, y0, y1) segments -> (n,) float64."""
    x = x * (n - 1)
    xind = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, xind)[1:-1]
    distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    lut = np.concatenate([[y1[0]], distance * (y0[ind] - y1[ind - 1]) + y1[ind - 1], [y0[-1]]])
    return np.clip(lut, 0.0, 1.0)


def segmented_lut(colors_hex, *, reverse: bool = False, n: int = LUT_SIZE) -> np.ndarray:
    """`LinearSegmentedColormap.from_list(colors)` (optionally `.reversed()`) as an (n, 3) uint8 table.

    Bytes are `(lut * 255).astype(np.uint8)`, matplotlib's `bytes=True` and run.py's conversion.
    """
    rgb = np.array([hex_to_rgb(c) for c in colors_hex], np.float64) / 255.0  # (K, 3)
    x = np.linspace(0, 1, len(colors_hex))
    channels = []
    for y in rgb.T:
        if reverse:  # LinearSegmentedColormap.reversed: [(1 - x, y1, y0) for x, y0, y1 in reversed(data)]
            channels.append(_lookup_table(1.0 - x[::-1], y[::-1], y[::-1], n))
        else:
            channels.append(_lookup_table(x, y, y, n))
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def _gray_lut() -> np.ndarray:
    ramp = np.arange(LUT_SIZE, dtype=np.uint8)
    return np.stack([ramp] * 3, axis=-1)


CMAPS = {
    "spectral": lambda: segmented_lut(SPECTRAL_HEX),
    "spectral_r": lambda: segmented_lut(SPECTRAL_HEX, reverse=True),
    "gray": _gray_lut,
    "gray_r": lambda: _gray_lut()[::-1],
}


def get_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a colour map, by case-insensitive name."""
    key = name.lower()
    if key not in CMAPS:
        raise ValueError(f"unknown colour map {name!r}; known: {', '.join(CMAPS)}")
    return CMAPS[key]()


def finite_range(values) -> tuple[float, float]:
    """(min, max) of the finite values in float32; (0, 0) when there are none."""
    v = np.asarray(values, np.float32)
    finite = v[np.isfinite(v)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def lut_indices(values, *, vmin=None, vmax=None) -> np.ndarray:
    """Quantise values to LUT indices 0..255 the way run.py does: floor((v - vmin) / (vmax - vmin) * 255).

    vmin / vmax default to the min / max of the finite values. Values outside [vmin, vmax] and +-inf
    clip to the ends; a constant image (vmax == vmin) maps to index 0. NaN maps to index 0 here
    (`colorize` paints it `NAN_COLOR`). Arithmetic is float32, as run.py's on a float32 depth map.
    """
    v = np.asarray(values, np.float32)
    lo, hi = finite_range(v)
    vmin, vmax = np.float32(lo if vmin is None else vmin), np.float32(hi if vmax is None else vmax)
    span = vmax - vmin
    if not np.isfinite(span) or span <= 0:
        return np.zeros(v.shape, np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (v - vmin) / span * np.float32(255.0)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def colorize(values, *, vmin=None, vmax=None, cmap: str = "spectral_r") -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 RGB through colour map `cmap` (see `lut_indices` for the scaling)."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) array, got shape {values.shape}")
    rgb = get_lut(cmap)[lut_indices(values, vmin=vmin, vmax=vmax)]
    rgb[np.isnan(values)] = NAN_COLOR
    return rgb


def add_colorbar(rgb: np.ndarray, labels, title: str, cmap: str = "spectral_r") -> np.ndarray:
    """`rgb` (H, W, 3) uint8 with a colour bar on its right, drawn with PIL and its default font.

    The bar runs from LUT index 255 at its top to 0 at its bottom (`lut_indices` of values from vmax down to
    vmin); `labels` are written beside it at equal steps from top to bottom, `title` (the units) above it.
    The panel is white; an image too short for the bar is extended downwards with white.
    """
    h, w = rgb.shape[:2]
    font = ImageFont.load_default(size=max(10, h // 40))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = draw.textbbox((0, 0), "0123456789", font=font)[3]
    pad, bar_w = text_h // 2 + 2, text_h + 4
    label_w = max(draw.textlength(label, font=font) for label in labels)
    panel_w = pad + int(max(bar_w + pad + label_w, draw.textlength(title, font=font))) + pad
    top = pad + text_h + pad  # the bar's first row, below the title
    height = max(h, top + 6 * text_h + pad)
    bottom = height - pad - text_h // 2  # its last row, leaving room for the last label
    canvas = Image.new("RGB", (w + panel_w, height), "white")
    canvas.paste(Image.fromarray(rgb), (0, 0))
    column = get_lut(cmap)[lut_indices(np.linspace(1.0, 0.0, bottom - top + 1), vmin=0.0, vmax=1.0)]
    x0 = w + pad
    canvas.paste(Image.fromarray(np.repeat(column[:, None], bar_w, axis=1)), (x0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((x0, pad), title, fill="black", font=font)
    for k, label in enumerate(labels):
        y = top + round(k * (bottom - top) / max(len(labels) - 1, 1))
        draw.line([(x0 + bar_w, y), (x0 + bar_w + pad // 2, y)], fill="black")
        draw.text((x0 + bar_w + pad, y - text_h // 2), label, fill="black", font=font)
    return np.asarray(canvas)
