"""The evaluation command: per-sample metrics (crop, clamps, min_depth, median scaling, EPE/D1), the jitted
forward with post-processing, checkpoint loading (converted and training), the settings (crop, input size,
overrides after --modes), an end-to-end run of the CLI on a tiny random model over a tiny TFDS evaluation
set, and one on a stereo folder with a constant model."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tiodepth_jax import evaluate as ev
from tiodepth_jax import postprocess
from tiodepth_jax.checkpoint import BEST_KEY, Loaded, load, save_model
from tiodepth_jax.inference import predict_outputs
from tiodepth_jax.config import load_config
from tiodepth_jax.data import builders, fake_kitti
from tiodepth_jax.data.augment import eval_sample
from tiodepth_jax.data.pipeline import open_source
from tiodepth_jax.images import write_png
from tiodepth_jax.models.tiodepth import TiODepth
from tiodepth_jax.train.checkpointing import TrainCheckpoints

DEMO = "configs/demo.yaml"
DATASET = "kitti_stereo2015"


# ------------------------------------------------------------------------------------------------------
# evaluate_prediction on constructed predictions

def sample_and_pred(h=20, w=30, gt=10.0):
    return {"depth_gt": np.full((h, w), gt, np.float32)}, np.full((h, w), gt, np.float32)


def score(pred, sample, modes=("Refine",), **opts):
    outputs = {ev.DEPTH_KEYS[m]: pred for m in modes}
    outputs.update({ev.DISP_KEYS[m]: sample.get("pred_disp") for m in modes})
    return ev.evaluate_prediction(outputs, sample, modes, ev.MetricOptions(**opts))


def test_eigen_crop_and_hand_computed_metrics():
    sample, pred = sample_and_pred()  # 20 x 30: crop rows [8, 19), columns [1, 28) -> 11 * 27 = 297 pixels
    pred[:8], pred[19:], pred[:, :1], pred[:, 28:] = 1.0, 1.0, 1.0, 1.0   # outside the crop: ignored
    pred[10, 10] = 12.5                                                 # one pixel 25% too far
    m = score(pred, sample)["Refine"]
    assert m["abs_rel"] == pytest.approx(0.25 / 297)
    assert m["sq_rel"] == pytest.approx(2.5 ** 2 / 10 / 297)
    assert m["rmse"] == pytest.approx(np.sqrt(2.5 ** 2 / 297))
    assert m["rmse_log"] == pytest.approx(np.sqrt(np.log(1.25) ** 2 / 297))
    assert m["a1"] == pytest.approx(296 / 297)  # a ratio of exactly 1.25 is not < 1.25
    assert m["a2"] == m["a3"] == 1.0
    assert m["scale"] == 1.0
    assert list(m) == list(ev.DEPTH_METRICS) + ["scale"]


def test_far_ground_truth_is_kept_and_clamped_to_80():
    sample, pred = sample_and_pred(gt=40.0)
    sample["depth_gt"][10, 10] = 120.0   # beyond 80 m: kept by the depth_kitti mask, clamped to 80
    pred[10, 10] = 95.0                  # clamped to 80 as well -> no error
    assert score(pred, sample)["Refine"]["abs_rel"] == 0.0
    pred[10, 10] = 60.0
    assert score(pred, sample)["Refine"]["abs_rel"] == pytest.approx(20 / 80 / 297)


def test_min_depth_0_and_0_5():
    sample, pred = sample_and_pred()
    sample["depth_gt"][10, 10], pred[10, 10] = 0.3, 0.6
    assert score(pred, sample, min_depth=0.5)["Refine"]["abs_rel"] == 0.0                     # GT 0.3 masked out
    assert score(pred, sample, min_depth=0.0)["Refine"]["abs_rel"] == pytest.approx(1.0 / 297)  # |0.3-0.6|/0.3


def test_median_scaling():
    sample, pred = sample_and_pred()
    half = pred / 2
    raw = score(half, sample)["Refine"]
    assert raw["abs_rel"] == pytest.approx(0.5) and raw["scale"] == pytest.approx(2.0)
    for opts in ({"median_scaling": True}, {"metric": "depth_kitti_mono"}):
        m = score(half, sample, **opts)["Refine"]
        assert m["abs_rel"] == pytest.approx(0.0, abs=1e-7) and m["a1"] == 1.0 and m["scale"] == pytest.approx(2.0)


def test_prediction_is_resized_to_the_ground_truth():
    sample, _ = sample_and_pred(h=20, w=30)
    small = np.full((1, 10, 15, 1), 10.0, np.float32)  # batch and channel axes are accepted
    assert score(small, sample)["Refine"]["abs_rel"] == pytest.approx(0.0, abs=1e-7)


def test_stereo2015_mask_and_disparity_metrics_with_width_rescale():
    h, w = 8, 12
    disp_gt = np.full((h, w), 4.0, np.float32)
    disp_gt[0, :3] = 10.0    # error 6 > 3 and 6 / 10 > 5%: a D1 outlier
    disp_gt[1, :2] = 40.0    # error 36: outlier
    disp_gt[2, 0] = 7.5      # error 3.5 > 3 and 3.5 / 7.5 > 5%: outlier
    disp_gt[3, 0] = 6.9      # error 2.9 < 3: not an outlier
    disp_gt[4, :4] = 0.0     # invalid
    depth_gt = np.where(disp_gt > 0, 40.0 / np.maximum(disp_gt, 1e-9), 0).astype(np.float32)
    depth_gt[5, 0] = 90.0    # beyond max_depth: masked out by the stereo2015 mask (no clamp, no crop)
    sample = {"depth_gt": depth_gt, "disp_gt": disp_gt,
              "pred_disp": np.full((4, 6, 1), 2.0, np.float32)}  # half width: x 12 / 6 -> 4 px at GT size
    pred_depth = np.full((h, w), 10.0, np.float32)               # = 40 / 4
    m = score(pred_depth, sample, modes=("Stereo",), metric="depth_kitti_stereo2015")["Stereo"]
    valid = (disp_gt > 0).sum()
    assert m["epe_all"] == pytest.approx((3 * 6 + 2 * 36 + 3.5 + 2.9) / valid, rel=1e-6)
    assert m["d1_all"] == pytest.approx(100 * 6 / valid)
    n_depth = valid - 1  # the 90 m pixel is out
    g = depth_gt[(depth_gt > 0.5) & (depth_gt < 80)]
    assert g.size == n_depth
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(g - 10) / g), rel=1e-6)
    assert list(m) == list(ev.COLUMNS)


def test_metric_options_errors():
    with pytest.raises(ValueError, match="unknown metric 'depth_nyu'"):
        ev.MetricOptions(metric="depth_nyu")
    with pytest.raises(ValueError, match="min_depth"):
        ev.MetricOptions(min_depth=90.0)
    with pytest.raises(ValueError, match="unknown crop 'centre'"):
        ev.MetricOptions(crop="centre")
    assert ev.MetricOptions().crop == "garg" and ev.MetricOptions("depth_kitti_stereo2015").crop == "none"


# ------------------------------------------------------------------------------------------------------
# The forward pass: post-processing applies to Mono / Refine only; one compile per input shape

class FakeModel(nnx.Module):
    """`inference` like TiODepth's with closed-form outputs: depth = 1 + k + red, disparity = 10 * k + green."""

    K = {"Mono": 1.0, "Stereo": 2.0, "Refine": 3.0}

    def __init__(self):
        self.calls = []

    def inference(self, inputs, modes):
        self.calls.append(tuple(modes))
        x = inputs["color_s"]
        out = {}
        for m in modes:
            out[ev.DEPTH_KEYS[m]] = 1 + self.K[m] + x[..., 0:1]
            out[ev.DISP_KEYS[m]] = 10 * self.K[m] + x[..., 1:2]
        return out


def inputs(h=6, w=9, seed=0):
    rng = np.random.default_rng(seed)
    return {"color_s": rng.random((h, w, 3), np.float32), "color_o": rng.random((h, w, 3), np.float32),
            "direct": np.float32(1)}


@pytest.mark.parametrize("method", postprocess.METHODS)
def test_predict_outputs_post_processes_mono_and_refine_only(method):
    model, x = FakeModel(), {k: v[None] for k, v in inputs().items()}
    out = predict_outputs(model, x, ("Mono", "Stereo", "Refine"), method)
    assert model.calls == [("Mono", "Stereo", "Refine"), ("Mono", "Refine")]
    second = postprocess.second_pass_image(method, x["color_s"])[..., 0:1]
    for m in ("Mono", "Refine"):
        expected = postprocess.post_process(method, 1 + FakeModel.K[m] + x["color_s"][..., 0:1],
                                            1 + FakeModel.K[m] + second)
        np.testing.assert_allclose(out[ev.DEPTH_KEYS[m]], expected, rtol=1e-6)
    for m in ("Mono", "Stereo", "Refine"):  # disparities raw; Stereo depth raw
        np.testing.assert_allclose(out[ev.DISP_KEYS[m]], 10 * FakeModel.K[m] + x["color_s"][..., 1:2])
    np.testing.assert_allclose(out["stereo_depth_0_s"], 3 + x["color_s"][..., 0:1])
    with pytest.raises(ValueError, match="Mono and Refine paths only"):
        predict_outputs(FakeModel(), x, ("Stereo",), method)


def test_evaluator_compiles_once_per_shape():
    evaluator = ev.Evaluator(FakeModel(), ("Mono", "Refine"), "fpp")
    a = evaluator(inputs(seed=0))
    evaluator(inputs(seed=1))
    assert evaluator.num_traces == 1
    evaluator(inputs(h=12, w=9))
    assert evaluator.num_traces == 2
    assert set(a) == {"mono_depth_0_s", "mono_disp_0_s", "refmono_depth_0_s", "refmono_disp_0_s"}
    assert a["mono_depth_0_s"].shape == (6, 9, 1) and isinstance(a["mono_depth_0_s"], np.ndarray)


# ------------------------------------------------------------------------------------------------------
# A tiny model, its checkpoints and a tiny evaluation set

@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    return load_config(DEMO, [f"workdir={tmp_path_factory.mktemp('run')}"])


def random_model(cfg) -> TiODepth:
    """A TiODepth with random weights drawn by numpy (about like its initialisers, without compiling them):
    kernels N(0, 1 / fan_in), tokens N(0, 0.02), scales and variances 1, biases and means 0."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: TiODepth(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def fill(name, x):
        if name in ("scale", "gamma", "var"):
            return np.ones(x.shape, x.dtype)
        if name == "kernel":
            return rng.standard_normal(x.shape) / np.sqrt(np.prod(x.shape[:-1]))
        if name in ("cls_token", "pos_embed"):
            return 0.02 * rng.standard_normal(x.shape)
        return np.zeros(x.shape, x.dtype)

    flat = [(path, v.replace(jnp.asarray(fill(path[-1], v.get_value()), v.get_value().dtype)))
            for path, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.fixture(scope="module")
def model(demo_cfg):
    return random_model(demo_cfg.model)


@pytest.fixture(scope="module")
def model_checkpoint(model, tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("ckpt") / "tiny", model)


@pytest.fixture(scope="module")
def kitti2015(tmp_path_factory):
    """(data dir, fake tree): kitti_stereo2015 built from 3 fake pairs of 56 x 196 pixels."""
    path = tmp_path_factory.mktemp("tfds")
    fake = fake_kitti.make_fake_kitti2015(path / "kitti2015", count=3)
    builders.build(DATASET, fake.root, path, progress=False)
    return path, fake


@pytest.fixture(scope="module")
def data_dir(kitti2015):
    return kitti2015[0]


def test_true_depth_scores_perfectly_on_built_records(kitti2015, tmp_path):
    """The record path (data source -> eval_sample -> evaluate_prediction) on the fake trees' true depths."""
    path, fake = kitti2015
    source = open_source(DATASET, path, "train")
    for i in range(len(source)):
        sample = eval_sample(source[i], full_size=(56, 168))
        outputs = {"stereo_depth_0_s": fake.depth[i], "stereo_disp_0_s": fake.disp[i]}
        m = ev.evaluate_prediction(outputs, sample, ["Stereo"], ev.MetricOptions("depth_kitti_stereo2015"))["Stereo"]
        assert m["abs_rel"] < 1e-3 and m["a1"] == 1 and m["epe_all"] < 2e-3 and m["d1_all"] == 0
    raw = fake_kitti.make_fake_kitti_raw(tmp_path / "raw", drives=(1,), frames=2)
    builders.build("kitti_eigen_test", raw.root, tmp_path, split_file=raw.test_split, config="improved",
                   progress=False)
    source = open_source("kitti_eigen_test/improved", tmp_path, "test")
    for i, depth in enumerate(raw.depth_l):
        sample = eval_sample(source[i], full_size=(56, 168))
        m = ev.evaluate_prediction({"refmono_depth_0_s": depth}, sample, ["Refine"], ev.MetricOptions())["Refine"]
        assert m["abs_rel"] < 1e-3 and m["a1"] == 1 and m["scale"] == pytest.approx(1, abs=1e-3)


def cli(*args, data_dir=None, checkpoint=None):
    argv = ["--config", DEMO, "--dataset", DATASET]
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    argv += ["--checkpoint", str(checkpoint)] if checkpoint else ["--checkpoint", "nowhere"]
    return ev.main(argv + list(args))


def independent_epe_d1(pred, gt):
    """EPE and D1 (KITTI: error > 3 px and > 5 % of the GT) over finite GT > 0, in plain numpy."""
    valid = np.isfinite(gt) & (gt > 0)
    err = np.abs(gt[valid].astype(np.float64) - pred[valid])
    return err.mean(), 100 * np.mean((err > 3) & (err > 0.05 * gt[valid]))


def test_cli_end_to_end(model_checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli("--modes", "Refine", "Stereo", "Mono", "val.max_samples=2", "--post-process", "fpp", "--out", str(out),
             "--save-predictions", "val.image_size=[56,168]", data_dir=data_dir, checkpoint=model_checkpoint)
    printed = capsys.readouterr().out
    assert rc == 0
    assert "tensorflow" not in sys.modules
    rows = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert [(r["name"], r["mode"]) for r in rows] == [(n, m) for n in ("000000_10", "000001_10")
                                                      for m in ("Mono", "Stereo", "Refine")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 2 and summary["split"] == "train" and summary["compiled_shapes"] == 1
    assert summary["kind"] == "model" and summary["crop"] == "none"
    assert summary["post_processed_modes"] == ["Mono", "Refine"] and summary["image_size"] == [56, 168]
    assert summary["image_size_from"] == "val.image_size argument"
    assert summary["metric"] == "depth_kitti_stereo2015" and summary["min_depth"] == 0.5
    for mode in ("Mono", "Stereo", "Refine"):
        res = summary["results"][mode]
        assert set(res) == set(ev.COLUMNS)
        for key, value in res.items():
            assert value == pytest.approx(np.mean([r[key] for r in rows if r["mode"] == mode]))
            assert np.isfinite(value)
    for r in rows:  # the saved arrays are what was scored
        saved = np.load(out / "predictions" / f"{r['index']:05d}_{r['mode']}.npz")
        assert sorted(saved) == ["depth", "depth_gt", "disp", "disp_gt"]
        assert saved["disp"].shape == saved["depth_gt"].shape == (56, 196)
        epe, d1 = independent_epe_d1(saved["disp"], saved["disp_gt"])
        assert r["epe_all"] == pytest.approx(epe, abs=1e-6) and r["d1_all"] == pytest.approx(d1, abs=1e-6)
    header, *table = printed.splitlines()[-5:-1]
    assert header.split() == ["mode", *ev.COLUMNS]
    assert [line.split()[0] for line in table] == ["Mono", "Stereo", "Refine"]
    assert all(len(line.split()) == 11 for line in table)


def test_training_checkpoint(demo_cfg, model, tmp_path):
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)  # as train.step.init_state
    stats = jax.tree.map(lambda x: x + 1, stats)
    state = {"params": params, "batch_stats": stats, "opt": {"param_group1": {"mu": jnp.zeros(3)}}}
    run = tmp_path / "run"
    ckpts = TrainCheckpoints(run / "checkpoints", async_save=False, config=demo_cfg.to_dict())
    for step in (4, 7):
        ckpts.save(step, state, {"epoch": 1})
    ckpts.close()
    for path, which, step in ((run, "latest", 7), (run / "checkpoints" / "4", "latest", 4), (run, 4, 4)):
        loaded = load(path, which=which)
        assert loaded.source == {"checkpoint": str(run / "checkpoints"), "kind": "training", "step": step}
        assert (loaded.kind, loaded.dtype) == ("tiodepth", demo_cfg.dtype)
        assert loaded.train_size == demo_cfg.model.image_size and loaded.image_size == demo_cfg.data.image_size
        for part, filt in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
            want, got = jax.tree.leaves(state[part]), jax.tree.leaves(nnx.state(loaded.model, filt))
            assert len(want) == len(got) and all(np.array_equal(a, b) for a, b in zip(want, got))
    with pytest.raises(FileNotFoundError, match="neither a tiodepth_jax model directory"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no checkpoint of step 5"):
        load(run, which=5)
    with pytest.raises(ValueError, match="carries a validation score"):
        load(run, which="best")


def test_predict_from_a_training_run(demo_cfg, model, tmp_path):
    """predict takes a run too, with the size its training images had (data.image_size) as its default size."""
    from tiodepth_jax import predict
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    ckpts = TrainCheckpoints(tmp_path / "run" / "checkpoints", async_save=False, config=demo_cfg.to_dict())
    ckpts.save(3, {"params": params, "batch_stats": stats}, {"epoch": 1})
    ckpts.close()
    predictor = predict.load_predictor(tmp_path / "run", mode="Mono")
    assert predictor.default_size == demo_cfg.data.image_size
    write_png(tmp_path / "frame.png", np.full((30, 50, 3), 128, np.uint8))
    assert predict.main(["--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "frame.png"),
                         "--mode", "Mono", "--out", str(tmp_path / "out"), "--no-png"]) == 0
    assert np.load(tmp_path / "out" / "frame.npy").shape == (30, 50)


def test_best_training_checkpoint(demo_cfg, model, tmp_path):
    """`which='best'` is the checkpoint with the lowest stored score, whatever its age."""
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    ckpts = TrainCheckpoints(tmp_path / "checkpoints", keep=1, keep_best=True, async_save=False,
                             config=demo_cfg.to_dict())
    saved = {}
    for step, score in ((3, 0.5), (6, -0.2), (9, 0.1)):
        saved[step] = stats = jax.tree.map(lambda x: x + 1, stats)
        ckpts.save(step, {"params": params, "batch_stats": stats}, {"epoch": 1}, {BEST_KEY: score})
    ckpts.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [6, 9]
    # A resumed run (a new manager) still knows the scores: an unscored save does not evict the best.
    ckpts = TrainCheckpoints(tmp_path / "checkpoints", keep=1, keep_best=True, async_save=False,
                             config=demo_cfg.to_dict())
    ckpts.save(12, {"params": params, "batch_stats": stats}, {"epoch": 2})
    ckpts.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [6, 12]
    loaded = load(tmp_path, which="best")
    assert loaded.source["step"] == 6
    got = jax.tree.leaves(nnx.state(loaded.model, nnx.BatchStat))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved[6]), got))


def test_converted_checkpoint(model, model_checkpoint):
    loaded = load(model_checkpoint)
    assert loaded.source == {"checkpoint": str(model_checkpoint), "kind": "model"} and loaded.image_size is None
    want, got = jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(loaded.model, nnx.Param))
    assert all(np.array_equal(a, b) for a, b in zip(want, got))


@pytest.mark.parametrize("args, message", [
    ((), "checkpoint nowhere does not exist"),
    (("--modes", "Mono", "Fancy"), "unknown mode(s) Fancy; modes are Mono, Stereo, Refine"),
    (("--modes", "Stereo", "--post-process", "fpp"), "applies to the Mono and Refine paths only"),
    (("--post-process", "xpp"), "unknown --post-process 'xpp'"),
    (("--metric", "depth_nyu"), "unknown metric 'depth_nyu'"),
    (("--crop", "centre"), "unknown crop 'centre'; known: garg, eigen, none"),
    (("--modes", "val.max_samples=2"), "--modes names no path before val.max_samples=2"),
])
def test_cli_errors(args, message, data_dir, capsys):
    assert cli(*args, data_dir=data_dir) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_missing_dataset_and_default_dataset(tmp_path, capsys):
    assert cli(data_dir=tmp_path / "empty") == 2
    err = capsys.readouterr().err
    assert f"dataset '{DATASET}' is not built in {tmp_path / 'empty'}" in err
    assert "python -m tiodepth_jax.data.build" in err
    assert ev.main(["--config", DEMO, "--checkpoint", str(tmp_path)]) == 2  # demo.yaml validates on 'synthetic'
    assert "the 'synthetic' scenes, which have no evaluation set; pass --dataset" in capsys.readouterr().err
    assert ev.main(["--config", DEMO, "--checkpoint", str(tmp_path), "--dataset", DATASET]) == 2
    assert "no data directory: pass --data-dir or set val.data_dir" in capsys.readouterr().err


def test_settings_defaults(demo_cfg):
    base = ["--config", DEMO, "--checkpoint", "x", "--data-dir", "d"]
    s = ev.resolve_settings(ev.parse_args(base + ["--dataset", "kitti_stereo2015"]), demo_cfg)
    assert s["split"] == "train" and s["opts"].metric == "depth_kitti_stereo2015" and s["opts"].min_depth == 0.5
    assert s["modes"] == ("Mono", "Stereo", "Refine") and s["data_dir"] == "d" and s["opts"].crop == "none"
    s = ev.resolve_settings(ev.parse_args(base + ["--dataset", "kitti_eigen_test/improved", "--modes", "Refine",
                                                  "Mono", "--min-depth", "0", "--median-scaling"]), demo_cfg)
    assert s["split"] == "test" and s["opts"].metric == "depth_kitti" and s["opts"].min_depth == 0.0
    assert s["opts"].scaled and s["modes"] == ("Mono", "Refine") and s["opts"].crop == "garg"
    for dataset, crop, want in (("stereo_folder", [], "none"), ("kitti_eigen_test/raw", ["--crop", "eigen"], "eigen")):
        s = ev.resolve_settings(ev.parse_args(base + ["--dataset", dataset, *crop]), demo_cfg)
        assert s["opts"].crop == want and s["opts"].metric == "depth_kitti"
    cfg = load_config(DEMO, ["workdir=x", "val.name=kitti_stereo2015", "val.split=train", "val.data_dir=/data",
                             "val.metric=depth_kitti_stereo2015"])
    s = ev.resolve_settings(ev.parse_args(["--config", DEMO, "--checkpoint", "x"]), cfg)
    assert (s["dataset"], s["split"], s["data_dir"]) == ("kitti_stereo2015", "train", "/data")
    assert s["opts"].metric == "depth_kitti_stereo2015"


def test_modes_leave_overrides_to_the_config():
    base = ["--config", DEMO, "--checkpoint", "x"]
    args = ev.parse_args(base + ["a.b=1", "--modes", "Mono", "Stereo", "val.max_samples=2", "--max-samples", "3",
                                 "c.d=4"])
    assert args.modes == ["Mono", "Stereo"] and args.max_samples == 3
    assert args.overrides == ["a.b=1", "val.max_samples=2", "c.d=4"]  # command-line order: the last one wins


def test_input_size_precedence(demo_cfg):
    """--size, then val.image_size as an argument, then the checkpoint's own size, then the config's."""
    def size(*extra, model_size=(126, 420)):
        args = ev.parse_args(["--config", DEMO, "--checkpoint", "x", *extra])
        return ev.input_size(args, load_config(DEMO, ["workdir=x", *args.overrides]), model_size)

    assert size("--size", "28", "56", "val.image_size=[56,168]") == ((28, 56), "--size")
    assert size("val.image_size=[56,168]") == ((56, 168), "val.image_size argument")
    assert size("val.max_samples=2") == ((126, 420), "checkpoint")
    assert size(model_size=None) == ((84, 252), "config")
    with pytest.raises(ev.InputError, match="--size 30 56: the input size must be two positive multiples of 14"):
        size("--size", "30", "56")
    with pytest.raises(ev.InputError, match=r"\[37, 112\], which is not a multiple of 14; choose another --size"):
        size("--size", "56", "168", "--post-process", "mspp")


# ------------------------------------------------------------------------------------------------------
# Your own rig: a stereo folder with depth, scored without the KITTI crop, with EPE / D1 from K and baseline

class ConstantModel(nnx.Module):
    """`inference` with the same depth and disparity (network pixels) everywhere, for every path."""

    def __init__(self, depth: float, disp: float):
        self.depth, self.disp = depth, disp

    def inference(self, inputs, modes):
        ones = jnp.ones_like(inputs["color_s"][..., :1])
        return {k: v for m in modes for k, v in ((ev.DEPTH_KEYS[m], self.depth * ones),
                                                  (ev.DISP_KEYS[m], self.disp * ones))}


def test_stereo_folder_end_to_end(tmp_path, monkeypatch):
    """GT 10 m except the top 6 rows (2 m: above both the garg and the eigen crop) and two invalid pixels; the
    prediction is 10 m and its disparity fx * baseline / 10 m, so only the top rows are wrong: the default
    (no crop) scores them, --crop garg / eigen do not. GT disparity = fx * baseline / depth_gt."""
    root, fx, baseline = tmp_path / "rig", 50.0, 0.5
    (root / "test" / "depth").mkdir(parents=True)
    (root / "calibration.yaml").write_text(f"{{fx: {fx}, fy: {fx}, cx: 30, cy: 10, baseline: {baseline}}}")
    rng = np.random.default_rng(0)
    for side in ("left", "right"):
        (root / "test" / side).mkdir()
        write_png(root / "test" / side / "a.png", rng.integers(0, 255, (20, 60, 3), np.uint8))
    depth = np.full((20, 60), 10.0, np.float32)
    depth[:6] = 2.0
    depth[10, 10], depth[10, 20] = 0.0, np.nan
    np.save(root / "test" / "depth" / "a.npy", depth)
    builders.build("stereo_folder", root, tmp_path / "tfds", progress=False)
    size = (28, 56)   # the checkpoint's own input size; the prediction's disparity is x 60 / 56 at the GT size
    model = ConstantModel(10.0, fx * baseline / 10.0 * size[1] / 60)
    monkeypatch.setattr(ev, "load", lambda *a, **k: Loaded(model, "tiodepth", "float32", None,
                                                           {"checkpoint": "stub", "kind": "training"}, size))

    def run(*extra):
        out = tmp_path / f"out{len(extra)}"
        assert ev.main(["--config", DEMO, "--checkpoint", "stub", "--dataset", "stereo_folder", "--data-dir",
                        str(tmp_path / "tfds"), "--modes", "Stereo", "Refine", "--out", str(out), *extra]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["image_size"] == list(size) and summary["image_size_from"] == "checkpoint"
        return summary, out

    summary, out = run("--save-predictions")
    valid, wrong = 20 * 60 - 2, 6 * 60
    assert summary["crop"] == "none" and summary["metric"] == "depth_kitti"
    for res in summary["results"].values():
        assert res["abs_rel"] == pytest.approx(wrong * 4 / valid) and res["a1"] == pytest.approx(1 - wrong / valid)
        assert res["epe_all"] == pytest.approx(wrong * 10 / valid, rel=1e-6)  # GT 25 / 2 = 12.5 px, pred 2.5 px
        assert res["d1_all"] == pytest.approx(100 * wrong / valid)
    saved = np.load(out / "predictions" / "00000_Stereo.npz")
    np.testing.assert_allclose(saved["disp_gt"], fx * baseline / np.where(depth > 0, depth, np.inf), rtol=1e-6)
    np.testing.assert_allclose(saved["disp"], 2.5, rtol=1e-6)
    for crop in ("garg", "eigen"):
        summary, _ = run("--crop", crop)
        assert summary["crop"] == crop
        for res in summary["results"].values():
            assert res["abs_rel"] == 0 and res["d1_all"] == 0 and res["epe_all"] == pytest.approx(0, abs=1e-5)
