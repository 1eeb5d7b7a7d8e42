"""`rayot data prepare` as a library: from public archives to the layout `rayot data check` reads.

:func:`recipes` is the one table saying, per dataset, which files it is made from, where each
comes from, how each is checked and where its content goes (docs/protocol.md §1). Addresses and
checksums are read at run time from torchvision's dataset classes where they match the layout;
the others are recorded here with the source they were taken from. A file without a recorded
checksum is verified by structure instead: a split file must parse and hold the protocol's
counts, and every archive's arranged folder must pass ``check_dataset`` before it is moved into
the data root.

Safety: downloads resume (:mod:`rayot.data.download`); archives are extracted into a hidden
temporary folder inside the data root, checked there and renamed into place in one step, so a
failure leaves nothing behind; an existing dataset folder is never written to.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from rayot.data.check import CheckReport, check_dataset
from rayot.data.download import (
    Progress,
    download,
    drive_page,
    drive_url,
    part_path,
    verify_checksum,
)
from rayot.data.readers import read_classnames_file, read_split_file
from rayot.data.specs import CLASSNAMES_FILE, DATASETS, DatasetSpec, get_spec
from rayot.errors import DataError

log = logging.getLogger(__name__)

DOWNLOADS_FOLDER = ".rayot-downloads"  # default download folder, inside the data root
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Source:
    """One file a dataset is made from.

    ``urls`` are tried in order; empty when the file cannot be downloaded automatically, and then
    ``page`` says where a person obtains it. ``checksum`` is "md5:<hex>" or "sha256:<hex>", or
    None when no reliable sum is recorded anywhere (the file is then verified by structure).
    ``also_at`` is a path under the data root where the file may already be (imagenet's
    ``classnames.txt`` for its variants, as KaiyangZhou/CoOp's DATASETS.md says to copy it).
    """

    name: str
    urls: tuple[str, ...]
    checksum: str | None
    origin: str
    page: str = ""
    size: int | None = None
    also_at: str = ""

    @property
    def automatic(self) -> bool:
        return bool(self.urls)

    @property
    def is_archive(self) -> bool:
        return self.name.endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class Place:
    """Put (part of) file ``file`` under the dataset folder.

    For an archive, ``take`` is the path inside it that is kept ("" keeps everything); when that
    path is itself an archive it is unpacked in turn (Caltech101's zip holds a tarball). ``to`` is
    where it goes under the dataset folder ("" = the folder itself, merged). A plain file is
    copied to ``to`` (default: its own name).
    """

    file: str
    take: str = ""
    to: str = ""


@dataclass(frozen=True)
class Recipe:
    """How one dataset is prepared. ``manual`` says why it needs ``--from`` ("" = automatic)."""

    dataset: str
    files: tuple[Source, ...]
    steps: tuple[Place, ...] = ()
    manual: str = ""
    arrange: Callable[[Recipe, dict[str, Path], Path, Path, Progress | None], None] | None = None
    notes: str = ""

    @property
    def automatic(self) -> bool:
        return not self.manual and all(s.automatic for s in self.files)


@dataclass
class Outcome:
    """What :func:`prepare_dataset` did: ``status`` is "prepared" or "already prepared"."""

    dataset: str
    status: str
    folder: Path
    report: CheckReport | None = None
    files: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- the table


def _drive(name: str, file_id: str, what: str) -> Source:
    return Source(name, (drive_url(file_id),), None, f"KaiyangZhou/CoOp DATASETS.md ({what}, Google Drive)",
                  page=drive_page(file_id))


def _split(name: str, file_id: str) -> Source:
    return _drive(name, file_id, "split file")


# classnames.txt of the imagenet family: the file of KaiyangZhou/CoOp (CLIP's class names by wnid). The
# variants use the copy under imagenet/ when it is there, as its DATASETS.md says.
_CLASSNAMES_DRIVE = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"


def _classnames() -> Source:
    return Source(CLASSNAMES_FILE, (drive_url(_CLASSNAMES_DRIVE),), None,
                  "KaiyangZhou/CoOp DATASETS.md (Google Drive); or a copy from imagenet/",
                  page=drive_page(_CLASSNAMES_DRIVE), also_at=f"imagenet/{CLASSNAMES_FILE}")


@lru_cache(maxsize=1)
def recipes() -> dict[str, Recipe]:
    """Every benchmark dataset's recipe (imports torchvision for its recorded addresses)."""
    import torchvision.datasets as tvd
    from torchvision.datasets import imagenet as tv_imagenet

    tv = "torchvision.datasets"
    pets = {url.rsplit("/", 1)[1]: (url, md5) for url, md5 in tvd.OxfordIIITPet._RESOURCES}
    flowers = tvd.Flowers102._file_dict
    flowers_url = tvd.Flowers102._download_url_prefix
    inet = tv_imagenet.ARCHIVE_META
    out = [
        Recipe("imagenet", (
            Source(inet["train"][0], (), f"md5:{inet['train'][1]}", f"{tv}.imagenet.ARCHIVE_META",
                   page="https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"),
            Source(inet["val"][0], (), f"md5:{inet['val'][1]}", f"{tv}.imagenet.ARCHIVE_META",
                   page="https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"),
            Source(inet["devkit"][0], (), f"md5:{inet['devkit'][1]}",
                   f"{tv}.imagenet.ARCHIVE_META",
                   page="https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"),
            _classnames(),
        ), manual="ImageNet's licence; sign in at https://image-net.org, accept its terms and "
                  "download the training images, the validation images and the development "
                  "kit (Task 1 & 2) from https://image-net.org/challenges/LSVRC/2012/"
                  "2012-downloads.php",
            arrange=_arrange_imagenet,
            notes="train: one tarball per class; val: labelled from the devkit's ground truth"),
        Recipe("caltech101", (
            _split("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
            # The reference's vision.caltech.edu address is gone; torchvision downloads the same images
            # from CaltechDATA (address and md5 in torchvision.datasets.Caltech101.download).
            Source("caltech-101.zip", ("https://data.caltech.edu/records/mzrjq-6wc02/files/"
                                       "caltech-101.zip",),
                   "md5:3138e1922a9193bfa496528edbbc45d0", f"{tv}.Caltech101.download"),
        ), (Place("caltech-101.zip", "caltech-101/101_ObjectCategories.tar.gz"),
            Place("split_zhou_Caltech101.json"))),
        Recipe("oxford_pets", (
            _split("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
            *(Source(n, (url,), f"md5:{md5}", f"{tv}.OxfordIIITPet._RESOURCES")
              for n, (url, md5) in pets.items()),
        ), (Place("images.tar.gz", "images", "images"),
            Place("annotations.tar.gz", "annotations", "annotations"),
            Place("split_zhou_OxfordPets.json"))),
        Recipe("stanford_cars", (
            _split("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
            # Sizes and sha256 from tensorflow_datasets' url_checksums/cars196.txt (the original
            # ai.stanford.edu archives; torchvision no longer downloads them).
            Source("cars_train.tgz", (), "sha256:512b227b30e2f0a8aab9e09485786ab4479582073a"
                   "144998da74d64b801fd288", "tensorflow_datasets url_checksums/cars196.txt",
                   page="formerly http://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
                   size=979269282),
            Source("cars_test.tgz", (), "sha256:bffea656d6f425cba3c91c6d83336e4c5f86c6cffd897"
                   "5b0f375d3a10da8e243", "tensorflow_datasets url_checksums/cars196.txt",
                   page="formerly http://ai.stanford.edu/~jkrause/car196/cars_test.tgz",
                   size=977350468),
        ), (Place("cars_train.tgz", "cars_train", "cars_train"),
            Place("cars_test.tgz", "cars_test", "cars_test"),
            Place("split_zhou_StanfordCars.json")),
            manual="its official address (ai.stanford.edu/~jkrause/cars) is gone; obtain the "
                   "original cars_train.tgz and cars_test.tgz from a mirror of it (they are "
                   "checked against the sizes and sha256 sums tensorflow_datasets recorded for "
                   "the originals)"),
        Recipe("oxford_flowers", (
            _split("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
            *(Source(flowers[k][0], (flowers_url + flowers[k][0],), f"md5:{flowers[k][1]}",
                     f"{tv}.Flowers102._file_dict") for k in ("image", "label")),
        ), (Place("102flowers.tgz", "jpg", "jpg"), Place("imagelabels.mat"),
            Place("split_zhou_OxfordFlowers.json"))),
        Recipe("food101", (
            _split("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
            Source(tvd.Food101._URL.rsplit("/", 1)[1], (tvd.Food101._URL,),
                   f"md5:{tvd.Food101._MD5}", f"{tv}.Food101._URL/_MD5"),
        ), (Place("food-101.tar.gz", "food-101"), Place("split_zhou_Food101.json"))),
        Recipe("fgvc_aircraft", (
            # torchvision records the address but no checksum; size and sha256 from
            # tensorflow_datasets' url_checksums/fgvc.txt (same file, http address).
            Source(tvd.FGVCAircraft._URL.rsplit("/", 1)[1], (tvd.FGVCAircraft._URL,),
                   "sha256:d5f68b1b81d6d7831eb9d5c5517074176b5dfbce6bcb43dc14ed1c66a87b8d75",
                   f"{tv}.FGVCAircraft._URL; sha256 tensorflow_datasets url_checksums/fgvc.txt",
                   size=2770575360),
        ), (Place("fgvc-aircraft-2013b.tar.gz", "fgvc-aircraft-2013b/data"),),
            notes="the official variant lists are the split"),
        Recipe("sun397", (
            _split("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
            Source(tvd.SUN397._DATASET_URL.rsplit("/", 1)[1], (tvd.SUN397._DATASET_URL,),
                   f"md5:{tvd.SUN397._DATASET_MD5}", f"{tv}.SUN397._DATASET_URL/_MD5"),
        ), (Place("SUN397.tar.gz", "SUN397", "SUN397"), Place("split_zhou_SUN397.json")),
            notes="Partitions.zip is not needed (the split file replaces it)"),
        Recipe("dtd", (
            _split("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
            Source(tvd.DTD._URL.rsplit("/", 1)[1], (tvd.DTD._URL,), f"md5:{tvd.DTD._MD5}",
                   f"{tv}.DTD._URL/_MD5"),
        ), (Place("dtd-r1.0.1.tar.gz", "dtd"), Place("split_zhou_DescribableTextures.json"))),
        Recipe("eurosat", (
            _split("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
            # The reference's madm.dfki.de address is unreliable; torchvision downloads the same RGB zip
            # from the torchgeo mirror (address and md5 in torchvision.datasets.EuroSAT.download).
            Source("EuroSAT.zip", ("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                                   "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",),
                   "md5:c8fa014336c82ac7804f0398fcb19387", f"{tv}.EuroSAT.download"),
        ), (Place("EuroSAT.zip", "2750", "2750"), Place("split_zhou_EuroSAT.json"))),
        Recipe("ucf101", (
            _split("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
            # The reference's own middle-frame extraction; it exists only on Google Drive.
            _drive("UCF-101-midframes.zip", "10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", "frames"),
        ), (Place("UCF-101-midframes.zip", "UCF-101-midframes", "UCF-101-midframes"),
            Place("split_zhou_UCF101.json"))),
        Recipe("imagenetv2", (
            _classnames(),
            # The ImageNetV2 authors' Hugging Face copy, then the reference's S3 address; no checksum is
            # published for it.
            Source("imagenetv2-matched-frequency.tar.gz", (
                "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
                "imagenetv2-matched-frequency.tar.gz",
                "https://s3-us-west-2.amazonaws.com/imagenetv2public/"
                "imagenetv2-matched-frequency.tar.gz"), None,
                "ImageNetV2 authors (Hugging Face), KaiyangZhou/CoOp DATASETS.md (S3)"),
        ), (Place("imagenetv2-matched-frequency.tar.gz", "imagenetv2-matched-frequency-format-val",
                  "imagenetv2-matched-frequency-format-val"), Place(CLASSNAMES_FILE))),
        Recipe("imagenet_sketch", (
            _classnames(),
            # The dataset's Hugging Face copy, then the authors' Google Drive file (from
            # github.com/HaohanWang/ImageNet-Sketch); no checksum is published for it.
            Source("ImageNet-Sketch.zip", (
                "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/"
                "ImageNet-Sketch.zip", drive_url("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA")), None,
                "ImageNet-Sketch authors (Hugging Face, Google Drive)"),
        ), (Place("ImageNet-Sketch.zip", "sketch", "images"), Place(CLASSNAMES_FILE))),
        Recipe("imagenet_a", (
            _classnames(),
            # md5 as recorded by torch_uncertainty's ImageNetA dataset class.
            Source("imagenet-a.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",),
                   "md5:c3e55429088dc681f30d81f4726b6595",
                   "github.com/hendrycks/natural-adv-examples; md5 torch_uncertainty"),
        ), (Place("imagenet-a.tar", "imagenet-a", "imagenet-a"), Place(CLASSNAMES_FILE))),
        Recipe("imagenet_r", (
            _classnames(),
            # md5 as recorded by torch_uncertainty's ImageNetR dataset class.
            Source("imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",),
                   "md5:a61312130a589d0ca1a8fca1f2bd3337",
                   "github.com/hendrycks/imagenet-r; md5 torch_uncertainty"),
        ), (Place("imagenet-r.tar", "imagenet-r", "imagenet-r"), Place(CLASSNAMES_FILE))),
    ]
    return {r.dataset: r for r in out}


def resolve_names(names: Iterable[str]) -> list[str]:
    """Dataset names with ``all`` expanded to every preparable dataset, in table order."""
    table = recipes()
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(table)
            continue
        get_spec(name)  # unknown names: the usual message
        if name not in table:
            raise DataError(f"{name}: nothing to download; `rayot data synth --root ROOT` "
                            "renders it")
        out.append(name)
    return list(dict.fromkeys(out))


def how_to_obtain(recipe: Recipe) -> str:
    """The message for a dataset that cannot be downloaded automatically."""
    files = [s for s in recipe.files if not s.automatic]
    listed = ", ".join(f"{s.name} ({s.page})" if s.page and s.page not in recipe.manual
                       else s.name for s in files)
    return (f"{recipe.dataset} cannot be downloaded automatically: {recipe.manual}. Put "
            f"{listed} in one folder DIR and run `rayot data prepare {recipe.dataset} "
            f"--root ROOT --from DIR`")


def source_table() -> str:
    """The table of :func:`recipes` as Markdown (the README shows it)."""
    rows = ["| dataset | file | from | checked by |", "|---|---|---|---|"]
    for recipe in recipes().values():
        for s in recipe.files:
            where = f"{s.origin}" if s.automatic else f"`--from` ({s.origin})"
            if s.checksum is not None:
                check = s.checksum.split(":")[0]
            elif s.name.endswith(".json"):
                check = "structure (parses, protocol counts)"
            elif s.name == CLASSNAMES_FILE:
                check = "structure (1000 wnids)"
            else:
                check = "structure (`data check` before moving)"
            rows.append(f"| {recipe.dataset} | `{s.name}` | {where} | {check} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- obtaining files


def obtain(recipe: Recipe, source: Source, *, root: Path | None, from_dir: Path | None,
           downloads: Path, progress: Progress | None = None) -> tuple[Path, bool]:
    """The verified local path of ``source`` and whether rayot downloaded it (may delete it).

    Looked for, in order: ``from_dir`` (a folder, or the file itself), ``also_at`` under the
    data root, ``downloads`` (a complete earlier download), then downloaded.
    """
    label = f"{recipe.dataset}: {source.name}"
    candidates: list[Path] = []
    if from_dir is not None:
        candidates.append(from_dir if from_dir.is_file() else from_dir / source.name)
    if source.also_at and root is not None:
        candidates.append(root / source.also_at)
    for path in candidates:
        if path.is_file() and path.name == source.name:
            verify_file(recipe, source, path, delete=False, progress=progress)
            log.info("%s: using %s", label, path)
            return path, False
    dest = downloads / source.name
    if dest.is_file():
        verify_file(recipe, source, dest, delete=True, progress=progress)
        log.info("%s: already downloaded to %s", label, dest)
        return dest, True
    if not source.automatic:
        where = f" (not found in {from_dir})" if from_dir is not None else ""
        raise DataError(how_to_obtain(recipe) + where)
    try:
        download(source.urls, dest, label=label, progress=progress)
    except DataError as exc:
        page = f"; by hand: {source.page}, then --from DIR" if source.page else ""
        raise DataError(f"{exc}{page}") from None
    verify_file(recipe, source, dest, delete=True, progress=progress)
    return dest, True


def verify_file(recipe: Recipe, source: Source, path: Path, *, delete: bool,
                progress: Progress | None = None) -> None:
    """Checksum (and size) when recorded, else structure for split files and classnames.txt.
    Archives without a checksum are verified after extraction (check before moving)."""
    label = f"{recipe.dataset}: {source.name}"
    if source.size is not None and path.stat().st_size != source.size:
        actual = path.stat().st_size
        if delete:
            path.unlink()
        raise DataError(f"{label}: {path} is {actual} bytes, expected {source.size}"
                        + ("; deleted it" if delete else ""))
    if source.checksum is not None:
        verify_checksum(path, source.checksum, label=label, delete=delete, progress=progress)
        return
    try:
        if source.name.endswith(".json"):
            _verify_split_file(path, get_spec(recipe.dataset))
        elif source.name == CLASSNAMES_FILE:
            verify_classnames(path, recipe.dataset)
    except DataError as exc:
        if delete:
            path.unlink(missing_ok=True)
        raise DataError(f"{exc}" + ("; deleted it" if delete else "")) from None


def _verify_split_file(path: Path, spec: DatasetSpec) -> None:
    train, val, test, classnames = read_split_file(path, spec.name)
    if spec.num_classes is not None and len(classnames) != spec.num_classes:
        raise DataError(f"{spec.name}: split file {path} has {len(classnames)} classes, "
                        f"expected {spec.num_classes}")
    for split, items, expected in zip(("train", "val", "test"), (train, val, test), spec.sizes,
                                      strict=True):
        if expected is not None and len(items) != expected:
            raise DataError(f"{spec.name}: split file {path} lists {len(items)} {split} images, "
                            f"expected {expected}")


def verify_classnames(path: Path, dataset: str) -> None:
    """imagenet's classnames.txt: one ``<wnid> <name>`` line per ImageNet class."""
    names = read_classnames_file(path, dataset)
    expected = DATASETS["imagenet"].num_classes
    bad = [w for w in names if not WNID.match(w)]
    if bad:
        raise DataError(f"{dataset}: {path}: {bad[:3]} are not WordNet ids (n########)")
    if len(names) != expected:
        raise DataError(f"{dataset}: {path} lists {len(names)} classes, expected {expected}")


# ----------------------------------------------------------------------------- archives


class _Counting(io.RawIOBase):
    """A read-only file that reports how many bytes were read (extraction progress)."""

    def __init__(self, f: BinaryIO, report: Callable[[int], None]) -> None:
        self._f, self._report, self.done = f, report, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        self.done += n or 0
        self._report(self.done)
        return n or 0


def _open_tar(path: Path, progress: Progress | None, label: str) -> tuple[tarfile.TarFile, BinaryIO]:
    total = path.stat().st_size
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller with the tar

    def report(done: int) -> None:
        if progress is not None:
            progress("extract", label, min(done, total), total)

    stream = io.BufferedReader(_Counting(raw, report), buffer_size=1 << 20)
    return tarfile.open(fileobj=stream, mode="r|*"), raw


def extract(path: Path, into: Path, *, label: str, progress: Progress | None = None) -> None:
    """Unpack a .tar/.tar.gz/.tgz/.zip into ``into``, refusing links and paths that leave it."""
    into.mkdir(parents=True, exist_ok=True)
    log.info("%s: extracting %s", label, path.name)
    try:
        if path.name.endswith(".zip"):
            _extract_zip(path, into, label, progress)
            return
        tar, raw = _open_tar(path, progress, label)
        with raw, tar:
            for member in tar:
                if member.isfile() or member.isdir():
                    tar.extract(member, into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{label}: cannot extract {path} ({type(exc).__name__}: {exc}); "
                        "the archive is corrupt or incomplete") from None


def _extract_zip(path: Path, into: Path, label: str, progress: Progress | None) -> None:
    with zipfile.ZipFile(path) as zf:
        members = zf.infolist()
        total, done = sum(m.compress_size for m in members), 0
        for member in members:
            zf.extract(member, into)  # zipfile drops absolute paths and ".." components
            done += member.compress_size
            if progress is not None:
                progress("extract", label, done, total)


def _place(step: Place, files: dict[str, Path], dest: Path, scratch: Path, label: str,
           progress: Progress | None) -> None:
    src_file = files[step.file]
    target = dest / step.to if step.to else dest
    if not step.file.endswith(ARCHIVE_SUFFIXES):
        shutil.copyfile(src_file, dest / (step.to or step.file))
        return
    unpacked = Path(tempfile.mkdtemp(prefix="unpack-", dir=scratch))
    extract(src_file, unpacked, label=label, progress=progress)
    taken = unpacked / step.take if step.take else unpacked
    if not taken.exists():
        found = sorted(p.name for p in unpacked.iterdir())[:10]
        raise DataError(f"{label}: {src_file} has no {step.take!r} (its top level holds "
                        f"{found}); it is not the archive this dataset is made from")
    if taken.is_file() and taken.name.endswith(ARCHIVE_SUFFIXES):
        extract(taken, target, label=f"{label} / {taken.name}", progress=progress)
        return
    if taken.is_file():
        raise DataError(f"{label}: {step.take!r} in {src_file} is a file, expected a folder")
    if step.to:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(taken, target)
        return
    for child in taken.iterdir():
        os.replace(child, dest / child.name)


# ----------------------------------------------------------------------------- imagenet


def _arrange_imagenet(recipe: Recipe, files: dict[str, Path], dest: Path, scratch: Path,
                      progress: Progress | None) -> None:
    """The official tarballs into images/train/<wnid>/ and images/val/<wnid>/."""
    from torchvision.datasets import imagenet as tv_imagenet

    train_tar, val_tar, devkit = (files[tv_imagenet.ARCHIVE_META[k][0]]
                                  for k in ("train", "val", "devkit"))
    shutil.copyfile(files[CLASSNAMES_FILE], dest / CLASSNAMES_FILE)
    train = dest / "images" / "train"
    label = f"imagenet: {train_tar.name}"
    tar, raw = _open_tar(train_tar, progress, label)
    try:
        with raw, tar:
            for member in tar:
                if not member.isfile():
                    continue
                wnid = member.name.rsplit("/", 1)[-1].removesuffix(".tar")
                if not WNID.match(wnid):
                    raise DataError(f"{label}: unexpected member {member.name!r} (the training "
                                    "tarball holds one <wnid>.tar per class)")
                inner = tar.extractfile(member)
                assert inner is not None
                _write_images(tarfile.open(fileobj=inner, mode="r|"), train / wnid, lambda n: "")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{label}: cannot extract {train_tar} ({exc})") from None

    wnid_of = _val_labels(devkit)
    label = f"imagenet: {val_tar.name}"
    val = dest / "images" / "val"
    tar, raw = _open_tar(val_tar, progress, label)

    def folder_of(name: str) -> str:
        match = re.search(r"_(\d{8})\.JPEG$", name)
        if match is None or int(match.group(1)) not in wnid_of:
            raise DataError(f"{label}: {name!r} has no label in {devkit.name}")
        return wnid_of[int(match.group(1))]

    try:
        with raw, tar:
            _write_images(tar, val, folder_of)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{label}: cannot extract {val_tar} ({exc})") from None


def _write_images(tar: tarfile.TarFile, base: Path, folder_of: Callable[[str], str]) -> None:
    """Write every regular file of a streamed tar as ``base/<folder_of(name)>/<basename>``."""
    made: set[Path] = set()
    for member in tar:
        if not member.isfile():
            continue
        name = member.name.rsplit("/", 1)[-1]
        folder = base / folder_of(name)
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        data = tar.extractfile(member)
        assert data is not None
        with open(folder / name, "wb") as out:
            shutil.copyfileobj(data, out)


def _val_labels(devkit: Path) -> dict[int, str]:
    """Validation image number -> wnid, from the devkit's meta.mat and ground-truth list."""
    import scipy.io

    meta = truth = None
    try:
        with tarfile.open(devkit, "r:*") as tar:
            for member in tar:
                if member.name.endswith("data/meta.mat"):
                    meta = tar.extractfile(member).read()  # type: ignore[union-attr]
                elif member.name.endswith("data/ILSVRC2012_validation_ground_truth.txt"):
                    truth = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"imagenet: cannot read {devkit} ({exc})") from None
    if meta is None or truth is None:
        raise DataError(f"imagenet: {devkit} lacks data/meta.mat or "
                        "data/ILSVRC2012_validation_ground_truth.txt")
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
                  if int(s["num_children"]) == 0}
    ids = [int(line) for line in truth.decode().split()]
    unknown = sorted(set(ids) - set(wnid_of_id))
    if unknown:
        raise DataError(f"imagenet: {devkit}: ground-truth labels {unknown[:5]} are not leaf "
                        "classes of its meta.mat")
    return {i: wnid_of_id[label] for i, label in enumerate(ids, start=1)}


# ----------------------------------------------------------------------------- one dataset


def prepare_dataset(name: str, root: Path, *, from_dir: Path | None = None,
                    downloads: Path | None = None, keep_downloads: bool = False,
                    decode: bool = False, progress: Progress | None = None,
                    table: dict[str, Recipe] | None = None) -> Outcome:
    """Download (or take from ``from_dir``), verify, extract, arrange and check one dataset.

    The returned report is the check of the arranged folder without decoding images (``decode``
    adds a check that decodes every image).

    The dataset folder appears under ``root`` only once its arranged copy passes
    ``check_dataset`` in a temporary folder beside it; a dataset already present and complete
    is left alone ("already prepared"); one present but incomplete is a DataError (rayot never
    writes into an existing dataset folder).
    """
    spec = get_spec(name)
    recipe = (table or recipes())[name]
    root = Path(root)
    folder = root / spec.folder
    if folder.exists():
        report = check_dataset(name, root, decode=False)
        if report.ok:
            log.info("%s: %s is already prepared and complete; nothing to do", name, folder)
            return Outcome(name, "already prepared", folder, report)
        first = report.problems[0]
        where = f": {first.path}" if first.path is not None else ""
        raise DataError(f"{name}: {folder} exists but fails the check ({len(report.problems)} "
                        f"problem(s), first: {first.message}{where}); rayot does not write into "
                        "an existing dataset folder: move it aside and run prepare again")
    if from_dir is None and not recipe.automatic:
        raise DataError(how_to_obtain(recipe))
    root.mkdir(parents=True, exist_ok=True)
    own_downloads = downloads is None
    downloads = root / DOWNLOADS_FOLDER if downloads is None else Path(downloads)
    fetched: dict[str, Path] = {}
    ours: list[Path] = []
    ok = False
    try:
        for source in recipe.files:
            path, downloaded = obtain(recipe, source, root=root, from_dir=from_dir,
                                      downloads=downloads, progress=progress)
            fetched[source.name] = path
            if downloaded:
                ours.append(path)
        report = _assemble(recipe, spec, root, fetched, progress)
        ok = True
    finally:
        # On failure only partial downloads (*.part, resumed by the next run) stay behind; a
        # corrupt or unverifiable file was deleted where it was found to be bad.
        if not ok or not keep_downloads:
            for path in ours:
                path.unlink(missing_ok=True)
        if own_downloads:
            _remove_if_empty(downloads)
    if decode:
        report = check_dataset(name, root, decode=True)
    log.info("%s: prepared in %s", name, folder)
    return Outcome(name, "prepared", folder, report, list(fetched.values()))


def _assemble(recipe: Recipe, spec: DatasetSpec, root: Path, files: dict[str, Path],
              progress: Progress | None) -> CheckReport:
    """Arrange ``files`` in a temporary folder in ``root``, check it, rename it into place;
    returns the check of the staged copy (the same files, before the rename)."""
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.prepare-", dir=root))
    try:
        dest = stage / spec.folder
        dest.mkdir()
        scratch = stage / ".scratch"
        scratch.mkdir()
        if recipe.arrange is not None:
            recipe.arrange(recipe, files, dest, scratch, progress)
        for step in recipe.steps:
            _place(step, files, dest, scratch, f"{recipe.dataset}: {step.file}", progress)
        shutil.rmtree(scratch)
        report = check_dataset(recipe.dataset, stage, decode=False)
        if not report.ok:
            shown = "; ".join(p.message + (f": {p.path.relative_to(stage)}" if p.path else "")
                              for p in report.problems[:3])
            raise DataError(f"{recipe.dataset}: the archives do not give the expected layout "
                            f"({len(report.problems)} problem(s): {shown}); nothing was moved "
                            f"into {root}")
        os.rename(dest, root / spec.folder)
        report.folder = root / spec.folder
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# ----------------------------------------------------------------------------- download only


def download_only(names: Iterable[str], into: Path, *, progress: Progress | None = None,
                  table: dict[str, Recipe] | None = None) -> tuple[list[Path], list[str]]:
    """Download and verify every automatic file of ``names`` into ``into`` (for ``--from`` on an
    offline machine). Returns the files and, per dataset needing a manual step, its message."""
    table = table or recipes()
    into = Path(into)
    files: list[Path] = []
    manual: list[str] = []
    for name in names:
        recipe = table[name]
        for source in recipe.files:
            if not source.automatic:
                continue
            path, _ = obtain(recipe, source, root=None, from_dir=None, downloads=into,
                             progress=progress)
            files.append(path)
        if not recipe.automatic:
            manual.append(how_to_obtain(recipe))
    return files, manual


def leftover_parts(folder: Path) -> list[Path]:
    """Partial downloads kept in ``folder`` (resumed by the next run)."""
    return sorted(folder.glob("*.part")) if folder.is_dir() else []


__all__ = [
    "DOWNLOADS_FOLDER",
    "Outcome",
    "Place",
    "Recipe",
    "Source",
    "download_only",
    "how_to_obtain",
    "obtain",
    "part_path",
    "prepare_dataset",
    "recipes",
    "resolve_names",
    "source_table",
]
