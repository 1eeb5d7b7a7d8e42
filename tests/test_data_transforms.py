"""Pre-processing (§6), the image Dataset and its loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_trees import write_image
from PIL import Image

from rayot.data import (
    CLIP_MEAN,
    CLIP_STD,
    ImageDataset,
    Item,
    make_loader,
    test_transform,
    train_transform,
)
from rayot.errors import DataError


def test_clip_normalisation_constants() -> None:
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("image_size", [224, 32])
@pytest.mark.parametrize("make", [train_transform, test_transform])
def test_output_size(make, image_size: int) -> None:
    out = make(image_size)(Image.new("RGB", (97, 41), (10, 200, 30)))
    assert out.shape == (3, image_size, image_size) and out.dtype == torch.float32


def test_test_transform_normalises_with_clip_constants() -> None:
    # A uniform image survives resize and crop unchanged, so each channel is (v/255 - mean) / std.
    rgb = (200, 100, 50)
    out = test_transform(16)(Image.new("RGB", (40, 30), rgb))  # (3, 16, 16)
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, CLIP_MEAN, CLIP_STD, strict=True)])
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5, rtol=0)


def test_test_transform_resizes_shorter_side_then_centre_crops() -> None:
    # Left half black, right half white, 60x20: shorter side -> 10 gives 30x10, crop keeps the
    # middle 10 columns, where the edge sits at column 5.
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (30, 0, 60, 20))
    out = test_transform(10)(img)[0]  # (10, 10)
    low = (0 - CLIP_MEAN[0]) / CLIP_STD[0]
    high = (1 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert out[:, :4].max() < low + 0.1 and out[:, 6:].min() > high - 0.1


def test_train_transform_is_random() -> None:
    torch.manual_seed(0)
    img = Image.effect_noise((64, 64), 60).convert("RGB")
    a, b = train_transform(16)(img), train_transform(16)(img)
    assert not torch.equal(a, b)


def test_bad_image_size() -> None:
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        test_transform(0)


def test_dataset_and_loaders(tmp_path: Path) -> None:
    items = [Item(f"c{i % 2}/{i}.png", i % 2, f"c{i % 2}") for i in range(5)]
    for it in items:
        write_image(tmp_path / it.impath, size=(20, 30))
    ds = ImageDataset(items, tmp_path, test_transform(8), "synthetic")
    image, label = ds[3]
    assert image.shape == (3, 8, 8) and label == 1
    test_batches = [y.tolist() for _, y in make_loader(ds, batch_size=2, train=False)]
    assert test_batches == [[0, 1], [0, 1], [0]]
    train_sizes = [len(y) for _, y in make_loader(ds, batch_size=2, train=True)]
    assert train_sizes == [2, 2]  # last incomplete batch dropped
    # A set smaller than one batch still yields its images.
    assert [len(y) for _, y in make_loader(ds, batch_size=8, train=True)] == [5]


def test_missing_and_undecodable_images_name_dataset_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "a" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff garbage")
    ds = ImageDataset([Item("a/none.jpg", 0, "a"), Item("a/bad.jpg", 0, "a")], tmp_path,
                      test_transform(8), "oxford_pets")
    with pytest.raises(DataError, match=f"oxford_pets: image {tmp_path / 'a' / 'none.jpg'} does not exist"):
        ds[0]
    with pytest.raises(DataError, match=f"oxford_pets: cannot decode image {bad}"):
        ds[1]
