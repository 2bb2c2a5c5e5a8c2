"""Summarises an agent run (`run --output json` lines) for the GPU 3:1 check.

usage: summarize.py AGENT_JSONL PID_A PID_B
Prints per-process GPU joules, NVML's total for the GPUs over the same intervals, the
idle part, the ratio A:B, and how each interval's GPU energy was split.
"""
import collections
import json
import sys


def main():
    path, pid_a, pid_b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    gpu = collections.Counter()
    launches = collections.Counter()
    total = idle = 0.0
    bases = collections.Counter()
    for line in open(path):
        r = json.loads(line)
        total += r["power"]["gpu_j"]
        idle += r["idle"]["gpu_j"]
        for g in r.get("gpus", []):
            bases[g["basis"]] += 1
        for p in r["processes"]:
            gpu[p["pid"]] += p["gpu_j"]
            launches[p["pid"]] += p.get("gpu_activity", {}).get("launches", 0)
    a, b = gpu[pid_a], gpu[pid_b]
    others = sum(v for k, v in gpu.items() if k not in (pid_a, pid_b))
    print(f"process A (pid {pid_a}, 3 shares): {a:10.1f} J GPU, {launches[pid_a]} launches")
    print(f"process B (pid {pid_b}, 1 share):  {b:10.1f} J GPU, {launches[pid_b]} launches")
    print(f"other processes:               {others:10.1f} J GPU")
    print(f"idle bucket:                   {idle:10.1f} J GPU")
    print(f"NVML total over the run:       {total:10.1f} J GPU "
          f"(A + B + others + idle = {a + b + others + idle:.1f} J)")
    print(f"ratio A:B = {a / b:.3f} (work 3:1)" if b > 0 else "ratio A:B = n/a (B got nothing)")
    print("split basis per interval: " + ", ".join(f"{k} {v}" for k, v in bases.most_common()))


if __name__ == "__main__":
    main()
