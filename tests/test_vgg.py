"""VGG19 perceptual features (spec §2.6.1): fixture parity on every TiO-Depth set (the recipe's VGG on the set's
augmented training image, against its stage-1 `mono_raw_feats_*`), a torch re-implementation, the converter."""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert import vgg19 as cv
from convert.common import ConversionError
from tests.parity import FixtureSet, nchw, rel_l2, tio_params
from tiodepth_jax import checkpoint
from tiodepth_jax.models.vgg import LAYERS, VGG19Config, VGG19Features

# The layer stack of torchvision vgg19().features[0:19], written out from the spec:
# ("C", cin, cout) = Conv2d 3x3 padding 1 with bias, "R" = ReLU, "M" = MaxPool2d(2, 2) (floor).
SPEC_STACK = [("C", 3, 64), "R", ("C", 64, 64), "R", "M",
              ("C", 64, 128), "R", ("C", 128, 128), "R", "M",
              ("C", 128, 256), "R", ("C", 256, 256), "R", ("C", 256, 256), "R", ("C", 256, 256), "R", "M"]
SLICE_ENDS = (5, 10, 19)


class TorchVGGFeatures(torch.nn.Module):
    """`features` is an nn.Sequential indexed like torchvision's, so `features.<n>.*` keys load strictly."""

    def __init__(self):
        super().__init__()
        layers = []
        for item in SPEC_STACK:
            if item == "R":
                layers.append(torch.nn.ReLU())
            elif item == "M":
                layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(torch.nn.Conv2d(item[1], item[2], kernel_size=3, padding=1, bias=True))
        self.features = torch.nn.Sequential(*layers)

    def forward(self, x):
        outs, start = [], 0
        for end in SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


def random_vgg_sd(seed=0, full=False) -> dict[str, np.ndarray]:
    """He-uniform weights under torchvision names; `full` adds the rest of a torchvision vgg19 state dict."""
    rng = np.random.default_rng(seed)
    sd = {}
    for _, idx, cin, cout, _ in LAYERS:
        bound = np.sqrt(6.0 / (cin * 9))
        sd[f"features.{idx}.weight"] = rng.uniform(-bound, bound, (cout, cin, 3, 3)).astype(np.float32)
        sd[f"features.{idx}.bias"] = rng.uniform(-0.05, 0.05, (cout,)).astype(np.float32)
    if full:
        for idx, cin in zip((19, 21, 23, 25, 28, 30, 32, 34), (256, 512, 512, 512, 512, 512, 512, 512)):
            sd[f"features.{idx}.weight"] = np.zeros((512, cin, 3, 3), np.float32)
            sd[f"features.{idx}.bias"] = np.zeros((512,), np.float32)
        for idx, (o, i) in zip((0, 3, 6), ((64, 512 * 49), (64, 64), (1000, 64))):  # shrunk widths
            sd[f"classifier.{idx}.weight"] = np.zeros((o, i), np.float32)
            sd[f"classifier.{idx}.bias"] = np.zeros((o,), np.float32)
    return sd


@pytest.fixture(scope="module")
def sd():
    return random_vgg_sd()


@pytest.fixture(scope="module")
def registered():
    """Register the model kind for save_model/load_model (a no-op once checkpoint.py lists it)."""
    added = "vgg19_features" not in checkpoint.MODEL_KINDS
    checkpoint.MODEL_KINDS.setdefault("vgg19_features", (VGG19Features, VGG19Config))
    yield
    if added:
        del checkpoint.MODEL_KINDS["vgg19_features"]


@pytest.mark.parametrize("fs", tio_params())
def test_fixture_parity(fs: FixtureSet):
    """The raw (target-view) features of stage 1: VGG of the augmented image of the frame the Mono stage
    synthesises (`mono_raw_feats_<frame>_<k>_<side>`, frame = the other side of the training side)."""
    model, report = cv.convert_vgg19_features(fs.state_dict("vgg"))
    assert report.converted == 16 and not report.missing and not report.unexpected and not report.ignored
    side = fs.meta["config"]["model_params"]["set_train_side"]
    frame = "s" if side == "o" else "o"
    names = [f"train/stage1/mono_raw_feats_{frame}_{k}_{side}" for k in range(3)]
    assert all(n in fs.entries for n in names), f"{fs.name}: no stage-1 VGG features {names}"
    x = fs.whole(f"in/{fs.train_size()}/color_{frame}_aug").transpose(0, 2, 3, 1)  # NCHW -> NHWC
    t0 = time.perf_counter()
    feats = jax.device_get(nnx.jit(lambda m, x: m(x))(model, x))
    elapsed = time.perf_counter() - t0
    results = [fs.compare(n, nchw(f)) for n, f in zip(names, feats)]
    for c in results:
        print(f"{c.name} ({fs.storage(c.name)}): rel L2 {c.rel_l2:.2e} (tol {c.tol:.0e}) {c.detail}")
    print(f"compile + run at {'x'.join(map(str, x.shape[:3]))}: {elapsed:.2f} s")
    assert all(c.ok for c in results), [c for c in results if not c.ok]


def test_matches_torch_stack_with_input_gradient(sd):
    """Forward and d(loss)/d(input) against nn.Conv2d/ReLU/MaxPool2d on an odd-sized input (30x46 -> 3x5)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (1, 3, 30, 46)).astype(np.float32)
    shapes = [(1, 64, 15, 23), (1, 128, 7, 11), (1, 256, 3, 5)]
    cots = [rng.normal(size=s).astype(np.float32) for s in shapes]

    ref = TorchVGGFeatures()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    outs_t = ref(xt)
    sum(torch.sum(o * torch.from_numpy(c)) for o, c in zip(outs_t, cots)).backward()
    outs_t = [o.detach().numpy() for o in outs_t]
    grad_t = xt.grad.numpy()

    model, _ = cv.convert_vgg19_features(sd)

    def loss(x_nhwc):
        feats = model(x_nhwc)
        return sum(jnp.sum(f.transpose(0, 3, 1, 2) * c) for f, c in zip(feats, cots)), feats

    (_, feats), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(x.transpose(0, 2, 3, 1)))
    for k, (f, o) in enumerate(zip(feats, outs_t)):
        assert nchw(f).shape == o.shape
        err = rel_l2(np.asarray(nchw(f), np.float64), o.astype(np.float64))
        print(f"slice {k}: rel L2 {err:.2e}")
        assert err < 1e-5
    gerr = rel_l2(np.asarray(nchw(grad), np.float64), grad_t.astype(np.float64))
    print(f"input gradient: rel L2 {gerr:.2e}")
    assert gerr < 1e-5 and np.abs(grad_t).max() > 0


def test_bfloat16_and_fewer_slices(sd):
    x = np.random.default_rng(2).uniform(0, 1, (1, 17, 9, 3)).astype(np.float32)
    full, _ = cv.convert_vgg19_features(sd)
    ref = full(x)
    assert [f.shape for f in ref] == [(1, 8, 4, 64), (1, 4, 2, 128), (1, 2, 1, 256)]
    two, report = cv.convert_vgg19_features(sd, VGG19Config(n_slices=2))
    assert sorted(report.ignored) == [f"features.{i}.{p}" for i in (10, 12, 14, 16) for p in ("bias", "weight")]
    out = two(x)
    assert len(out) == 2
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref[1]))
    bf = VGG19Features(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    nnx.update(bf, nnx.state(full, nnx.Param))
    out_bf = bf(x)
    assert out_bf[2].dtype == jnp.bfloat16
    assert rel_l2(np.asarray(out_bf[2], np.float64), np.asarray(ref[2], np.float64)) < 3e-2
    with pytest.raises(ValueError, match="n_slices"):
        VGG19Config(n_slices=4)


def test_full_torchvision_state_dict_reports_ignored(sd):
    model, report = cv.convert_vgg19_features(random_vgg_sd(full=True))
    assert report.converted == 16 and not report.missing and not report.unexpected
    assert "classifier.0.weight" in report.ignored and "classifier" in report.ignored["classifier.0.weight"]
    assert "features.19.weight" in report.ignored and "features.34.bias" in report.ignored
    assert len(report.ignored) == 16 + 6
    np.testing.assert_array_equal(model.conv3_2.kernel[...], sd["features.12.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.conv1_1.bias[...], sd["features.0.bias"])


def test_missing_tensor_is_an_error_naming_it(sd):
    partial = {k: v for k, v in sd.items() if k not in ("features.12.weight", "features.5.bias")}
    with pytest.raises(ConversionError, match="--allow-missing") as e:
        cv.convert_vgg19_features(partial)
    assert "features.12.weight" in str(e.value) and "features.5.bias" in str(e.value)
    model, report = cv.convert_vgg19_features(partial, allow_missing=True)
    assert report.missing == ["features.12.weight (conv3_2.kernel)", "features.5.bias (conv2_1.bias)"]
    assert model.conv3_2.kernel.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(model.conv3_1.kernel[...], sd["features.10.weight"].transpose(2, 3, 1, 0))


def test_unexpected_tensor_is_an_error_naming_it(sd):
    extra = dict(sd, **{"features.1.weight": np.zeros((3,), np.float32), "head.bias": np.zeros(2, np.float32)})
    with pytest.raises(ConversionError, match=r"features\.1\.weight"):
        cv.convert_vgg19_features(extra)
    _, report = cv.convert_vgg19_features(extra, allow_missing=True)
    assert report.unexpected == ["features.1.weight", "head.bias"]


def test_shape_mismatch_is_always_an_error(sd):
    for bad in (np.zeros((128, 32, 3, 3), np.float32), np.zeros((128, 64), np.float32)):
        with pytest.raises(ConversionError, match=r"features\.5\.weight.*" + re.escape(str(bad.shape))):
            cv.convert_vgg19_features(dict(sd, **{"features.5.weight": bad}), allow_missing=True)


def test_cli_round_trip(tmp_path, registered, capsys):
    full = random_vgg_sd(seed=3, full=True)
    src = tmp_path / "vgg19.pth"
    torch.save({k: torch.from_numpy(v) for k, v in full.items()}, src)
    out = tmp_path / "ckpt"
    assert cv.main(["--checkpoint", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "converted 16 tensors" in text and "classifier.0.weight" in text
    model = checkpoint.load_model(out, kind="vgg19_features")
    assert isinstance(model, VGG19Features) and model.cfg == VGG19Config()
    for name, idx, *_ in LAYERS:
        np.testing.assert_array_equal(getattr(model, name).kernel[...],
                                      full[f"features.{idx}.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(getattr(model, name).bias[...], full[f"features.{idx}.bias"])
    # Strict by default from the command line too.
    del full["features.16.bias"]
    torch.save({k: torch.from_numpy(v) for k, v in full.items()}, src)
    assert cv.main(["--checkpoint", str(src), "--out", str(tmp_path / "o2")]) == 2
    assert "features.16.bias" in capsys.readouterr().err
    assert cv.main(["--checkpoint", str(src), "--out", str(tmp_path / "o3"), "--allow-missing"]) == 0
    assert "features.16.bias (conv3_4.bias)" in capsys.readouterr().out
