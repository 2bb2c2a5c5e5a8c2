"""GPU workload for the 3:1 check: SHARE batches of matrix multiplies per tick, ticks at
a fixed rate, so two copies with shares 3 and 1 do 3:1 the GPU work whatever else runs
(the rate keeps the GPU below saturation, so neither starves the other).

usage: matmul.py SHARE SECONDS [N=4096] [TICKS_PER_S=20]
Prints one JSON line when done: pid, share, matmuls, seconds.
"""
import json
import os
import sys
import time

import torch


def main():
    share, seconds = int(sys.argv[1]), float(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    torch.cuda.synchronize()
    done, start = 0, time.monotonic()
    next_tick = start
    while time.monotonic() - start < seconds:
        for _ in range(share):
            c = a @ b
            done += 1
        torch.cuda.synchronize()
        next_tick += 1.0 / rate
        time.sleep(max(0.0, next_tick - time.monotonic()))
    del c
    print(json.dumps({"pid": os.getpid(), "share": share, "matmuls": done,
                      "seconds": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    main()
