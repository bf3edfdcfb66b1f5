"""The Depth-Anything-V2 converter: file formats, wrappers, strictness and bad input; the TiO-Depth converter's
answer to a checkpoint of the wrong model.

Uses a 2-block cut of the weights of the smallest discovered Depth-Anything-V2 fixture set (regenerated from its
recipe) to stay small.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from convert import depth_anything_v2 as dav2
from convert import tiodepth
from convert.common import ConversionError, read_state_dict
from tests.parity import dav2_sets
from tiodepth_jax.checkpoint import load_model, save_model

TAPS = ["0", "1", "1", "1"]


@pytest.fixture(scope="module")
def smallest_set():
    sets = dav2_sets()
    if not sets:
        pytest.skip("no Depth-Anything-V2 fixture set is available (TIODEPTH_FIXTURES)")
    return min(sets, key=lambda fs: fs.meta["config"]["n_params"])


@pytest.fixture(scope="module")
def variant(smallest_set):
    return smallest_set.meta["config"]["constructor_args"]["encoder"]


@pytest.fixture(scope="module")
def small_sd(smallest_set):
    """The set's weights with only blocks 0 and 1: a valid reduced-depth Depth-Anything-V2 checkpoint."""
    sd = smallest_set.state_dict()
    return {k: v for k, v in sd.items() if not k.startswith("pretrained.blocks.") or k.split(".")[2] in "01"}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(1, 28, 42, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_depth(small_sd, image):
    model, _ = dav2.convert_state_dict(small_sd, taps=(0, 1, 1, 1))
    return np.asarray(model(image))


def _torch_save(path, obj):
    torch.save({k: torch.from_numpy(v) for k, v in obj.items()} if all(isinstance(v, np.ndarray) for v in obj.values())
               else obj, path)


@pytest.mark.parametrize("fmt", ["pth", "pth-model", "pth-state_dict", "pth-ddp", "safetensors"])
def test_cli_round_trip(tmp_path, small_sd, image, reference_depth, fmt, capsys, variant):
    src = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in small_sd.items()}
    if fmt == "safetensors":
        save_file({k: np.ascontiguousarray(v) for k, v in small_sd.items()}, str(src))
    elif fmt == "pth":
        torch.save(tensors, src)
    elif fmt == "pth-ddp":
        torch.save({"module." + k: v for k, v in tensors.items()}, src)
    else:
        torch.save({fmt.split("-")[1]: tensors, "epoch": 3}, src)
    out = tmp_path / "ckpt"
    assert dav2.main(["--checkpoint", str(src), "--out", str(out), "--taps", *TAPS]) == 0
    text = capsys.readouterr().out
    assert "converted" in text and "pretrained.mask_token" in text and variant in text
    model = load_model(out, kind="depth_anything_v2")
    assert model.cfg.dinov2.depth == 2 and model.cfg.taps == (0, 1, 1, 1)
    np.testing.assert_array_equal(np.asarray(model(image)), reference_depth)


def test_converted_tensor_layouts(small_sd):
    """Spot-check each layout rule against the PyTorch tensor it came from."""
    model, report = dav2.convert_state_dict(small_sd, taps=(0, 1, 1, 1))
    assert report.converted == len(small_sd) - 1 and set(report.ignored) == {"pretrained.mask_token"}
    p = model.pretrained
    np.testing.assert_array_equal(p.patch_embed.proj.kernel[...],
                                  small_sd["pretrained.patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p.blocks.attn.qkv.kernel[...][1], small_sd["pretrained.blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(p.blocks.ls2.gamma[...][0], small_sd["pretrained.blocks.0.ls2.gamma"])
    np.testing.assert_array_equal(p.norm.scale[...], small_sd["pretrained.norm.weight"])
    np.testing.assert_array_equal(model.depth_head.resize_layers[0].kernel[...],
                                  small_sd["depth_head.resize_layers.0.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(model.depth_head.scratch.output_conv2[2].bias[...],
                                  small_sd["depth_head.scratch.output_conv2.2.bias"])


def test_missing_tensor_is_an_error_naming_it(small_sd):
    sd = {k: v for k, v in small_sd.items() if k not in ("depth_head.projects.1.bias", "pretrained.blocks.1.ls1.gamma")}
    with pytest.raises(ConversionError, match="--allow-missing") as e:
        dav2.convert_state_dict(sd, taps=(0, 1, 1, 1))
    assert "depth_head.projects.1.bias" in str(e.value) and "pretrained.blocks.1.ls1.gamma" in str(e.value)
    model, report = dav2.convert_state_dict(sd, taps=(0, 1, 1, 1), allow_missing=True)
    assert sorted(report.missing) == ["depth_head.projects.1.bias", "pretrained.blocks.1.ls1.gamma"]
    np.testing.assert_array_equal(model.pretrained.blocks.ls1.gamma[...][0], sd["pretrained.blocks.0.ls1.gamma"])


def test_unexpected_tensor_is_an_error_naming_it(small_sd):
    sd = dict(small_sd, **{"depth_head.extra.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match=r"depth_head\.extra\.weight"):
        dav2.convert_state_dict(sd, taps=(0, 1, 1, 1))
    _, report = dav2.convert_state_dict(sd, taps=(0, 1, 1, 1), allow_missing=True)
    assert report.unexpected == ["depth_head.extra.weight"]


def test_shape_mismatch_is_always_an_error(small_sd):
    sd = dict(small_sd, **{"depth_head.scratch.layer2_rn.weight": np.zeros((64, 96, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"layer2_rn\.weight.*\(64, 96, 1, 1\)"):
        dav2.convert_state_dict(sd, taps=(0, 1, 1, 1), allow_missing=True)


def test_wrong_model_and_variant(small_sd, tmp_path, capsys):
    with pytest.raises(ConversionError, match="not vitl"):
        dav2.convert_state_dict(small_sd, variant="vitl", taps=(0, 1, 1, 1))
    with pytest.raises(ConversionError, match="--taps"):
        dav2.convert_state_dict(small_sd)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.bias": torch.zeros(10)}, other)
    assert dav2.main(["--checkpoint", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "not a Depth-Anything-V2 checkpoint" in capsys.readouterr().err


def test_truncated_and_garbage_files(small_sd, tmp_path):
    good = tmp_path / "good.pth"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in small_sd.items()}, good)
    data = good.read_bytes()
    for name, payload in [("truncated.pth", data[: len(data) // 2]), ("garbage.pth", b"not a checkpoint" * 10),
                          ("truncated.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")]:
        bad = tmp_path / name
        bad.write_bytes(payload)
        with pytest.raises(ConversionError, match=name.replace(".", r"\.")):
            read_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    nested = tmp_path / "nested.pth"
    torch.save({"optimizer": {"lr": 1.0}}, nested)
    with pytest.raises(ConversionError, match="holds no state dict"):
        read_state_dict(nested)


def test_load_model_errors(small_sd, tmp_path):
    model, _ = dav2.convert_state_dict(small_sd, taps=(0, 1, 1, 1))
    out = save_model(tmp_path / "ck", model)
    with pytest.raises(FileExistsError):
        save_model(out, model)
    with pytest.raises(ValueError, match="not a 'tiodepth'"):
        load_model(out, kind="tiodepth")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a tiodepth_jax model checkpoint"):
        load_model(tmp_path)
    # A checkpoint whose parameter files were cut short.
    for f in (out / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(ValueError, match="could not read the parameters"):
        load_model(out)
    # A checkpoint whose config has twice the width of its parameters: refused from the stored shapes, before
    # any array is read.
    meta_file = tmp_path / "ck2" / "model.json"
    save_model(tmp_path / "ck2", model)
    meta = json.loads(meta_file.read_text())
    meta["config"]["dinov2"]["embed_dim"] *= 2
    meta["config"]["dpt"]["in_channels"] *= 2
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"not written for this depth_anything_v2 config: stored shapes differ: "
                                         r"depth_head\.projects\.0\.kernel \(1, 1, \d+, \d+\) \(expected"):
        load_model(tmp_path / "ck2")
    # ... and one whose config names other parameters (a SwiGLU feed-forward instead of an MLP).
    meta["config"]["dinov2"]["embed_dim"] //= 2
    meta["config"]["dpt"]["in_channels"] //= 2
    meta["config"]["dinov2"]["ffn"] = "swiglu"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config: missing pretrained\.blocks\.mlp\."):
        load_model(tmp_path / "ck2")
    assert isinstance(model, nnx.Module)


def test_tiodepth_converter_says_what_it_got(tmp_path, capsys):
    """A Depth-Anything-V2 state dict (here a few tensors of a ViT-S one) is named as such, with the way to use it."""
    dav2_sd = {"pretrained.cls_token": np.zeros((1, 1, 384), np.float32),
               "pretrained.blocks.0.norm1.weight": np.ones(384, np.float32),
               "depth_head.projects.0.weight": np.zeros((48, 384, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"this is a Depth-Anything-V2 checkpoint \(vits\), not a TiO-Depth one: "
                                              r"convert it with python -m convert.depth_anything_v2"):
        tiodepth.convert_state_dict(dav2_sd)
    _torch_save(tmp_path / "dav2.pth", dav2_sd)
    assert tiodepth.main(["--checkpoint", str(tmp_path / "dav2.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Depth-Anything-V2 checkpoint (vits)" in err and "init_from" in err
    with pytest.raises(ConversionError, match=r"not a TiO-Depth checkpoint .* no '0.pretrained.cls_token' among 1 "):
        tiodepth.convert_state_dict({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)})
