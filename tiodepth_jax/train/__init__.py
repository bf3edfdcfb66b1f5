"""Training: the three-stage TiO-Depth schedule, sharded jitted steps, checkpoints and logging
(`python -m tiodepth_jax.train --config configs/<name>.yaml [key.sub=value ...]`)."""
