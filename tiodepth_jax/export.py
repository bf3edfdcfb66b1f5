"""Export a model's inference path as one self-contained graph file: StableHLO (`jax.export`) or ONNX.

Usage:
  python -m tiodepth_jax.export --checkpoint DIR_OR_RUN --format onnx|stablehlo --out FILE
      [--mode Mono|Stereo|Refine] [--size H W] [--batch N|dynamic] [--dtype float32|bfloat16]
      [--which latest|best|STEP]

  --checkpoint   a model directory (converted, or written by `tiodepth_jax.export_model`) or a training run
                 (its workdir, checkpoint directory or a step directory; --which picks its checkpoint)
  --format       stablehlo: `jax.export`'s serialised module (load it with `jax.export.deserialize`, run it
                 with `.call(...)`; no code of this project is needed); onnx: an ONNX model (opset 23,
                 converted by jax2onnx) that onnxruntime's CPU provider runs
  --out          the file to write (its folder is created; an existing file is replaced). An ONNX model
                 whose weights exceed protobuf's 2 GB limit keeps them in FILE.data next to it.
  --mode         TiO-Depth path: Refine (default), Mono or Stereo (two inputs); Depth-Anything-V2 has none
  --size H W     the network input size, multiples of the patch size 14 (the graph takes this size only);
                 default: the size predict uses, 518 518 for Depth-Anything-V2, a TiO-Depth model's
                 training image size (378 1260 for a model converted from PyTorch)
  --batch        a fixed batch size N, or dynamic (default): a symbolic batch dimension "B"
  --dtype        compute dtype, parameters stay float32. StableHLO: default the trained one (a training
                 run's, float32 for a converted model). ONNX: float32 only (ONNX's Einsum takes no
                 bfloat16), also for a model trained in bfloat16

This is not `tiodepth_jax.export_model`, which turns a training run into a model directory (parameters
and config) for predict and evaluate; this command writes a graph for runtimes outside this project.

The graph, for every model kind and path:
  inputs   `image` (B, H, W, 3) float32, or `left` and `right` for Stereo (the left camera first), in that
           order: RGB in [0, 1], NHWC, already resized to the exported H x W
  output   `depth` (B, H, W) float32 at the network size: relative inverse depth (larger = nearer) for
           Depth-Anything-V2, metres for TiO-Depth (disparity in pixels of the network input = d2d / depth,
           d2d from the model's config, spec §2.5). A StableHLO module returns {"depth": ...}.

Preprocessing outside the graph (as `python -m tiodepth_jax.predict` does it, see its --help):
  Depth-Anything-V2  decode to float RGB in [0, 1]; resize to H x W with PIL BICUBIC per channel in float
                     mode "F" (no 8-bit rounding). The graph applies the ImageNet normalisation,
                     (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225).
  TiO-Depth          resize the 8-bit RGB image to H x W with PIL LANCZOS, then divide by 255. The network
                     normalises inside, as it always does ((x - 0.45) / 0.225, or ImageNet's for a model
                     configured with normalisation: imagenet).
Resizing the depth back to the image size is outside the graph too: bilinear, align_corners=True for
Depth-Anything-V2 and False for TiO-Depth.

How: the forward is traced once with `jax.make_jaxpr`, parameters as arguments; the jaxpr with the
parameters bound as constants is the pure function both writers take, so neither sees a Flax module.
A StableHLO module is lowered for the platform this runs on (jax.export's default).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.core import jaxpr_as_fun

from tiodepth_jax.checkpoint import SAVED, load, parse_which
from tiodepth_jax.errors import InputError, UserError, run_command
from tiodepth_jax.images import writing
from tiodepth_jax.predict import DTYPES, IMAGENET_MEAN, IMAGENET_STD, DepthPredictor, predictor_class

FORMATS = ("onnx", "stablehlo")
BATCH_NAME = "B"               # the symbolic batch dimension of both formats
OUTPUT = "depth"
ONNX_OPSET = 23
ONNX_PROTO_LIMIT = 2**31 - 2**26  # weights above this go to FILE.data: protobuf refuses messages over 2 GB
CONVERTER_LOGGERS = ("jax2onnx", "onnx_ir")


@dataclasses.dataclass(frozen=True)
class Graph:
    """An inference path as a pure function of arrays: `fn(*inputs) -> {OUTPUT: array}`."""

    fn: Callable
    inputs: tuple[jax.ShapeDtypeStruct, ...]
    input_names: tuple[str, ...]
    name: str          # e.g. "tiodepth_Stereo"
    doc: str           # what the inputs and the output are (the ONNX model's doc_string)


def check_request(cls: type[DepthPredictor], mode, fmt: str, dtype) -> None:
    """Raises InputError, before any parameter is read, for a mode that `cls`'s model kind does not have and
    for a bfloat16 ONNX graph."""
    if mode is not None and mode not in cls.modes:
        modes = [m for m in cls.modes if m is not None]
        raise InputError(f"a {cls.kind!r} model has " + (f"the modes {', '.join(modes)}, not {mode}" if modes
                                                          else f"no modes (--mode {mode} needs a TiO-Depth model)"))
    if fmt == "onnx" and dtype is not None and jnp.dtype(dtype) != jnp.float32:
        raise InputError("ONNX export is float32 only (ONNX's Einsum takes no bfloat16); use --format stablehlo "
                         "for a bfloat16 graph")


def network_size(predictor: DepthPredictor, size) -> tuple[int, int]:
    """`size` (H, W), else the predictor's default (S x S for Depth-Anything-V2's lower bound S); raises
    InputError for a size that is not two positive multiples of the model's patch size."""
    size = predictor.default_size if size is None else size
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = predictor.patch_size
    if len(size) != 2 or any(s < patch or s % patch for s in size):
        raise InputError(f"size {' '.join(map(str, size))}: the network input size must be two positive "
                         f"multiples of the patch size {patch} (H W)")
    return size


def normalisation(predictor: DepthPredictor) -> Callable:
    """What the graph applies to its [0, 1] RGB inputs before the predictor's forward: Depth-Anything-V2's
    ImageNet normalisation (predict applies it with numpy, in the same float32 operations); nothing for
    TiO-Depth, whose network normalises itself."""
    if predictor.kind == "depth_anything_v2":
        return lambda x: (x - IMAGENET_MEAN) / IMAGENET_STD
    return lambda x: x


def graph_doc(predictor: DepthPredictor, size: tuple[int, int], batch) -> str:
    """The inputs, their preprocessing and the output, in a few sentences (see the module docstring)."""
    h, w = size
    names = " and ".join(input_names(predictor.views))
    if predictor.kind == "depth_anything_v2":
        return (f"Depth-Anything-V2. {names}: ({batch}, {h}, {w}, 3) float32 RGB in [0, 1], resized to {h}x{w} "
                f"(bicubic); the graph applies the ImageNet normalisation. depth: ({batch}, {h}, {w}) float32, "
                "relative inverse depth (larger = nearer).")
    return (f"TiO-Depth, {predictor.mode} path. {names}: ({batch}, {h}, {w}, 3) float32 RGB in [0, 1], the 8-bit "
            f"image resized to {h}x{w} (PIL LANCZOS) / 255. depth: ({batch}, {h}, {w}) float32, metres; disparity "
            f"in pixels of the network input = {predictor.d2d:g} / depth.")


def input_names(views: int) -> tuple[str, ...]:
    return ("left", "right") if views == 2 else ("image",)


def inference_graph(model: nnx.Module, predictor: DepthPredictor, size: tuple[int, int], batch: int | None) -> Graph:
    """The predictor's forward on `model` as a `Graph` for (batch or a symbolic "B", H, W, 3) inputs.

    The forward is traced with the parameters as arguments (jax.make_jaxpr); the returned function evaluates
    that jaxpr with them bound as constants, so the writers trace plain JAX primitives: no Flax module, no
    `nnx.scan` over a module (which jax2onnx's Flax patches cannot trace), the same graph for both formats.
    """
    graphdef, params, rest = nnx.split(model, SAVED, ...)
    leaves, treedef = jax.tree.flatten(params)
    prepare = normalisation(predictor)

    def forward(leaves, *images):
        net = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)
        return {OUTPUT: predictor.forward(net, *map(prepare, images)).astype(jnp.float32)}

    batch_dim = jax.export.symbolic_shape(BATCH_NAME)[0] if batch is None else batch
    inputs = tuple(jax.ShapeDtypeStruct((batch_dim, *size, 3), jnp.float32) for _ in range(predictor.views))
    closed, out_shapes = jax.make_jaxpr(forward, return_shape=True)(leaves, *inputs)
    jaxpr_fn, out_tree = jaxpr_as_fun(closed), jax.tree.structure(out_shapes)
    constants = [np.asarray(x) for x in leaves]

    def fn(*images):
        return jax.tree.unflatten(out_tree, jaxpr_fn(*constants, *images))

    name = predictor.kind + (f"_{predictor.mode}" if predictor.mode else "")
    return Graph(fn, inputs, input_names(predictor.views), name, graph_doc(predictor, size, batch_dim))


def write_stablehlo(graph: Graph, path: Path) -> list[Path]:
    """`jax.export` of the graph (batch symbolic where the inputs say so), serialised to `path`."""
    exported = jax.export.export(jax.jit(graph.fn))(*graph.inputs)
    data = exported.serialize()
    with writing(path.parent):
        path.write_bytes(data)
    return [path]


@contextlib.contextmanager
def quiet_converter():
    """jax2onnx 0.12 logs a warning with a traceback for each of its plugins that fails to import (dm_pix on
    this JAX, unused here), prints a `DEBUG:` line per convolution on stdout and uses deprecated JAX names, and
    onnx_ir warns about shape constants it writes without a type: none of it concerns the graph. While
    converting, their loggers show errors only, their deprecation warnings and stdout are dropped; a conversion
    that fails still raises."""
    loggers = [logging.getLogger(name) for name in CONVERTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="jax2onnx")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def skip_optimize_graph(conversion_api):
    """jax2onnx 0.12's closing graph clean-up (`optimize_graph`) looks up a value's consumers by scanning every
    node, so it is quadratic in the graph's size: 14 s of 30 s for a tiny TiO-Depth Mono graph (3.5k nodes),
    520 s of 550 s for Stereo (18k nodes). jax2onnx treats its failure as harmless (the graph is complete
    without it), so it is skipped here and onnx_ir's linear passes (`clean_onnx`) do the clean-up that
    matters; onnxruntime optimises the graph again when it loads it."""
    original = conversion_api.optimize_graph
    conversion_api.optimize_graph = lambda model: model
    try:
        yield
    finally:
        conversion_api.optimize_graph = original


def clean_onnx(model) -> None:
    """Unique names, no dead nodes (nor the Loop-body initialisers that onnxruntime warns about), shared
    common subexpressions, constants as initialisers, one copy of equal initialisers."""
    from onnx_ir.passes import common

    for cleanup in (common.NameFixPass(), common.RemoveUnusedNodesPass(),
                    common.CommonSubexpressionEliminationPass(), common.LiftConstantsToInitializersPass(size_limit=0),
                    common.DeduplicateInitializersPass(), common.RemoveUnusedNodesPass(),
                    common.RemoveUnusedFunctionsPass()):
        cleanup(model)


def write_onnx(graph: Graph, path: Path) -> list[Path]:
    """jax2onnx's conversion of the graph (a symbolic batch becomes the dimension "B"), cleaned up and
    written to `path`, with the weights in `path`.data when they exceed protobuf's 2 GB."""
    try:
        import jax2onnx
        import onnx_ir
        from jax2onnx.converter import conversion_api
    except ImportError as e:
        raise UserError(f"ONNX export needs the 'export' extra (pip install -e '.[export]'): {e}") from None
    with quiet_converter():
        with skip_optimize_graph(conversion_api):
            model = jax2onnx.to_onnx(graph.fn, graph.inputs, model_name=graph.name, opset=ONNX_OPSET,
                                     return_mode="ir", input_names=graph.input_names, output_names=[OUTPUT])
        clean_onnx(model)
        model.doc_string = graph.doc
        weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
        external = path.name + ".data" if weights > ONNX_PROTO_LIMIT else None
        with writing(path.parent):
            onnx_ir.save(model, path, external_data=external)
    return [path] + ([path.parent / external] if external else [])


WRITERS = {"stablehlo": write_stablehlo, "onnx": write_onnx}


def describe(graph: Graph) -> str:
    """One line of what the graph takes and returns, e.g. `image (B, 518, 518, 3) -> depth (B, 518, 518)`."""
    shape = graph.inputs[0].shape
    dims = ", ".join(map(str, shape))
    return f"{', '.join(f'{n} ({dims})' for n in graph.input_names)} -> {OUTPUT} ({', '.join(map(str, shape[:3]))})"


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def parse_batch(text: str) -> int | None:
    """--batch: a positive int, or None for 'dynamic' (argparse `type=`)."""
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a positive batch size or dynamic, got {text!r}")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="DIR_OR_RUN",
                        help="model directory or training run")
    parser.add_argument("--format", choices=FORMATS, required=True, help="graph format")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="graph file to write")
    parser.add_argument("--mode", help="TiO-Depth path: Refine (default), Mono or Stereo")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="network input size, multiples of 14 (default: predict's)")
    parser.add_argument("--batch", type=parse_batch, default=None, metavar="N|dynamic",
                        help="fixed batch size, or dynamic (default)")
    parser.add_argument("--dtype", choices=tuple(DTYPES),
                        help="compute dtype (default: the trained one; ONNX: float32 only)")
    parser.add_argument("--which", default="latest", type=parse_which,
                        help="checkpoint of a training run: latest (default), best, or a step number")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """The export the command line asks for, with a progress line per stage."""
    if args.out.is_dir():
        raise InputError(f"--out {args.out} is a folder; give the file to write")
    cls = predictor_class(args.checkpoint)
    check_request(cls, args.mode, args.format, args.dtype)
    dtype = args.dtype or ("float32" if args.format == "onnx" else None)
    start = time.perf_counter()
    print(f"loading {args.checkpoint}")
    loaded = load(args.checkpoint, kind=cls.kind, which=args.which, dtype=DTYPES[dtype] if dtype else None)
    predictor = cls(loaded.model, mode=args.mode)
    if loaded.image_size is not None:
        predictor.default_size = loaded.image_size
    size = network_size(predictor, args.size)
    mode = f" {predictor.mode}" if predictor.mode else ""
    print(f"tracing {cls.kind}{mode} ({loaded.dtype}) at {size[0]}x{size[1]}, batch "
          f"{BATCH_NAME if args.batch is None else args.batch}")
    graph = inference_graph(loaded.model, predictor, size, args.batch)
    print(f"{'converting to ONNX (jax2onnx)' if args.format == 'onnx' else 'lowering to StableHLO'}: "
          f"{describe(graph)}")
    paths = WRITERS[args.format](graph, args.out)
    sizes = ", ".join(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)" for p in paths)
    print(f"wrote {sizes} in {time.perf_counter() - start:.1f} s")


def main(argv=None) -> int:
    return run_command(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
