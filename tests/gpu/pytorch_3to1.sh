#!/usr/bin/env bash
# GPU check on an NVIDIA host: two PyTorch processes doing 3:1 matrix-multiply work for
# SECONDS (default 20) while the agent runs; prints per-process GPU joules from the
# agent, NVML's total for the GPU and the ratio. Time-limited as a whole (LIMIT, default
# 120 s). Needs root, the agent built (`cargo xtask build --release` or ENERGY_AGENT_BIN)
# and a Python with PyTorch for CUDA (PYTHON, default python3).
#
# usage: sudo tests/gpu/pytorch_3to1.sh [SECONDS]
# exit: 0 done, 2 no GPU / no PyTorch with CUDA here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-20}
limit=${LIMIT:-120}
python=${PYTHON:-python3}
agent=${ENERGY_AGENT_BIN:-$root/target/release/energy-agent}
[ -x "$agent" ] || agent=$root/target/debug/energy-agent
[ -x "$agent" ] || { echo "no energy-agent built (cargo xtask build --release)" >&2; exit 1; }
if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no PyTorch with CUDA here ($python): nothing to check" >&2
    exit 2
fi
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

echo "== energy-agent check (GPU lines)"
"$agent" check | grep -Ei 'libcuda|ioctl|nvml|bpf load' || true
echo "== running two PyTorch processes, shares 3 and 1, for ${seconds}s (limit ${limit}s)"
timeout "$limit" "$agent" run --output json --interval 1s >"$out/agent.jsonl" 2>"$out/agent.err" &
agent_pid=$!
sleep 3
timeout "$limit" "$python" "$here/matmul.py" 3 "$seconds" >"$out/a.json" &
a=$!
timeout "$limit" "$python" "$here/matmul.py" 1 "$seconds" >"$out/b.json" &
b=$!
wait "$a" "$b"
sleep 2
kill -INT "$agent_pid"
wait "$agent_pid" || true
cat "$out/a.json" "$out/b.json"
pid() { "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$1"; }
"$python" "$here/summarize.py" "$out/agent.jsonl" "$(pid "$out/a.json")" "$(pid "$out/b.json")"
tail -n 5 "$out/agent.err" >&2 || true
