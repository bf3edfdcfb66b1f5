"""Train-state checkpoints with orbax's CheckpointManager (jax_stack.md §4).

A checkpoint holds the whole train state (parameters, BatchNorm statistics, the three Adam states) as
orbax arrays and, as JSON, where the run is: epoch, global step, data-iterator position, RNG seed and the
resolved config. Saves are asynchronous and atomic (a crash mid-save leaves the previous checkpoint);
the last N are kept, plus the best by a validation metric when asked. Restoring takes the shardings of
the current mesh, so a checkpoint written on one mesh restores on another.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class TrainCheckpoints:
    def __init__(self, directory: str | Path, *, keep: int = 2, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True, config: dict | None = None):
        policies = [pp.LatestN(keep)]
        if best_metric:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(preservation_policy=pp.AnyPreservationPolicy(policies),
                                                 enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True),
            item_names=("state", "meta"),
            metadata={"config": config or {}})
        self.best_metric = best_metric

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Start writing `state` and `meta` (epoch, iterator position, ...) for `step` (asynchronous)."""
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        if self.best_metric and self.best_metric not in metrics:
            metrics = None  # a checkpoint without the metric is kept only as one of the last N
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), metrics=metrics)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of `step` (default: the latest) onto the shardings carried by `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                      meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
