"""The colour maps are matplotlib's, byte for byte: the same 256-entry tables, `colorize` equal to
Depth-Anything-V2's run.py colouring done with matplotlib, and matplotlib's colours for NaN and out-of-range
values; the colour bar runs through the same table."""

import numpy as np
import pytest

from tiodepth_jax.colormap import add_colorbar, colorize, get_lut

matplotlib = pytest.importorskip("matplotlib")

NAMES = ["Spectral", "Spectral_r"]


def _run_py(depth: np.ndarray, name: str) -> np.ndarray:
    """run.py's colour image of a float32 depth map, coloured by matplotlib."""
    depth = (depth - depth.min()) / (depth.max() - depth.min()) * 255.0
    depth = depth.astype(np.uint8)
    return (matplotlib.colormaps[name](depth)[:, :, :3] * 255).astype(np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_lookup_table_is_matplotlibs(name):
    want = matplotlib.colormaps[name](np.arange(256), bytes=True)[:, :3]
    np.testing.assert_array_equal(get_lut(name), want)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (0.5, 80.0)])
def test_colorize_is_run_py_with_matplotlib(name, lo, hi):
    t = np.append(np.arange(0.0, 1.0, 1e-4), 1.0).reshape(73, 137)  # 0, 1e-4, ..., 0.9999, 1
    depth = (lo + (hi - lo) * t).astype(np.float32)
    np.testing.assert_array_equal(colorize(depth, cmap=name), _run_py(depth, name))


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_out_of_range_values_get_matplotlibs_colours(name):
    x = np.array([np.nan, -np.inf, -0.5, 0.0, 1.0, 1.5, np.inf])
    want = matplotlib.colormaps[name](x, bytes=True)[:, :3]
    np.testing.assert_array_equal(colorize(x[None], vmin=0.0, vmax=1.0, cmap=name)[0], want)


def test_colorbar_runs_the_table_from_top_to_bottom_beside_the_image():
    rgb = colorize(np.linspace(0.0, 1.0, 20 * 30).reshape(20, 30))
    out = add_colorbar(rgb, ["1", "0.5", "0"], "depth (m)")
    assert out.dtype == np.uint8 and out.shape[0] > 20 and out.shape[1] > 30  # too short: extended downwards
    np.testing.assert_array_equal(out[:20, :30], rgb)
    assert (out[20:, :30] == 255).all()
    lut = get_lut("spectral_r")
    index = {tuple(c): i for i, c in reversed(list(enumerate(lut)))}  # the first index of each colour
    x = next(x for x in range(30, out.shape[1]) if tuple(lut[255]) in map(tuple, out[:, x]))
    bar = [index[tuple(c)] for c in out[:, x] if tuple(c) in index]
    assert bar[0] == index[tuple(lut[255])] and bar[-1] == 0 and len(bar) > 50
    assert all(a >= b for a, b in zip(bar, bar[1:]))
