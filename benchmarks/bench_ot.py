"""Time the Prompt-OT regularizer per training step: exact OT (POT) vs torch Sinkhorn vs pointwise.

Each call is a forward and a backward of ``prompt_ot_loss`` on random unit features (B, D), joint
modality, as in a training step. Prints ms/call and the ratio to the pointwise loss measured in the
same run. Figures only, no assertions.

    python benchmarks/bench_ot.py [--device cpu|cuda] [--dim 512] [--batch-sizes 4 32 128 512]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from rayot.methods.prompt_ot import prompt_ot_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(
    fn: Callable[[], None], device: torch.device, min_seconds: float, repeats: int
) -> float:
    """Median over ``repeats`` rounds of the mean time per call, each round at least ``min_seconds``."""
    fn()  # warm-up: allocations, lazy initialisation, kernel selection
    _sync(device)
    rounds = []
    for _ in range(repeats):
        n = 0
        start = time.perf_counter()
        while True:
            fn()
            n += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rounds.append(1e3 * elapsed / n)
    return statistics.median(rounds)


def _features(
    g: torch.Generator, b: int, dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """(image, image_ref, text, text_ref), each (b, dim), unit rows; the adapted ones require grad."""
    image_ref, text_ref, noise_v, noise_t = (
        F.normalize(torch.randn(b, dim, generator=g), dim=-1) for _ in range(4)
    )
    image = F.normalize(image_ref + 0.5 * noise_v, dim=-1)
    text = F.normalize(text_ref + 0.5 * noise_t, dim=-1)
    out = [t.to(device=device, dtype=dtype) for t in (image, image_ref, text, text_ref)]
    out[0].requires_grad_(True)
    out[2].requires_grad_(True)
    return tuple(out)


def _step(feats: tuple[torch.Tensor, ...], kwargs: dict) -> None:
    image, image_ref, text, text_ref = feats
    image.grad = text.grad = None
    prompt_ot_loss(image, image_ref, text, text_ref, **kwargs).backward()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32, 128, 512])
    parser.add_argument("--epsilon", type=float, default=0.05, help="Sinkhorn epsilon, units of C")
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--min-seconds", type=float, default=0.2, help="per timing round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)

    settings = {
        "pointwise": dict(regularizer="pointwise"),
        "emd (POT)": dict(solver="emd"),
        f"sinkhorn eps={args.epsilon:g} x{args.n_iters}": dict(
            solver="sinkhorn", epsilon=args.epsilon, n_iters=args.n_iters
        ),
    }
    print(
        f"device={device} dtype={args.dtype} D={args.dim} threads={args.threads}  (forward+backward, ms/call)"
    )
    print(f"{'B':>5}  {'method':<28}{'ms/call':>10}{'x pointwise':>13}")
    for b in args.batch_sizes:
        feats = _features(g, b, args.dim, device, dtype)
        base = None
        for name, kwargs in settings.items():
            ms = _time_ms(partial(_step, feats, kwargs), device, args.min_seconds, args.repeats)
            base = ms if base is None else base
            print(f"{b:>5}  {name:<28}{ms:>10.3f}{ms / base:>13.1f}")


if __name__ == "__main__":
    main()
