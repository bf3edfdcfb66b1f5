"""The fixture reader itself (tests/parity.py) on a tiny synthetic set written to tmp_path: `whole`, `sampled`
(`@shape/@stats/@idx/@val`, ../shared/fixtures/README.md) and `alias` storage, read, compared and discovered.
No real fixture directory is needed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests import parity
from tests.parity import FixtureSet

SAMPLE_SEED = 7
N_SAMPLES = 50


def _store(name, k, a, storage, out, entries, alias_of=None, sens=None):
    e = {"k": k, "name": name, "shape": list(a.shape), "dtype": str(a.dtype), "storage": storage}
    if sens is not None:
        e["sensitivity"] = {"rel_l2": sens}
    if storage == "alias":
        e["alias_of"] = alias_of
    elif storage == "whole":
        out[name] = a
    else:
        flat = a.reshape(-1).astype(np.float64)
        idx = np.sort(np.random.default_rng([SAMPLE_SEED, k]).choice(a.size, N_SAMPLES, replace=False))
        out[name + "@shape"] = np.asarray(a.shape, np.int64)
        out[name + "@stats"] = np.array([math.fsum(flat), math.fsum(np.abs(flat)), math.fsum(flat * flat),
                                         flat.min(), flat.max()])
        out[name + "@idx"] = idx.astype(np.int64)
        out[name + "@val"] = a.reshape(-1)[idx]
    entries.append(e)


@pytest.fixture()
def synthetic(tmp_path):
    """A TiO-like set: inputs at 14x28 (training, with _aug) and 28x56, a whole map, a sampled volume, a sampled
    0/1 mask, scalars, and aliases (one of a sampled array, one of an alias)."""
    rng = np.random.default_rng(0)
    arrays = {
        "in/14x28/color_s": rng.uniform(0, 1, (3, 3, 14, 28)).astype(np.float32),
        "in/14x28/color_s_aug": rng.uniform(0, 1, (3, 3, 14, 28)).astype(np.float32),
        "in/28x56/color_s": rng.uniform(0, 1, (3, 3, 28, 56)).astype(np.float32),
        "train/stage1/disp": rng.uniform(2, 300, (3, 1, 14, 28)).astype(np.float32),
        "train/stage1/volume": rng.standard_normal((3, 49, 14, 28)).astype(np.float32),
        "train/stage2/mask": (rng.uniform(size=(3, 1, 14, 28)) > 0.3).astype(np.float32),
        "train/loss/value": np.asarray(1.25, np.float32),
    }
    storage = {"train/stage1/volume": "sampled", "train/stage2/mask": "sampled"}
    out, entries = {}, []
    for k, (name, a) in enumerate(arrays.items()):
        _store(name, k, a, storage.get(name, "whole"), out, entries, sens=None if name.startswith("in/") else 2e-5)
    k = len(entries)
    _store("train/stage1/volume_copy", k, arrays["train/stage1/volume"], "alias", out, entries,
           alias_of="train/stage1/volume")
    _store("train/stage1/volume_copy2", k + 1, arrays["train/stage1/volume"], "alias", out, entries,
           alias_of="train/stage1/volume_copy")
    _store("train/stage1/disp_copy", k + 2, arrays["train/stage1/disp"], "alias", out, entries,
           alias_of="train/stage1/disp")
    meta = {"name": "synthetic_tio", "family": "TiO-Depth (synthetic)", "sample_seed": SAMPLE_SEED,
            "inputs": {"14x28": {"size": [14, 28]}, "28x56": {"size": [28, 56]}}, "arrays": entries}
    (tmp_path / "synthetic_tio.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "synthetic_tio.npz", **out)
    (tmp_path / "orphan.json").write_text("{}")  # no .npz: not a set
    return FixtureSet(tmp_path / "synthetic_tio.json"), arrays


def test_discovery_and_sizes(synthetic, tmp_path, monkeypatch):
    fs, _ = synthetic
    monkeypatch.setattr(parity, "FIXTURES_DIR", tmp_path)
    assert parity.discover() == [tmp_path / "synthetic_tio.json"]
    params = parity.set_params(parity.TIO_FAMILY, [fs])
    assert [p.id for p in params] == ["synthetic_tio"] and params[0].values == (fs,)
    assert fs.sizes() == ["14x28", "28x56"] and fs.train_size() == "14x28" and fs.hw("28x56") == (28, 56)
    monkeypatch.setattr(parity, "FIXTURES_DIR", tmp_path / "missing")
    (skipped,) = parity.set_params(parity.TIO_FAMILY, [])
    assert "not found" in skipped.marks[0].kwargs["reason"]
    monkeypatch.setattr(parity, "FIXTURES_DIR", tmp_path)
    (skipped,) = parity.set_params(parity.DAV2_FAMILY, [])
    assert "no Depth-Anything-V2 fixture set" in skipped.marks[0].kwargs["reason"]


def test_reading_whole_sampled_and_alias(synthetic):
    fs, arrays = synthetic
    disp, volume = arrays["train/stage1/disp"], arrays["train/stage1/volume"]
    assert fs.storage("train/stage1/disp") == "whole" and fs.storage("train/stage1/volume") == "sampled"
    assert fs.storage("train/stage1/volume_copy2") == "sampled" and fs.is_whole("train/stage1/disp_copy")
    np.testing.assert_array_equal(fs.whole("train/stage1/disp_copy"), disp)
    with pytest.raises(KeyError, match="sampled"):
        fs.whole("train/stage1/volume_copy")
    idx, val = fs.samples("train/stage1/disp")
    np.testing.assert_array_equal(idx, np.arange(disp.size))
    np.testing.assert_array_equal(val, disp.reshape(-1))
    for name in ("train/stage1/volume", "train/stage1/volume_copy", "train/stage1/volume_copy2"):
        idx, val = fs.samples(name)
        assert len(idx) == N_SAMPLES and np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(val, volume.reshape(-1)[idx])
    assert fs.total("train/stage1/volume_copy2") == math.fsum(volume.reshape(-1).astype(np.float64))
    assert fs.total("train/stage1/disp") == math.fsum(disp.reshape(-1).astype(np.float64))
    assert fs.scalar("train/loss/value") == 1.25
    assert fs.shape("train/stage1/volume_copy") == volume.shape
    assert fs.tolerance("train/stage1/volume_copy") == pytest.approx(2e-4)  # the target's sensitivity, x10
    ours = np.zeros_like(volume)
    assert fs.whole_or("train/stage1/volume", ours)[1] is False and fs.whole_or("train/stage1/disp", ours)[1]


@pytest.mark.parametrize("name", ["train/stage1/disp", "train/stage1/disp_copy", "train/stage1/volume",
                                  "train/stage1/volume_copy2"])
def test_compare_passes_exact_and_fails_wrong(synthetic, name):
    fs, arrays = synthetic
    ref = arrays[name.replace("_copy2", "").replace("_copy", "")]
    c = fs.compare(name, ref)
    assert c.ok and c.rel_l2 == 0, c
    assert fs.compare(name, ref * (1 + 1e-5)).ok  # within the tolerance 2e-4
    assert not fs.compare(name, ref * 1.01).ok
    assert not fs.compare(name, ref[:1]).ok  # shape
    bad = ref.copy()
    bad.reshape(-1)[0] = np.nan
    assert not fs.compare(name, bad).ok
    # a change away from every sample: caught by the whole-array sums of a sampled array
    idx, _ = fs.samples(name)
    if not fs.is_whole(name):
        off = np.setdiff1d(np.arange(ref.size), idx)[:40]
        bad = ref.copy()
        bad.reshape(-1)[off] += 10.0
        assert not fs.compare(name, bad).ok
    # keep: errors outside it are ignored (for a sampled array, on the samples only); keeping nothing fails
    keep = np.ones(ref.shape, bool)
    keep[..., 0, :] = False
    bad = ref.copy()
    bad[..., 0, :] += 5.0
    assert not fs.compare(name, bad).ok and fs.compare(name, bad, keep=keep).ok
    kept = idx[keep.reshape(-1)[idx]]  # an error on a kept stored element is still seen
    bad.reshape(-1)[kept[len(kept) // 2]] += 5.0
    assert not fs.compare(name, bad, keep=keep).ok
    assert not fs.compare(name, ref, keep=np.zeros(ref.shape, bool)).ok


def test_flip_fraction_on_whole_and_sampled(synthetic):
    fs, arrays = synthetic
    mask = arrays["train/stage2/mask"]
    idx, _ = fs.samples("train/stage2/mask")
    assert fs.flip_fraction("train/stage2/mask", mask) == (0.0, 0, N_SAMPLES)
    flipped = mask.copy().reshape(-1)
    flipped[idx[:3]] = 1 - flipped[idx[:3]]
    off = np.setdiff1d(np.arange(mask.size), idx)[:10]
    flipped[off] = 1 - flipped[off]  # not seen by the samples
    flipped = flipped.reshape(mask.shape)
    frac, n, total = fs.flip_fraction("train/stage2/mask", flipped)
    assert (n, total) == (3, N_SAMPLES) and frac == 3 / N_SAMPLES
    keep = np.ones(mask.shape, bool).reshape(-1)
    keep[idx[:1]] = False
    assert fs.flip_fraction("train/stage2/mask", flipped, keep=keep.reshape(mask.shape))[1:] == (2, N_SAMPLES - 1)
    # a whole map: every element counts
    disp = arrays["train/stage1/disp"]
    wrong = disp.copy()
    wrong[0, 0, :2, :5] = 0
    assert fs.flip_fraction("train/stage1/disp", wrong)[1:] == (10, disp.size)
