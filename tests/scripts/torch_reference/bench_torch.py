"""A stand-in for the PyTorch reference's bench_torch.py, for tests/test_benchmarks.py: it takes the
reference's command line and prints one record of made-up timings (1 ms per call and item), without torch."""

import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("--workload", required=True)
parser.add_argument("--size", type=int, nargs=2, default=[518, 518])
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--dtype", default="float32")
parser.add_argument("--iters", type=int, default=10)
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--device", default="cuda")
parser.add_argument("--variant", default=None)
args = parser.parse_args()
seconds = 1e-3 * args.batch
print(json.dumps({"workload": args.workload, "impl": "pytorch", "device": args.device, "batch": args.batch,
                  "size": args.size, "dtype": args.dtype, "median_s": seconds, "mean_s": seconds,
                  "times_s": [seconds] * args.iters, "images_per_s": args.batch / seconds, "peak_mem_bytes": None,
                  "torch": "fake", "threads": 1}))
