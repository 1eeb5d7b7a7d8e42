"""Time a sharded trial's training step and evaluation on 1 and 2 workers (torch.distributed, gloo).

ViT-B/16 with random weights (open_clip, no download), Prompt-OT's reference prompts (depth 12,
4 + 4 tokens), 500 classes, a global batch of 4, exact OT, on the CPU with one thread per worker.
Each worker is a spawned process; the workers share the classes of the text encoder, the images of
the batch and the test set exactly as a sweep's Ray Train workers do (rayot.train.DistributedHooks).

Prints seconds per training step (forward, global loss, backward, gradient sum, SGD step) and per
evaluation of 400 test images (one encoding of the 500 class prompts, then the images), for each
worker count, measured in the same run, and the ratio to one worker. Figures only, no assertions.

    python benchmarks/bench_sharding.py [--classes 500] [--steps 2] [--eval-images 400] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from rayot import config as C
from rayot.data import Item, Task
from rayot.model import load_clip
from rayot.train import DistributedHooks, build_model, evaluate, trial_objective
from rayot.train.features import global_output, reference_text_features


def _write_images(root: Path, n: int, n_cls: int) -> list[Item]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(root / f"{i}.png")
        items.append(Item(f"{i}.png", i % n_cls, f"class {i % n_cls}"))
    return items


def _worker(rank: int, world: int, init: str, args: argparse.Namespace, items: list[Item], root: str,
            out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    device = torch.device("cpu")
    hooks = DistributedHooks(rank, world, device)
    cfg = C.load_config(None, ["method=prompt_ot", "model.name=ViT-B-16", "model.pretrained=null",
                               f"world_size={world}"])
    classnames = [f"class {i}" for i in range(args.classes)]
    torch.manual_seed(0)
    model = build_model(cfg, load_clip("ViT-B-16", None, device=device), classnames)
    params = list(model.trainable_parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    text_ref = reference_text_features(model, classnames, ("a photo of a {}.",), hooks)  # (n_cls, D)
    g = torch.Generator().manual_seed(1)
    b = cfg.optim.batch_size
    images_all = torch.randn(b, 3, 224, 224, generator=g)  # (B, 3, H, W): the global batch
    labels_all = torch.randint(0, args.classes, (b,), generator=g)  # (B,)
    sizes = [b // world] * world
    mine = slice(rank * sizes[0], (rank + 1) * sizes[0])
    model.train()

    def step() -> None:
        labels = hooks.gather(labels_all[mine], sizes)  # (B,)
        out_ = global_output(model, images_all[mine], classnames, sizes, hooks)
        image_ref = hooks.gather(model.frozen_image_features(images_all[mine]), sizes)  # (B, D)
        loss = trial_objective(cfg, model, out_, labels, image_ref, text_ref).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        hooks.sum_gradients(params)
        optimizer.step()

    def timed(fn, repeats: int) -> tuple[float, float]:
        """Wall seconds per call, and the CPU seconds per call of the busiest worker."""
        dist.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            fn()
        spent = torch.tensor([time.perf_counter() - start, time.process_time() - cpu]) / repeats
        dist.all_reduce(spent, op=dist.ReduceOp.MAX)  # the slowest worker sets the pace
        return float(spent[0]), float(spent[1])

    step()  # warm-up
    step_s, step_cpu = timed(step, args.steps)
    task = Task("bench", Path(root), [], [], items, classnames, "a photo of a {}.")

    def evaluation() -> None:
        evaluate(model, task, image_size=224, device=device,
                 precision="fp32", batch_size=50, num_workers=0, hooks=hooks)

    eval_s, eval_cpu = timed(evaluation, 1)
    if rank == 0:  # what one worker encodes: its share of the class prompts, of the batch, of the test set
        torch.save({"step": step_s, "eval": eval_s, "step_cpu": step_cpu, "eval_cpu": eval_cpu,
                    "prompts": len(model.classnames), "images": sizes[0],
                    "test": -(-len(items) // world)}, out)
    dist.destroy_process_group()


def _matmuls(rank: int, barrier, out: str) -> None:
    torch.set_num_threads(1)
    a = torch.randn(1024, 1024)
    barrier.wait()
    start = time.perf_counter()
    for _ in range(40):
        a @ a
    Path(f"{out}.{rank}").write_text(str(time.perf_counter() - start))


def _machine_ceiling(n: int, tmp: str) -> float:
    """How many times one process's matmul throughput ``n`` single-thread processes reach here at
    once: the best speed-up this machine can show (shared or hyper-threaded cores give less than n)."""
    ctx = mp.get_context("spawn")
    seconds = {}
    for k in (1, n):
        mp.spawn(_matmuls, args=(ctx.Barrier(k), f"{tmp}/mm{k}"), nprocs=k, join=True)
        seconds[k] = max(float(Path(f"{tmp}/mm{k}.{r}").read_text()) for r in range(k))
    return n * seconds[1] / seconds[n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (after one warm-up)")
    parser.add_argument("--eval-images", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"ViT-B/16 random weights, Prompt-OT (depth 12), {args.classes} classes, global batch 4, exact OT, "
          f"CPU gloo, 1 thread per worker; {os.cpu_count()} CPUs visible")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        items = _write_images(Path(tmp), args.eval_images, args.classes)
        for n in args.workers:
            out = f"{tmp}/figures{n}.pt"
            t0 = time.perf_counter()
            mp.spawn(_worker, args=(n, f"{tmp}/init{n}", args, items, tmp, out), nprocs=n, join=True)
            figures[n] = torch.load(out)
            print(f"  {n} worker(s) measured in {time.perf_counter() - t0:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f}: other processes share the cores)", flush=True)
        ceilings = {n: _machine_ceiling(n, tmp) for n in args.workers[1:]}
    base = figures[args.workers[0]]
    print(f"{'workers':>8} {'prompts':>8} {'images':>7} {'s/step':>8} {'ratio':>6} {'cpu s':>7} "
          f"{'test imgs':>9} {f's/eval {args.eval_images}':>12} {'ratio':>6} {'cpu s':>7}   (per worker)")
    for n, f in figures.items():
        print(f"{n:>8} {f['prompts']:>8} {f['images']:>7} {f['step']:>8.2f} {base['step'] / f['step']:>5.2f}x "
              f"{f['step_cpu']:>7.2f} {f['test']:>9} {f['eval']:>12.2f} {base['eval'] / f['eval']:>5.2f}x "
              f"{f['eval_cpu']:>7.2f}")
    for n, ceiling in ceilings.items():
        print(f"machine ceiling: {n} single-thread processes of matmuls run {ceiling:.2f}x the throughput "
              "of one here")


if __name__ == "__main__":
    main()
