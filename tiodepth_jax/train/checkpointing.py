"""Train-state checkpoints with orbax's CheckpointManager (jax_stack.md §4).

A checkpoint holds the whole train state (parameters, BatchNorm statistics, the three Adam states) as
orbax arrays and, as JSON, where the run is: epoch, global step, data-iterator position, RNG seed and the
resolved config. Saves are asynchronous and atomic (a crash mid-save leaves the previous checkpoint);
the last N are kept, plus the best by the validation score (`checkpoint.BEST_KEY`, lower is better) when
asked. Restoring takes the shardings of the current mesh, so a checkpoint written on one mesh restores on
another. `tiodepth_jax.checkpoint.load` reads a model back from these checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from tiodepth_jax.checkpoint import RUN_ITEMS, best_score


class TrainCheckpoints:
    def __init__(self, directory: str | Path, *, keep: int = 2, keep_best: bool = False, async_save: bool = True,
                 config: dict | None = None):
        policies = [pp.LatestN(keep)]
        if keep_best:
            policies.append(pp.BestN(get_metric_fn=best_score, reverse=True, n=1,
                                     keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            # best_fn makes orbax write each checkpoint's metrics to disk (without it they live only in this
            # process, and a resumed run's BestN policy would see none)
            options=ocp.CheckpointManagerOptions(preservation_policy=pp.AnyPreservationPolicy(policies),
                                                 best_fn=best_score, best_mode="min",
                                                 enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True),
            item_names=RUN_ITEMS,
            metadata={"config": config or {}})

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Start writing `state` and `meta` (epoch, iterator position, ...) for `step` (asynchronous)."""
        # a checkpoint without the score ranks last (`best_score` +inf): kept only as one of the last N
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
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

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
