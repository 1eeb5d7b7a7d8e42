"""Speed of prompted text encoding cut at the last EOT token vs the full context length.

Both runs happen in the same process on the same model and class names, so the ratio is a fair
comparison on a shared machine. Random weights: the timing does not depend on them.

    python benchmarks/bench_text_truncation.py [--models rayot-tiny ViT-B-16] [--n-classes 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import open_clip
import torch

from rayot.model import PromptedCLIP, load_clip


def _median_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(model_name: str, n_classes: int, repeats: int, device: str) -> None:
    torch.manual_seed(0)
    clip = load_clip(model_name, None, device=device)
    layers = len(clip.model.transformer.resblocks)
    names = list(open_clip.IMAGENET_CLASSNAMES[:n_classes])
    m = PromptedCLIP(clip, names, depth_text=min(9, layers), depth_vision=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    used = int(m.text_eot.max()) + 1

    def forward() -> None:
        with torch.no_grad():
            m.encode_text()

    def train_step() -> None:
        m.text_prompts.grad = None
        m.encode_text().sum().backward()

    print(f"{model_name}: {n_classes} classes, tokens {used} of {clip.model.context_length}")
    for label, fn in (("forward", forward), ("forward+backward", train_step)):
        m.truncate_text = False
        full = _median_seconds(fn, repeats, sync)
        m.truncate_text = True
        cut = _median_seconds(fn, repeats, sync)
        print(
            f"  {label:17s} full {full * 1e3:8.1f} ms   truncated {cut * 1e3:8.1f} ms"
            f"   speed-up x{full / cut:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rayot-tiny", "ViT-B-16"])
    parser.add_argument("--n-classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s)")
    for name in args.models:
        bench(name, args.n_classes, args.repeats, args.device)


if __name__ == "__main__":
    main()
