"""Run one training iteration (Mono alone, then all three groups) of a tiny config on each given mesh
(`DATAxFSDP`, e.g. 4x1 2x2); print the losses, the first parameter values and the number of parameters split
over 'fsdp' as JSON, one line per mesh. Used by tests/test_train.py in subprocesses with simulated CPU devices."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tiodepth_jax.config import load_config
from tiodepth_jax.train.loop import Trainer, batches, to_global
from tiodepth_jax.train.optim import active_groups, lr_factors
from tiodepth_jax.train.sharding import make_mesh

config, workdir, meshes = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
cfg = load_config(config, [f"workdir={workdir}", *sys.argv[4:]])


def one_step(trainer, epoch: int) -> dict:
    """One iteration of `epoch`'s active groups from the initial state (the state is copied, not donated)."""
    active = active_groups(trainer.groups, epoch)
    batch = next(iter(batches(cfg, trainer.train_ds, epoch)))
    state0 = jax.tree.map(jnp.copy, trainer.state)
    state, metrics = trainer.step_fn(active)(state0, trainer.vgg_params, to_global(batch, trainer.batch_sharding),
                                             lr_factors(trainer.groups, epoch))
    flat = lambda s: {".".join(map(str, k)): np.asarray(v).astype(np.float64).ravel()[:64].tolist()  # noqa: E731
                      for k, v in nnx.to_flat_state(s)}
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "params": flat(state["params"]),
            "stats": flat(state["batch_stats"])}


for mesh in meshes:
    data, fsdp = map(int, mesh.split("x"))
    trainer = Trainer(cfg, make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp]))
    split = sum("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(trainer.state["params"]))
    last = max(g.st_epoch for _, g in trainer.groups)
    print(json.dumps({"mesh": mesh, "devices": data * fsdp, "fsdp_split_params": split, "mono": one_step(trainer, 1),
                      "all": one_step(trainer, last)}))
