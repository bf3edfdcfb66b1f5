"""python -m tiodepth_jax.train --config configs/<name>.yaml [key=value ...] [--resume]

Trains TiO-Depth with the 3-stage schedule of the config (see configs/tiodepth_dinov2b.yaml for every key).
`key.sub=value` arguments override config entries; `--resume` continues the run in the config's workdir
from its newest checkpoint. Several processes (hosts) join through jax.distributed with the `mesh.*` keys
(see tiodepth_jax.train.distributed).
"""

from __future__ import annotations

import argparse
import sys

import jax

from tiodepth_jax.config import load_config
from tiodepth_jax.errors import run_command, setup_logging
from tiodepth_jax.train.distributed import initialize


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tiodepth_jax.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the workdir")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=2e-4 batch_size=4 (anywhere)")
    return ap.parse_intermixed_args(argv)


def train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    initialize(cfg.mesh)
    setup_logging(jax.process_index())
    from tiodepth_jax.train.loop import Trainer  # after distributed initialisation

    trainer = Trainer(cfg)
    if jax.process_index() == 0:
        (trainer.workdir / "config.yaml").write_text(trainer.cfg.to_yaml())  # with 'auto' values resolved
    trainer.run(resume=args.resume)
    return 128 + trainer.stopped_by if trainer.stopped_by else 0  # 143 after SIGTERM, 130 after SIGINT


def main(argv=None) -> int:
    return run_command(lambda: train(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
