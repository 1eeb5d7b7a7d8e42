"""Time one training step of the prompt learner: no regulariser (IVLP) against point-wise,
exact OT (POT) and Sinkhorn regularisers, on a tiny model and on ViT-B/16 (random weights).

Prints milliseconds per step and the ratio to the IVLP step measured in the same run:
the cost of the regulariser inside a real step (frozen features + plan + loss), not alone.

    python benchmarks/bench_train_step.py [--device cuda] [--classes 50] [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from rayot.methods.base import cross_entropy
from rayot.methods.prompt_ot import prompt_ot_loss
from rayot.model import PromptedCLIP, load_clip

VARIANTS = {
    "ivlp (λ=0)": None,
    "pointwise": {"regularizer": "pointwise"},
    "prompt-ot emd": {"regularizer": "ot", "solver": "emd"},
    "prompt-ot sinkhorn": {"regularizer": "ot", "solver": "sinkhorn", "epsilon": 0.05, "n_iters": 100},
}


def step_ms(model: PromptedCLIP, text_ref: torch.Tensor, images, labels, reg_kwargs, steps, amp):
    params = list(model.trainable_parameters())
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    device = images.device

    def one() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(images)
            if reg_kwargs is None:
                reg = torch.zeros((), device=device)
            else:
                with torch.no_grad():
                    image_ref = model.frozen_image_features(images)
                reg = prompt_ot_loss(out.image.float(), image_ref.float(), out.text[labels].float(),
                                     text_ref[labels], **reg_kwargs)
        loss = cross_entropy(out.logits, labels) + (10.0 if reg_kwargs else 0.0) * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--models", default="rayot-tiny,ViT-B-16")
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    for name in args.models.split(","):
        clip = load_clip(name, None, device=device)
        depth = min(12, len(clip.model.transformer.resblocks), len(clip.model.visual.transformer.resblocks))
        classes = [f"class number {i}" for i in range(args.classes)]
        model = PromptedCLIP(clip, classes, depth_text=depth, depth_vision=depth).to(device)
        text_ref = model.frozen_text_features(classes).float()
        size = clip.image_size
        images = torch.randn(args.batch, 3, size, size, device=device)
        labels = torch.randint(0, args.classes, (args.batch,), device=device)
        print(f"\n{name} ({size}px, depth {depth}, {args.classes} classes, batch {args.batch}, "
              f"{args.precision}, {device})")
        base = None
        for label, kwargs in VARIANTS.items():
            ms = step_ms(model, text_ref, images, labels, kwargs, args.steps, amp)
            base = base or ms
            print(f"  {label:<20} {ms:9.1f} ms/step   ×{ms / base:.2f}")


if __name__ == "__main__":
    main()
