"""Run one training iteration (all three groups) of a tiny config on a (data=N) mesh; print losses and a
parameter checksum as JSON. Used by tests/test_train.py in a subprocess with N simulated CPU devices."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tiodepth_jax.config import load_config
from tiodepth_jax.train.loop import Trainer, load_batch, epoch_order, to_global
from tiodepth_jax.train.sharding import make_mesh
from tiodepth_jax.train.step import lr_factors

config, workdir, n_devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(config, [f"workdir={workdir}", *sys.argv[4:]])
trainer = Trainer(cfg, make_mesh(n_devices, 1, devices=jax.devices()[:n_devices]))
def one_step(epoch: int) -> dict:
    """One iteration of `epoch`'s active groups from the initial state (the state is copied, not donated)."""
    active = tuple(g.name for g in trainer.groups if epoch >= g.st_epoch)
    batch = load_batch(cfg, trainer.train_ds, epoch_order(cfg, len(trainer.train_ds), epoch), epoch, 0)
    state0 = jax.tree.map(jnp.copy, trainer.state)
    state, metrics = trainer.step_fn(active)(state0, trainer.vgg_params, to_global(batch, trainer.batch_sharding),
                                             lr_factors(trainer.groups, epoch))
    flat = lambda s: {".".join(map(str, k)): np.asarray(v).astype(np.float64).ravel()[:64].tolist()  # noqa: E731
                      for k, v in nnx.to_flat_state(s)}
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "params": flat(state["params"]),
            "stats": flat(state["batch_stats"])}


last = max(g.st_epoch for g in trainer.groups)
print(json.dumps({"devices": len(jax.devices()), "mono": one_step(1), "all": one_step(last)}))
