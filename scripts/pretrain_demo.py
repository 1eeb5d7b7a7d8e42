"""Pre-train the demo world's tiny CLIP from scratch on captioned synthetic images.

    python scripts/pretrain_demo.py                      # writes rayot/assets/demo-clip.pt

The model is open_clip's ``rayot-demo`` (rayot/model/configs/rayot-demo.json). Every step draws a
fresh batch of pre-training images of every class (rayot.data.synth.pretrain_batch: plain
backgrounds, a stream no benchmark split uses) with captions such as "a photo of a red circle.",
and minimises a symmetric InfoNCE loss in which all captions of the image's class are positives
(a batch holds many images of each class, so the usual one-positive loss would push apart
matching pairs). Deterministic for a seed and a thread count: seeded NumPy and torch generators,
deterministic algorithms, fixed intra-op threads.

At the end it rounds the weights to float16, prints the zero-shot accuracy ("a photo of a {}.")
of those weights on freshly rendered benchmark test images, base and novel halves scored
separately as in docs/protocol.md §3, and saves the float16 state dict (3.4 MiB).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from rayot.data import synth

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "rayot" / "model" / "configs"
MODEL_NAME = "rayot-demo"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float32 (N, 3, H, W), as the test transform does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def multi_positive_nce(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                       scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over (B, D) normalised features; pairs of the same class are positives."""
    logits = scale * image @ text.T  # (B, B)
    positive = labels[:, None] == labels[None, :]  # (B, B)
    pos_logits = logits.masked_fill(~positive, float("-inf"))
    i2t = torch.logsumexp(logits, 1) - torch.logsumexp(pos_logits, 1)
    t2i = torch.logsumexp(logits, 0) - torch.logsumexp(pos_logits, 0)
    return (i2t.mean() + t2i.mean()) / 2


@torch.no_grad()
def zero_shot(model: torch.nn.Module, tokenizer, images: np.ndarray, labels: np.ndarray,
              classnames: list[str], template: str = "a photo of a {}.") -> float:
    """Top-1 accuracy (%) of ``images`` (N, H, W, 3) over ``classnames`` (labels index them)."""
    text = model.encode_text(tokenizer([template.format(c) for c in classnames]), normalize=True)
    correct = 0
    for start in range(0, len(images), 256):
        feats = model.encode_image(to_tensor(images[start:start + 256]), normalize=True)
        pred = (feats @ text.T).argmax(-1).numpy()
        correct += int((pred == labels[start:start + 256]).sum())
    return 100.0 * correct / len(images)


def evaluate(model: torch.nn.Module, tokenizer, world: synth.World, seed: int,
             per_class: int) -> dict[str, float]:
    """Zero-shot accuracy on benchmark-style test images (base, novel) and pre-training-style ones."""
    images, labels = synth.render_split("test", seed, per_class, world=world)
    names, nb = world.classnames, world.n_base
    base, novel = labels < nb, labels >= nb
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    plain_labels = np.repeat(np.arange(world.n_classes), per_class)
    plain = synth.render(plain_labels, rng, world=world, style=synth.PRETRAIN_STYLE)
    return {
        "base": zero_shot(model, tokenizer, images[base], labels[base], names[:nb]),
        "novel": zero_shot(model, tokenizer, images[novel], labels[novel] - nb, names[nb:]),
        "pretrain_style_all": zero_shot(model, tokenizer, plain, plain_labels, names),
    }


def pretrain(*, steps: int, batch_size: int, lr: float, weight_decay: float, warmup: int,
             seed: int, threads: int, log_every: int = 100) -> torch.nn.Module:
    """Train ``rayot-demo`` from scratch; returns the model in eval mode (float32)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    open_clip.add_model_config(CONFIG_DIR)
    world = synth.DEFAULT_WORLD
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    model.train()
    # No weight decay on embeddings, gains, biases and the temperature (as CLIP).
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    rng = synth.pretrain_rng(seed)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        images, caps, labels = synth.pretrain_batch(rng, batch_size, world=world)
        image = model.encode_image(to_tensor(images), normalize=True)  # (B, D)
        text = model.encode_text(tokenizer(caps), normalize=True)  # (B, D)
        loss = multi_positive_nce(image, text, torch.from_numpy(labels),
                                  model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}"
                  f"  {time.perf_counter() - start:.0f}s", flush=True)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads; the result is bitwise reproducible for a fixed count")
    p.add_argument("--eval-per-class", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=12345,
                   help="seed of the freshly rendered benchmark-style test images of the report")
    p.add_argument("--out", type=Path, default=REPO / "rayot" / "assets" / "demo-clip.pt")
    args = p.parse_args()

    start = time.perf_counter()
    model = pretrain(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed,
                     threads=args.threads)
    train_s = time.perf_counter() - start
    # Round to the float16 that is saved first, so that the report is that of the file.
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    world = synth.DEFAULT_WORLD
    acc = evaluate(model, open_clip.get_tokenizer(MODEL_NAME), world, args.eval_seed,
                   args.eval_per_class)
    print(f"pretraining: {args.steps} steps of {args.batch_size} in {train_s:.0f}s "
          f"({args.threads} thread(s))")
    print(f"zero-shot on benchmark test images: base {acc['base']:.1f}%  novel {acc['novel']:.1f}%"
          f"  (chance {100 / world.n_base:.1f}% / {100 / (world.n_classes - world.n_base):.1f}%)")
    print(f"zero-shot on pre-training-style images, all {world.n_classes} classes: "
          f"{acc['pretrain_style_all']:.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, float16)")


if __name__ == "__main__":
    main()
