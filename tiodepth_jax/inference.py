"""Jitted inference: one small wrapper shared by `predict`, `evaluate` and the trainer's validation.

    forward = Jitted(model, lambda m, x: m(x))      # the model is split once into graphdef / state
    depth = forward(x)                              # one compiled program per input shape
    forward.num_traces                              # how many shapes were compiled
    forward.set_model(new_model)                    # same structure, new parameters: no recompile

`predict_outputs` is the TiO-Depth evaluation forward: depth and disparity of each path, with the §8.3
post-processing of the Mono / Refine paths.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from flax import nnx

from tiodepth_jax import postprocess

DEPTH_KEYS = {"Mono": "mono_depth_0_s", "Stereo": "stereo_depth_0_s", "Refine": "refmono_depth_0_s"}
DISP_KEYS = {"Mono": "mono_disp_0_s", "Stereo": "stereo_disp_0_s", "Refine": "refmono_disp_0_s"}
POST_PROCESSED_MODES = ("Mono", "Refine")


class Jitted:
    """`fn(model, *inputs)` jitted over the model's state (see the module docstring)."""

    def __init__(self, model: nnx.Module, fn: Callable):
        graphdef, self.state = nnx.split(model)
        self.fn = fn
        self.num_traces = 0
        self._forward = jax.jit(functools.partial(self._apply, graphdef))

    def _apply(self, graphdef, state, *inputs):
        self.num_traces += 1  # runs once per trace, i.e. once per new input shape
        return self.fn(nnx.merge(graphdef, state), *inputs)

    def set_model(self, model: nnx.Module) -> None:
        """Use `model`'s state from now on (a model of the same structure, e.g. after training steps)."""
        self.state = nnx.state(model)

    def __call__(self, *inputs):
        return self._forward(self.state, *inputs)

    def lower(self, *inputs):
        """The forward lowered for these shapes; `.compile()` fills the cache that calls use."""
        return self._forward.lower(self.state, *inputs)


def predict_outputs(model, inputs: dict, modes, post_process: str = "none") -> dict:
    """Depth and disparity of each path: {DEPTH_KEYS[m], DISP_KEYS[m]: (B, H, W, 1)} (traceable by jax.jit).

    inputs: color_s, color_o (B, H, W, 3) in [0, 1] and direct (B,). modes run in the order given. With a
    post-processing method the Mono/Refine paths among ``modes`` run a second time on
    `postprocess.second_pass_image` of color_s and their depths are replaced by the post-processed ones
    (disparities stay raw, as in the original).
    """
    out = model.inference(inputs, modes)
    result = {k: out[k] for m in modes for k in (DEPTH_KEYS[m], DISP_KEYS[m])}
    pp_modes = [m for m in modes if m in POST_PROCESSED_MODES]
    if post_process != "none":
        if not pp_modes:
            raise ValueError(f"post-processing applies to the Mono and Refine paths only, not to {list(modes)}")
        second = model.inference({"color_s": postprocess.second_pass_image(post_process, inputs["color_s"])},
                                 pp_modes)
        for m in pp_modes:
            result[DEPTH_KEYS[m]] = postprocess.post_process(post_process, result[DEPTH_KEYS[m]],
                                                             second[DEPTH_KEYS[m]])
    return result
