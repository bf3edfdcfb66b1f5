"""Graph export (`python -m tiodepth_jax.export`): Depth-Anything-V2 (tiny, and the weights of a reduced-depth
parity set, also against PyTorch) and the three TiO-Depth paths, each at two sizes, to ONNX and StableHLO with a
symbolic batch; the files run in onnxruntime's CPU provider and through `jax.export.deserialize` and agree with
the jitted JAX predictor (relative L2 <= 1e-5, float32) at two batch sizes. Also: a bfloat16 StableHLO graph of
a training run, the errors, and the command line as a process."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from convert.depth_anything_v2 import convert_state_dict
from tests.parity import FIXTURES_DIR, FixtureSet
from tests.test_predict import tio_run, tiny_model, tiny_tio  # noqa: F401  (tio_run: a fixture)
from tiodepth_jax import export
from tiodepth_jax.checkpoint import load, save_model
from tiodepth_jax.predict import IMAGENET_MEAN, IMAGENET_STD, PREDICTORS, DepthPredictor

onnxruntime = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5  # relative L2 of the exported graphs' float32 depth against the JAX predictor's
BATCHES = (2, 1)  # the symbolic batch at two sizes; the reference runs the first, the second is its first rows
# XLA:CPU without its LLVM optimisations compiles these graphs ~3x faster (tiny Stereo: 14 -> 4 CPU-s); the JAX
# reference and the StableHLO modules are compiled alike, so the comparison is of the graphs.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
FIXTURE_SET, FIXTURE_SIZE = "dav2_vitl_d4", "70x98"  # Depth-Anything-V2 weights of a reduced-depth parity set
CASES = [  # (kind, mode, network size): two sizes per path; Stereo's second width rescales the MFM's bin shifts
    ("depth_anything_v2", None, (28, 42)),  # and the fixture set's 70x98, below
    ("tiodepth", "Mono", (28, 56)), ("tiodepth", "Mono", (42, 70)),
    ("tiodepth", "Refine", (28, 56)), ("tiodepth", "Refine", (42, 70)),
    ("tiodepth", "Stereo", (28, 56)), ("tiodepth", "Stereo", (42, 70)),
]


def rel_l2(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def reference_depth(predictor, *views) -> np.ndarray:
    """The jitted predictor's depth (what predict computes for these network inputs)."""
    return np.asarray(predictor.lower(*views).compile(compiler_options=FAST_COMPILE)(predictor.state, *views))


def stablehlo_depth(exported, *views) -> np.ndarray:
    """A deserialised module's depth: `exported.call`, jitted for these shapes."""
    return np.asarray(jax.jit(exported.call).lower(*views).compile(compiler_options=FAST_COMPILE)(*views)["depth"])


def onnx_session(path):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Model directories of the tiny Depth-Anything-V2 and TiO-Depth models of test_predict."""
    root = tmp_path_factory.mktemp("models")
    return {"depth_anything_v2": save_model(root / "dav2", tiny_model()),
            "tiodepth": save_model(root / "tio", tiny_tio())}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {kind: load(path).model for kind, path in checkpoints.items()}


def check_graphs(model, predictor, views, tmp_path, stablehlo_batches=BATCHES[1:]) -> dict:
    """Export the predictor's forward with a symbolic batch to both formats and run the files on `views`
    ((BATCHES[0], H, W, 3) RGB in [0, 1] per view) and their first rows: onnxruntime at both batch sizes,
    StableHLO at `stablehlo_batches` (each compiles the module anew: ~4 CPU-s for Stereo). Returns their
    depth maps by (format, batch) and asserts each is within TOLERANCE of the jitted predictor's."""
    size = views[0].shape[1:3]
    graph = export.inference_graph(model, predictor, size, batch=None)
    onnx_file, = export.write_onnx(graph, tmp_path / "model.onnx")
    stablehlo_file, = export.write_stablehlo(graph, tmp_path / "model.stablehlo")
    normalised = [(v - IMAGENET_MEAN) / IMAGENET_STD for v in views] if predictor.kind == "depth_anything_v2" else views
    reference = reference_depth(predictor, *normalised)

    session = onnx_session(onnx_file)
    names = export.input_names(predictor.views)
    assert [i.name for i in session.get_inputs()] == list(names)
    assert session.get_inputs()[0].shape == [export.BATCH_NAME, *size, 3]
    assert [o.name for o in session.get_outputs()] == ["depth"]
    exported = jax.export.deserialize(stablehlo_file.read_bytes())  # no project code needed from here
    assert str(exported.in_avals[0].shape[0]) == export.BATCH_NAME
    depths = {("onnx", b): session.run(None, dict(zip(names, [v[:b] for v in views])))[0] for b in BATCHES}
    depths.update({("stablehlo", b): stablehlo_depth(exported, *[v[:b] for v in views]) for b in stablehlo_batches})
    errors = {key: rel_l2(depth, reference[:key[1]]) for key, depth in depths.items()}
    print(f"{predictor.kind} {predictor.mode or ''} {size}: relative L2 "
          + ", ".join(f"{fmt} batch {b} {e:.1e}" for (fmt, b), e in errors.items()))
    assert all(depth.shape == (b, *size) for (_, b), depth in depths.items())
    assert max(errors.values()) <= TOLERANCE, errors
    return depths


@pytest.mark.parametrize("kind, mode, size", CASES, ids=[f"{k}-{m}-{h}x{w}" for k, m, (h, w) in CASES])
def test_exported_graphs_match_the_jax_model(kind, mode, size, models, tmp_path):
    predictor = PREDICTORS[kind](models[kind], mode=mode)
    rng = np.random.default_rng(0)
    views = [rng.random((BATCHES[0], *size, 3), np.float32) for _ in range(predictor.views)]
    check_graphs(models[kind], predictor, views, tmp_path, BATCHES if kind == "depth_anything_v2" else BATCHES[1:])


def test_depth_anything_v2_with_fixture_weights(tmp_path):
    """The reduced-depth ViT-L parity set (4 blocks, 314 MiB of weights, peaked attention): the graphs follow the
    JAX model, and the ONNX depth the PyTorch original's within the set's tolerance."""
    meta = FIXTURES_DIR / f"{FIXTURE_SET}.json"
    if not meta.is_file():
        pytest.skip(f"no parity fixture set {FIXTURE_SET} in {FIXTURES_DIR}")
    fixture = FixtureSet(meta)
    cfg = fixture.meta["config"]
    model, _ = convert_state_dict(fixture.state_dict(), variant=cfg["constructor_args"]["encoder"],
                                  taps=tuple(cfg["intermediate_layer_idx"]))
    image = fixture.whole(f"{FIXTURE_SIZE}/input").transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN  # in [0, 1]
    views = [np.concatenate([image, image[:, :, ::-1]]).astype(np.float32)]  # a batch of 2: the input, mirrored
    depths = check_graphs(model, DepthPredictor(model), views, tmp_path)
    comparison = fixture.compare(f"{FIXTURE_SIZE}/depth", depths["onnx", 1])
    print(f"onnx vs PyTorch: relative L2 {comparison.rel_l2:.1e} (tolerance {comparison.tol:.1e})")
    assert comparison.ok, comparison


def test_bfloat16_stablehlo_of_a_training_run(tio_run, tmp_path, capsys):
    """The README's command for a run: its bfloat16 compute dtype, training image size (42x84) and the Refine
    path are the defaults; the module follows the bfloat16 JAX predictor."""
    out = tmp_path / "my_rig.stablehlo"
    assert export.main(["--checkpoint", tio_run, "--format", "stablehlo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tracing tiodepth Refine (bfloat16) at 42x84, batch B" in printed and f"wrote {out}" in printed
    exported = jax.export.deserialize(out.read_bytes())
    image = np.random.default_rng(1).random((1, 42, 84, 3), np.float32)
    depth = stablehlo_depth(exported, image)
    reference = reference_depth(PREDICTORS["tiodepth"](load(tio_run).model), image)
    assert depth.dtype == np.float32 and depth.shape == (1, 42, 84)
    assert rel_l2(depth, reference) <= 1e-2  # bfloat16 keeps ~3 digits


@pytest.mark.parametrize("args, message", [
    (["--size", "30", "28"], "size 30 28: the network input size must be two positive multiples of the patch size 14"),
    (["--mode", "Stereo"], "a 'depth_anything_v2' model has no modes (--mode Stereo needs a TiO-Depth model)"),
    (["--dtype", "bfloat16"], "ONNX export is float32 only"),
])
def test_what_cannot_be_exported_is_one_line(args, message, checkpoints, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert export.main(["--checkpoint", str(checkpoints["depth_anything_v2"]), "--format", "onnx", "--out", str(out),
                        *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and message in err
    assert not out.exists()


def test_unknown_tiodepth_mode(checkpoints, tmp_path, capsys):
    assert export.main(["--checkpoint", str(checkpoints["tiodepth"]), "--format", "stablehlo", "--mode", "Sterio",
                        "--out", str(tmp_path / "m")]) == 2
    assert "a 'tiodepth' model has the modes Refine, Mono, Stereo, not Sterio" in capsys.readouterr().err


def test_command_line(checkpoints, tmp_path):
    """The README's ONNX command as a process, with a fixed batch: progress lines and nothing else (the
    converter's warnings and debug prints are silenced), and a graph onnxruntime runs."""
    out = tmp_path / "dav2_vits.onnx"
    result = subprocess.run([sys.executable, "-m", "tiodepth_jax.export", "--checkpoint",
                             str(checkpoints["depth_anything_v2"]), "--format", "onnx", "--out", str(out),
                             "--size", "28", "42", "--batch", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[1:3] == ["tracing depth_anything_v2 (float32) at 28x42, batch 2",
                          "converting to ONNX (jax2onnx): image (2, 28, 42, 3) -> depth (2, 28, 42)"]
    assert len(lines) == 4 and lines[3].startswith(f"wrote {out} (") and "MiB) in " in lines[3]
    session = onnx_session(out)
    assert session.get_inputs()[0].shape == [2, 28, 42, 3]
    depth, = session.run(None, {"image": np.full((2, 28, 42, 3), 0.5, np.float32)})
    assert depth.shape == (2, 28, 42) and np.isfinite(depth).all()
