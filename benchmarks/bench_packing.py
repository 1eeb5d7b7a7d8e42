"""Time K trials trained as one pack (one fused step over one frozen CLIP) against the same K
trials each taking its own step.

ViT-B/16 with random weights (open_clip, no download), Prompt-OT's reference prompts (depth 12,
4 + 4 tokens), 50 classes, a batch of 4 per member, exact OT; the members differ in seed (initial
prompts, images, labels) and λ. For each K, in the same run and alternating step by step:

  separate  each member alone: ``pack_outputs([m])``, its frozen image features, its loss,
            backward, its SGD step (K trials run one after another, or K trials in K processes
            that take turns on one device);
  packed    ``pack_outputs`` over the K members (one image-encoder call with per-sample deep
            prompts, one text-encoder call), one ``packed.frozen_images`` call, each member's loss
            on its own rows, one backward of the summed losses, each member's SGD step: the step of
            ``rayot.train.loop.train_pack``.

Prints seconds per member-step of each (a round of separate steps or one packed step, divided by
K) and the speed-up separate / packed; K = 1 runs the same step twice (a ratio near 1 is the
noise). On CUDA, also the peak memory of the packed step; on the CPU, the process's CPU seconds too (less
noisy than wall seconds on a shared machine). With ``--flops``, the FLOPs of one step of each kind
counted by ``torch.utils.flop_counter`` (convolution, matmuls and, on CUDA, the attention kernels;
the dtype ignored; on the CPU the attention products of ``scaled_dot_product_attention`` are not
counted, a few per cent), the throughput they give and, on CUDA, the MFU against ``--peak-tflops``.
Figures only, no assertions.

    python benchmarks/bench_packing.py [--k 1 2 4 8] [--classes 50] [--steps 2] [--device cpu|cuda]
        [--precision fp32|bf16] [--threads N] [--solver emd|sinkhorn] [--flops [--peak-tflops 989]]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from rayot import config as C
from rayot.model import LoadedCLIP, load_clip, packed
from rayot.model.prompts import PromptOutput
from rayot.train import TrialHooks, autocast_dtype, init_model, trial_objective
from rayot.train.features import pack_outputs, reference_text_features

#: the members' λ, in turn: a sweep over λ is the typical pack
LAMBDAS = (10.0, 1.0, 0.1)
HOOKS = TrialHooks()  # one process
TEMPLATES = ("a photo of a {}.",)


@dataclass
class Member:
    """One trial of the pack: its configuration, prompt module, optimiser and fixed batch."""

    cfg: C.TrialConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    images: Tensor  # (B, 3, H, W)
    labels: Tensor  # (B,)

    def loss(self, out: PromptOutput, image_ref: Tensor, text_ref: Tensor) -> Tensor:
        """The member's total loss on its batch, as a trial's (rayot.train.loop.Member.loss)."""
        return trial_objective(self.cfg, self.model, out, self.labels, image_ref, text_ref).loss


def build_members(n: int, clip: LoadedCLIP, classnames: list[str], args: argparse.Namespace,
                  device: torch.device) -> list[Member]:
    members = []
    for i in range(n):
        cfg = C.load_config(None, ["method=prompt_ot", "model.name=ViT-B-16", "model.pretrained=null",
                                   f"seed={i + 1}", f"prompt_ot.lambda_ot={LAMBDAS[i % len(LAMBDAS)]}",
                                   f"prompt_ot.solver={args.solver}", f"precision={args.precision}",
                                   f"optim.batch_size={args.batch}"])
        model = init_model(cfg, clip, classnames, device)  # initial prompts from the seed, as a trial's
        model.train()
        o = cfg.optim
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=o.lr, momentum=o.momentum,
                                    weight_decay=o.weight_decay)
        g = torch.Generator().manual_seed(cfg.seed)
        size = clip.image_size
        images = torch.randn(o.batch_size, 3, size, size, generator=g).to(device)  # (B, 3, H, W)
        labels = torch.randint(0, len(classnames), (o.batch_size,), generator=g).to(device)  # (B,)
        members.append(Member(cfg, model, optimizer, images, labels))
    return members


def separate_steps(members: list[Member], classnames: list[str], text_ref: Tensor,
                   amp: torch.dtype | None) -> None:
    """One training step of each member alone."""
    for m in members:
        device = m.images.device
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = pack_outputs([m.model], [m.images], classnames, [[len(m.images)]], HOOKS)[0]
            image_ref = packed.frozen_images([m.model], [m.images])[0]  # (B, D)
            loss = m.loss(out, image_ref, text_ref)
        m.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        m.optimizer.step()


def packed_step(members: list[Member], classnames: list[str], text_ref: Tensor,
                amp: torch.dtype | None) -> None:
    """One training step of the whole pack, as ``rayot.train.loop.train_pack`` takes it."""
    models = [m.model for m in members]
    images = [m.images for m in members]
    device = images[0].device
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outs = pack_outputs(models, images, classnames, [[len(x)] for x in images], HOOKS)
        refs = packed.frozen_images(models, images)  # each (B, D)
        losses = [m.loss(out, ref, text_ref) for m, out, ref in zip(members, outs, refs, strict=True)]
    for m in members:
        m.optimizer.zero_grad(set_to_none=True)
    torch.stack(losses).sum().backward()  # each member's loss reaches its own prompts only
    for m in members:
        m.optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall seconds of one call, the device's queue drained before and after, and the CPU
    seconds of this process (all its threads) meanwhile."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def count_flops(fn: Callable[[], None]) -> int:
    """The FLOPs ``torch.utils.flop_counter`` counts in one call of ``fn``. The fused kernel of
    ``nn.MultiheadAttention``'s inference fast path (the frozen features in fp32) is invisible to
    the counter, so it is turned off meanwhile: the same arithmetic, counted."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="pack sizes")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4, help="images per member and step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps of each kind (after one warm-up)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast as rayot.train does; the prompts stay float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--solver", choices=("emd", "sinkhorn"), default="emd",
                        help="the OT solver (emd: exact, on the host, as the reference)")
    parser.add_argument("--flops", action="store_true",
                        help="count the FLOPs of one step of each kind and print the throughput (and MFU on CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's dense bf16 peak in TFLOP/s, for the MFU (default: 989, H100/H200 SXM)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = autocast_dtype(args.precision)
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"ViT-B/16 random weights, Prompt-OT (depth 12, 4 + 4 tokens), {args.classes} classes, "
          f"batch {args.batch} per member, {args.solver} OT, λ in turn {LAMBDAS}; {where}, {args.precision}"
          f"{' autocast (prompts float32)' if amp else ''}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs visible, torch {torch.__version__}", flush=True)

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", None, device=device)
    classnames = [f"class {i}" for i in range(args.classes)]
    members = build_members(max(args.k), clip, classnames, args, device)
    text_ref = reference_text_features(members[0].model, classnames, TEMPLATES, HOOKS)  # (n_cls, D)

    head = f"{'K':>3} {'images':>6} {'texts':>6} {'s/member-step sep':>17} {'packed':>8} {'speed-up':>8}"
    if cuda:
        head += f" {'peak GiB':>8}"
    else:  # on a shared machine CPU seconds vary less than wall seconds
        head += f" {'cpu s sep':>9} {'packed':>7} {'ratio':>6}"
    if args.flops:
        head += f" {'GFLOP/member-step sep':>21} {'packed':>7} {'TFLOP/s sep':>11} {'packed':>7}"
        if cuda:
            head += f" {'MFU sep':>7} {'packed':>7}"
    print(head, flush=True)
    for k in args.k:
        pack = members[:k]

        def separate(pack=pack) -> None:
            separate_steps(pack, classnames, text_ref, amp)

        def fused(pack=pack) -> None:
            packed_step(pack, classnames, text_ref, amp)

        separate()  # warm-up: tokenising the classes, allocator, kernels
        fused()
        spent = {"sep": [0.0, 0.0], "packed": [0.0, 0.0]}  # wall, cpu seconds
        peak = 0
        for _ in range(args.steps):  # alternating: a change of load on the machine hits both
            for kind, fn in (("sep", separate), ("packed", fused)):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                wall, cpu = timed(fn, device)
                spent[kind][0] += wall / (args.steps * k)  # per member-step
                spent[kind][1] += cpu / (args.steps * k)
            if cuda:
                peak = max(peak, torch.cuda.max_memory_allocated(device))  # of the packed step
        (sep, sep_cpu), (pk, pk_cpu) = spent["sep"], spent["packed"]
        line = (f"{k:>3} {k * args.batch:>6} {k * args.classes:>6} {sep:>17.3f} {pk:>8.3f} "
                f"{sep / pk:>7.2f}x")
        if cuda:
            line += f" {peak / 2**30:>8.2f}"
        else:
            line += f" {sep_cpu:>9.3f} {pk_cpu:>7.3f} {sep_cpu / pk_cpu:>5.2f}x"
        if args.flops:
            f_sep, f_pk = count_flops(separate) / k, count_flops(fused) / k  # per member-step
            t_sep, t_pk = f_sep / sep / 1e12, f_pk / pk / 1e12
            line += f" {f_sep / 1e9:>21.0f} {f_pk / 1e9:>7.0f} {t_sep:>11.2f} {t_pk:>7.2f}"
            if cuda:
                line += f" {t_sep / args.peak_tflops:>7.1%} {t_pk / args.peak_tflops:>7.1%}"
        print(line, flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share the cores)")
    if args.flops and cuda:
        print(f"MFU against {args.peak_tflops:g} TFLOP/s (--peak-tflops, dense bf16)"
              f"{'; an fp32 run is measured against the same bf16 peak' if amp is None else ''}")


if __name__ == "__main__":
    main()
