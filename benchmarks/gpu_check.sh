#!/usr/bin/env bash
# Check and time rayot's trial packing on a CUDA machine, in under 10 minutes in all:
#   1. the GPU (nvidia-smi), torch and its CUDA;
#   2. correctness on the GPU: the prompt gradients of K members packed (one fused computation)
#      against each member alone, in fp32 (fails above a relative 1e-3), and a packed step under
#      bf16 autocast (fails unless its losses and gradients are finite, prompts still float32);
#   3. benchmarks/bench_packing.py in bf16 for K = 1 ... 32, with FLOPs and MFU;
#   4. the fp32 figures for K = 1 8 32, if the time left allows.
# Each section runs under `timeout`; a failed section is reported and the next one still runs;
# the exit status is 1 if any failed. Installs nothing: run it in the environment where rayot is
# installed.
#
#   bash benchmarks/gpu_check.sh        # on the CUDA machine
#   bash benchmarks/gpu_check.sh cpu    # the same sections on the CPU at tiny sizes (checks the script)
set -u

DEVICE="${1:-cuda}"
cd "$(dirname "$0")/.." || exit 1

if [ "$DEVICE" = cuda ]; then
    BUDGET=570          # seconds for the whole script, 30 s short of 10 minutes
    T_ENV=60 T_CHECK=150 T_BF16=300
    CHECK_K=3 CHECK_CLASSES=50
    BF16_ARGS=(--k 1 2 4 8 16 32 --steps 10 --flops)
    FP32_ARGS=(--k 1 8 32 --steps 10)
    MIN_FP32=90         # skip the fp32 figures with less time than this left
else
    BUDGET=3000
    T_ENV=60 T_CHECK=900 T_BF16=900
    CHECK_K=2 CHECK_CLASSES=5
    BF16_ARGS=(--k 1 2 --steps 1 --classes 5 --flops)
    FP32_ARGS=(--k 1 2 --steps 1 --classes 5)
    MIN_FP32=60
fi

FAILED=()

section() {
    echo
    echo "=== $* ($(date +%H:%M:%S), ${SECONDS} s in) ==="
}

# run NAME SECONDS COMMAND...: COMMAND under a timeout, its failure recorded under NAME
run() {
    local name="$1" limit="$2" rc
    shift 2
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && echo "!!! $name: timed out after $limit s" || echo "!!! $name: exit status $rc"
        FAILED+=("$name")
    fi
}

section "1. machine: GPU, torch, CUDA"
if [ "$DEVICE" = cuda ]; then
    run nvidia-smi 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.max.sm,power.limit,mig.mode.current --format=csv
    run nvidia-smi-summary 30 nvidia-smi
else
    echo "(cpu: nvidia-smi skipped)"
fi
run versions "$T_ENV" python - "$DEVICE" <<'EOF'
import os
import sys

import open_clip
import torch

import rayot

print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}), open_clip {open_clip.__version__}, rayot {rayot.__version__}, "
      f"{os.cpu_count()} CPUs")
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    props = torch.cuda.get_device_properties(0)
    print(f"device 0: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
          f"{props.multi_processor_count} SMs, bf16 supported: {torch.cuda.is_bf16_supported()}")
    print(f"tf32: matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}")
EOF

section "2. correctness: K=$CHECK_K packed vs each member alone ($DEVICE; fp32 gradients, bf16 finite)"
CHECK_DEVICE="$DEVICE" CHECK_K="$CHECK_K" CHECK_CLASSES="$CHECK_CLASSES" run correctness "$T_CHECK" python - <<'EOF'
import math
import os
import sys
import time

import torch

from rayot import config as C
from rayot.model import load_clip, packed
from rayot.train import TrialHooks, init_model, trial_objective
from rayot.train.features import pack_outputs, reference_text_features

device = torch.device(os.environ["CHECK_DEVICE"])
K, n_cls, B = int(os.environ["CHECK_K"]), int(os.environ["CHECK_CLASSES"]), 4
REL_TOL = 1e-3  # measured on CPU fp32 (K=2, 50 classes): 3e-7
hooks = TrialHooks()
t0 = time.perf_counter()
torch.manual_seed(0)
clip = load_clip("ViT-B-16", None, device=device)
classnames = [f"class {i}" for i in range(n_cls)]
cfgs = [C.load_config(None, ["method=prompt_ot", "model.name=ViT-B-16", "model.pretrained=null", f"seed={i + 1}",
                             f"prompt_ot.lambda_ot={(10.0, 1.0, 0.1)[i % 3]}"]) for i in range(K)]
models = [init_model(cfg, clip, classnames, device).train() for cfg in cfgs]
assert packed.fused(models), "the members do not run as one computation"
g = torch.Generator().manual_seed(0)
images = [torch.randn(B, 3, clip.image_size, clip.image_size, generator=g).to(device) for _ in range(K)]
labels = [torch.randint(0, n_cls, (B,), generator=g).to(device) for _ in range(K)]
text_ref = reference_text_features(models[0], classnames, ("a photo of a {}.",), hooks)  # (n_cls, D)


def losses(idx, amp):
    """The losses of members ``idx``, run together (one member: its own forward)."""
    ms = [models[i] for i in idx]
    xs = [images[i] for i in idx]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outs = pack_outputs(ms, xs, classnames, [[B]] * len(idx), hooks)
        refs = packed.frozen_images(ms, xs)
        out = []
        for i, o, r in zip(idx, outs, refs, strict=True):
            out.append(trial_objective(cfgs[i], models[i], o, labels[i], r, text_ref).loss)
    return out


def grads(idx, amp):
    """(losses, each member's prompt gradients) of members ``idx`` run together."""
    ls = losses(idx, amp)
    params = [list(models[i].trainable_parameters()) for i in idx]
    flat = torch.autograd.grad(torch.stack(ls).sum(), [p for ps in params for p in ps])
    out, at = [], 0
    for ps in params:
        out.append(flat[at:at + len(ps)])
        at += len(ps)
    return [x.item() for x in ls], out


def rel_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True)) / max(x.abs().max().item() for x in b)


ok = True
every = list(range(K))
alone = [grads([i], None) for i in every]
loss_p, grad_p = grads(every, None)
for i in every:
    (loss_a,), (grad_a,) = alone[i]
    d = max((x - y).abs().max().item() for x, y in zip(grad_p[i], grad_a, strict=True))
    r = rel_diff(grad_p[i], grad_a)
    print(f"fp32 member {i}: loss alone {loss_a:.6f} packed {loss_p[i]:.6f}; prompt gradients "
          f"max |diff| {d:.2e}, relative {r:.2e}")
    ok &= r < REL_TOL and math.isclose(loss_a, loss_p[i], rel_tol=1e-4)
print(f"fp32 packed vs alone: {'OK' if ok else 'MISMATCH'} (relative tolerance {REL_TOL:g})")

loss_b, grad_b = grads(every, torch.bfloat16)
alone_b = [grads([i], torch.bfloat16) for i in every]
finite = all(math.isfinite(x) for x in loss_b) and all(bool(t.isfinite().all()) for gs in grad_b for t in gs)
float32 = all(p.dtype == torch.float32 for m in models for p in m.trainable_parameters())
for i in every:
    print(f"bf16 member {i}: loss packed {loss_b[i]:.4f} (alone {alone_b[i][0][0]:.4f}, fp32 {loss_p[i]:.4f}); "
          f"prompt gradients relative diff to bf16 alone {rel_diff(grad_b[i], alone_b[i][1][0]):.2e}, "
          f"to fp32 {rel_diff(grad_b[i], grad_p[i]):.2e}")
print(f"bf16 autocast packed step: losses and gradients finite: {finite}; prompts float32: {float32}")
ok &= finite and float32
print(f"{time.perf_counter() - t0:.0f} s")
sys.exit(0 if ok else 1)
EOF

section "3. bench_packing.py, bf16, $DEVICE"
run bench-bf16 "$T_BF16" python benchmarks/bench_packing.py --device "$DEVICE" --precision bf16 "${BF16_ARGS[@]}"

LEFT=$((BUDGET - SECONDS))
if [ "$LEFT" -ge "$MIN_FP32" ]; then
    section "4. bench_packing.py, fp32, $DEVICE (${LEFT} s left)"
    run bench-fp32 "$LEFT" python benchmarks/bench_packing.py --device "$DEVICE" --precision fp32 "${FP32_ARGS[@]}"
else
    section "4. fp32 figures skipped: ${LEFT} s left of ${BUDGET} s"
fi

echo
if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "=== all sections passed in ${SECONDS} s ==="
else
    echo "=== FAILED: ${FAILED[*]} (in ${SECONDS} s) ==="
    exit 1
fi
