"""Test-time post-processing (spec §8.3): hand-computed fpp / gpp / mspp values, the mspp size arithmetic, and
the whole two-pass procedure against a transcription of the original's evaluate.py in PyTorch."""

import numpy as np
import pytest

from tiodepth_jax import postprocess as pp


def nhwc(rows) -> np.ndarray:
    """(H, W) nested lists -> (1, H, W, 1) float32."""
    return np.asarray(rows, np.float32)[None, :, :, None]


def test_fpp_hand_computed():
    depth = nhwc([[1.0, 2.0]])
    second = nhwc([[4.0, 1.0]])  # the depth seen on the mirrored image: mirrored back it is [1, 4]
    # inverse depths [1, 0.5] and [1, 0.25] -> mean [1, 0.375] -> depth [1, 8/3]
    np.testing.assert_allclose(np.asarray(pp.post_process("fpp", depth, second))[0, :, :, 0], [[1.0, 8 / 3]],
                               rtol=1e-6)


def test_gpp_masks_hand_computed():
    # W = 41: l = k / 40, 20 (l - 0.05) = k / 2 - 1 -> m_l = 1, 1, 1, 0.5, 0, ..., 0
    m_l, m_r = pp.gpp_masks(41)
    expected = np.zeros(41, np.float32)
    expected[:3], expected[3] = 1.0, 0.5
    np.testing.assert_allclose(m_l, expected, atol=1e-6)
    np.testing.assert_allclose(m_r, expected[::-1], atol=1e-6)
    assert m_l.dtype == np.float32


def test_gpp_blend_hand_computed():
    inv = np.full((1, 2, 41, 1), 1.0, np.float32)
    inv_flip = np.full((1, 2, 41, 1), 3.0, np.float32)
    out = np.asarray(pp.gpp_blend(inv, inv_flip))[0, :, :, 0]
    expected = np.full(41, 2.0)           # the mean in the middle
    expected[:3] = 3.0                    # left edge: the mirrored pass
    expected[3] = 0.5 * 3.0 + 0.5 * 2.0   # m_l = 0.5: half mirrored pass, half mean
    expected[-3:] = 1.0                   # right edge: the first pass
    expected[-4] = 0.5 * 1.0 + 0.5 * 2.0
    np.testing.assert_allclose(out, np.stack([expected, expected]), rtol=1e-6)


def test_gpp_through_post_process():
    depth = np.full((1, 1, 41, 1), 1.0, np.float32)
    second = np.full((1, 1, 41, 1), 0.5, np.float32)  # inverse depth 2 everywhere
    out = np.asarray(pp.post_process("gpp", depth, second))[0, 0, :, 0]
    np.testing.assert_allclose(out[[0, 20, 40]], [0.5, 1 / 1.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("hw, expected", [((378, 1260), (252, 840)), ((84, 252), (56, 168)),
                                          ((10, 11), (6, 7)), ((3, 6), (2, 4)), ((375, 1242), (250, 828))])
def test_mspp_size(hw, expected):
    assert pp.mspp_size(*hw) == expected


def test_mspp_blend_percentile_rule():
    inv = np.arange(1, 22, dtype=np.float32).reshape(1, 3, 7, 1)  # 1..21: P95 (linear) = 1 + 0.95 * 20 = 20
    out = np.asarray(pp.mspp_blend(inv, np.zeros_like(inv)))
    n = np.minimum(inv / (20 + 1e-6), 1)
    np.testing.assert_allclose(out, (1 - n) * inv, atol=1e-5)  # float32: 20 + 1e-6 rounds to 20
    np.testing.assert_allclose(out[0, 0, :3, 0], [1 - 1 / 20, 2 * (1 - 2 / 20), 3 * (1 - 3 / 20)], rtol=1e-6)
    assert out[0, 2, 6, 0] == 0  # above P95: n = 1, all from the second pass


def test_mspp_percentile_is_per_image():
    a = np.arange(1, 22, dtype=np.float32).reshape(1, 3, 7, 1)
    both = np.asarray(pp.mspp_blend(np.concatenate([a, 10 * a]), np.ones((2, 3, 7, 1), np.float32)))
    np.testing.assert_allclose(both[0], np.asarray(pp.mspp_blend(a, np.ones_like(a)))[0], rtol=1e-6)
    np.testing.assert_allclose(both[1], np.asarray(pp.mspp_blend(10 * a, np.ones_like(a)))[0], rtol=1e-6)


def test_mspp_second_pass_geometry():
    """Second pass at 2/3 size; its depth comes back nearest-upscaled (source column floor(d * 6 / 9)),
    times 2/3, mirrored."""
    image = np.random.default_rng(0).random((1, 6, 9, 3), np.float32)
    assert pp.second_pass_image("mspp", image).shape == (1, 4, 6, 3)
    depth_second = np.broadcast_to(np.arange(1, 7, dtype=np.float32)[None, None, :, None], (1, 4, 6, 1))
    inv = np.asarray(pp.second_pass_inverse_depth("mspp", depth_second, (6, 9)))
    columns = np.array([0, 0, 1, 2, 2, 3, 4, 4, 5])  # nearest source columns of the 9 output columns
    expected = 1 / (2 / 3 * (columns + 1))[::-1]
    np.testing.assert_allclose(inv[0, 0, :, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(inv[0, 5, :, 0], expected, rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="unknown post-processing 'xpp'"):
        pp.second_pass_image("xpp", np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="first pass's size"):
        pp.post_process("fpp", np.ones((1, 4, 4, 1), np.float32), np.ones((1, 2, 2, 1), np.float32))


# ------------------------------------------------------------------------------------------------------
# Against the original (evaluate.py's three procedures transcribed in PyTorch)

def _torch_reference(method, image, net):
    """evaluate.py's -fpp / -gpp / -mspp on NCHW tensors with the network `net` (color -> depth)."""
    import torch
    import torch.nn.functional as F

    depth = net(image)
    flipped = torch.flip(image, dims=[3])
    if method in ("fpp", "gpp"):
        l_disp, r_disp = 1 / depth, 1 / torch.flip(net(flipped), dims=[3])
        if method == "fpp":
            return 1 / ((l_disp + r_disp) / 2)
        _, _, h, w = l_disp.shape
        m_disp = 0.5 * (l_disp + r_disp)
        l, _ = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
        l_mask = (1.0 - np.clip(20 * (l - 0.05), 0, 1))[None, ...]
        r_mask = l_mask[:, :, ::-1]
        l_mask = torch.from_numpy(l_mask.copy()).unsqueeze(0).to(l_disp)
        r_mask = torch.from_numpy(r_mask.copy()).unsqueeze(0).to(l_disp)
        return 1 / (r_mask * l_disp + l_mask * r_disp + (1.0 - l_mask - r_mask) * m_disp)
    H, W = image.shape[2:]
    small = F.interpolate(flipped, scale_factor=2 / 3, mode="bilinear", align_corners=True)
    flip_depth = 2 / 3 * F.interpolate(net(small), size=(H, W), mode="nearest")
    l_disp, r_disp = 1 / depth, 1 / torch.flip(flip_depth, dims=[3])
    norm = l_disp / (np.percentile(l_disp.detach().cpu().numpy(), 95) + 1e-6)
    norm[norm > 1] = 1
    return 1 / ((1 - norm) * l_disp + norm * r_disp)


@pytest.mark.parametrize("method", pp.METHODS)
@pytest.mark.parametrize("hw", [(12, 30), (13, 17)])
def test_matches_original(method, hw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    image = rng.random((1, *hw, 3), np.float32)
    # a "network" whose depth varies across the image, the same in both frameworks: 1 + 4 * red + 2 * green
    net_jax = lambda x: 1 + 4 * x[..., 0:1] + 2 * x[..., 1:2]  # noqa: E731
    net_torch = lambda x: 1 + 4 * x[:, 0:1] + 2 * x[:, 1:2]    # noqa: E731
    second = net_jax(pp.second_pass_image(method, image))
    ours = np.asarray(pp.post_process(method, net_jax(image), second))
    ref = _torch_reference(method, torch.from_numpy(image).permute(0, 3, 1, 2), net_torch)
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(3, 6), (10, 11), (378, 1260), (375, 1242), (4, 5)])
def test_mspp_resizes_match_torch(hw):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(2).random((1, *hw, 1), np.float32)
    small = pp.second_pass_image("mspp", x)
    ref = F.interpolate(torch.flip(torch.from_numpy(x).permute(0, 3, 1, 2), dims=[3]), scale_factor=2 / 3,
                        mode="bilinear", align_corners=True)
    assert small.shape[1:3] == ref.shape[2:] == pp.mspp_size(*hw)
    np.testing.assert_allclose(np.asarray(small)[..., 0], ref[:, 0].numpy(), rtol=1e-6, atol=1e-6)
    up = pp.second_pass_inverse_depth("mspp", np.asarray(small) + 1, hw)
    ref_up = 1 / torch.flip(2 / 3 * F.interpolate(ref + 1, size=hw, mode="nearest"), dims=[3])
    np.testing.assert_allclose(np.asarray(up)[..., 0], ref_up[:, 0].numpy(), rtol=1e-6)
