"""Image pre-processing of docs/protocol.md §6 (CLIP's normalisation, bicubic resizing)."""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_CROP_SCALE = (0.08, 1.0)


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def train_transform(image_size: int) -> Callable:
    """PIL RGB image -> float tensor (3, image_size, image_size): random resized crop, flip."""
    size = _check_size(image_size)
    return T.Compose([
        T.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def test_transform(image_size: int) -> Callable:
    """PIL RGB image -> float tensor (3, image_size, image_size): shorter side resized, centre crop."""
    size = _check_size(image_size)
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


# The name starts with "test": keep pytest from collecting it wherever a test module imports it.
test_transform.__test__ = False  # type: ignore[attr-defined]
