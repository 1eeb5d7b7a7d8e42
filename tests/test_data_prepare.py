"""`rayot data prepare` against a local HTTP server on 127.0.0.1 (no network).

The server serves small archives built here in each dataset's real archive format (the real top
folders and nesting); the source table is the real one with every address pointed at the server
and every recorded checksum replaced by the sum of the small archive (None stays None).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import rayot.cli.data as cli_data
import rayot.data.prepare as prep
from rayot.cli import app
from rayot.data import specs
from rayot.data.check import check_dataset
from rayot.data.download import download, drive_url
from rayot.errors import DataError

README = Path(__file__).resolve().parents[1] / "README.md"
WNIDS = ["n00000001", "n00000002", "n00000003"]


def _jpeg(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (value % 256, 90, 30)).save(buf, "JPEG")
    return buf.getvalue()


JPG = _jpeg()


def _tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _split(paths: dict[str, str]) -> bytes:
    """A split file listing every {path: classname} in each split, labels by first appearance."""
    labels = {c: i for i, c in enumerate(dict.fromkeys(paths.values()))}
    entries = [[p, labels[c], c] for p, c in paths.items()]
    return json.dumps({"train": entries, "val": entries, "test": entries}).encode()


CLASSNAMES = "".join(f"{w} class {i}\n" for i, w in enumerate(WNIDS)).encode()
CALTECH = {"face/image_0001.jpg": "face", "leopard/image_0001.jpg": "leopard"}
PETS = {"Abyssinian_1.jpg": "abyssinian", "beagle_1.jpg": "beagle"}
CARS = {"cars_train/00001.jpg": "AM General Hummer SUV 2000", "cars_test/00001.jpg": "Acura RL 2012"}
FLOWERS = {"image_00001.jpg": "pink primrose", "image_00002.jpg": "globe thistle"}
FOOD = {"apple_pie/1.jpg": "apple_pie", "bibimbap/2.jpg": "bibimbap"}
SUN = {"a/abbey/sun_a.jpg": "abbey", "b/bakery/shop/sun_b.jpg": "bakery shop"}
DTD = {"banded/banded_0001.jpg": "banded", "woven/woven_0001.jpg": "woven"}
EURO = {"AnnualCrop/AnnualCrop_1.jpg": "Annual Crop Land", "River/River_1.jpg": "River"}
UCF = {"Archery/v_Archery_g01_c01.jpg": "Archery", "Biking/v_Biking_g01_c01.jpg": "Biking"}


def _images(prefix: str, paths: dict[str, str]) -> dict[str, bytes]:
    return {f"{prefix}/{p}": JPG for p in paths}


# Per dataset: the files the server (or --from) holds, in the real archive formats.
ARCHIVES: dict[str, dict[str, bytes]] = {
    "caltech101": {
        "split_zhou_Caltech101.json": _split(CALTECH),
        "caltech-101.zip": _zip({
            "caltech-101/101_ObjectCategories.tar.gz": _tar(_images("101_ObjectCategories",
                                                                    CALTECH)),
            "caltech-101/Annotations.tar": _tar({"Annotations/x.mat": b"m"}, "w"),
            "caltech-101/show_annotation.m": b"%"}),
    },
    "oxford_pets": {
        "split_zhou_OxfordPets.json": _split(PETS),
        "images.tar.gz": _tar(_images("images", PETS)),
        "annotations.tar.gz": _tar({"annotations/list.txt": b"#\n"}),
    },
    "stanford_cars": {
        "split_zhou_StanfordCars.json": _split(CARS),
        "cars_train.tgz": _tar({"cars_train/00001.jpg": JPG}),
        "cars_test.tgz": _tar({"cars_test/00001.jpg": JPG}),
    },
    "oxford_flowers": {
        "split_zhou_OxfordFlowers.json": _split(FLOWERS),
        "102flowers.tgz": _tar(_images("jpg", FLOWERS)),
        "imagelabels.mat": b"MATLAB 5.0 MAT-file",
    },
    "food101": {
        "split_zhou_Food101.json": _split(FOOD),
        "food-101.tar.gz": _tar({**_images("food-101/images", FOOD),
                                 "food-101/meta/classes.txt": b"apple_pie\nbibimbap\n"}),
    },
    "fgvc_aircraft": {
        "fgvc-aircraft-2013b.tar.gz": _tar({
            "fgvc-aircraft-2013b/data/images/0034309.jpg": JPG,
            "fgvc-aircraft-2013b/data/images/0034958.jpg": JPG,
            "fgvc-aircraft-2013b/data/variants.txt": b"707-320\nA300B4\n",
            **{f"fgvc-aircraft-2013b/data/images_variant_{s}.txt":
               b"0034309 707-320\n0034958 A300B4\n" for s in ("train", "val", "test")},
            "fgvc-aircraft-2013b/evaluation.m": b"%"}),
    },
    "sun397": {
        "split_zhou_SUN397.json": _split(SUN),
        "SUN397.tar.gz": _tar({**_images("SUN397", SUN), "SUN397/ClassName.txt": b"/a/abbey\n"}),
    },
    "dtd": {
        "split_zhou_DescribableTextures.json": _split(DTD),
        "dtd-r1.0.1.tar.gz": _tar({**_images("dtd/images", DTD),
                                   "dtd/labels/labels_joint_anno.txt": b"x\n",
                                   "dtd/imdb/imdb.mat": b"m"}),
    },
    "eurosat": {
        "split_zhou_EuroSAT.json": _split(EURO),
        "EuroSAT.zip": _zip(_images("2750", EURO)),
    },
    "ucf101": {
        "split_zhou_UCF101.json": _split(UCF),
        "UCF-101-midframes.zip": _zip(_images("UCF-101-midframes", UCF)),
    },
    "imagenetv2": {
        "classnames.txt": CLASSNAMES,
        "imagenetv2-matched-frequency.tar.gz": _tar({
            f"imagenetv2-matched-frequency-format-val/{i}/{i}a.jpeg": JPG for i in range(3)}),
    },
    "imagenet_sketch": {
        "classnames.txt": CLASSNAMES,
        "ImageNet-Sketch.zip": _zip({f"sketch/{w}/sketch_1.JPEG": JPG for w in WNIDS}),
    },
    "imagenet_a": {
        "classnames.txt": CLASSNAMES,
        "imagenet-a.tar": _tar({"imagenet-a/n00000002/a.jpg": JPG,
                                "imagenet-a/README.txt": b"ImageNet-A\n"}, "w"),
    },
    "imagenet_r": {
        "classnames.txt": CLASSNAMES,
        "imagenet-r.tar": _tar({"imagenet-r/n00000001/r.jpg": JPG,
                                "imagenet-r/n00000003/r.jpg": JPG}, "w"),
    },
}


def _imagenet_archives() -> dict[str, bytes]:
    """ILSVRC2012's three official archives: per-class tarballs, flat val, devkit."""
    import scipy.io

    train = _tar({f"{w}.tar": _tar({f"{w}_{k}.JPEG": JPG for k in range(2)}, "w")
                  for w in WNIDS}, "w")
    val = _tar({f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(i) for i in range(1, 5)}, "w")
    dtype = [(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children")]
    # The devkit numbers classes in its own order (not sorted wnids) and lists inner synsets.
    synsets = np.array([(1, WNIDS[2], "c", "", 0), (2, WNIDS[0], "a", "", 0),
                        (3, WNIDS[1], "b", "", 0), (4, "n09999999", "entity", "", 3)], dtype=dtype)
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    devkit = _tar({"ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
                   "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt":
                   b"1\n2\n3\n2\n"})
    return {"ILSVRC2012_img_train.tar": train, "ILSVRC2012_img_val.tar": val,
            "ILSVRC2012_devkit_t12.tar.gz": devkit, "classnames.txt": CLASSNAMES}


# ----------------------------------------------------------------------------- the server


class Server:
    """Serves ``files`` by name with range requests; ``cut[name] = n`` drops the connection after
    n bytes of the next response for that name; ``requests`` records (name, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.types: dict[str, str] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.rsplit("/", 1)[-1].split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", server.types.get(name, "application/octet-stream"))
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.cut:
                    body = body[:server.cut.pop(name)]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def served(self, name: str) -> int:
        return sum(1 for n, _ in self.requests if n == name)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(5)


@pytest.fixture
def small_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Protocol counts off (the archives are tiny); the imagenet family has 3 classes."""
    for name, spec in list(specs.DATASETS.items()):
        classes = 3 if name in ("imagenet", "imagenetv2") else None
        monkeypatch.setitem(specs.DATASETS, name, dataclasses.replace(
            spec, sizes=(None, None, None), num_classes=classes))


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def local_table(server: Server, files: dict[str, bytes]) -> dict[str, prep.Recipe]:
    """The real table with addresses on ``server`` and recorded sums of ``files``."""
    table = {}
    for name, recipe in prep.recipes().items():
        sources = []
        for s in recipe.files:
            data = files.get(s.name)
            checksum = _md5(data) if s.checksum is not None and data is not None else None
            urls = (f"{server.url}/{name}/{s.name}",) if s.automatic else ()
            sources.append(dataclasses.replace(s, urls=urls, checksum=checksum, size=None))
        table[name] = dataclasses.replace(recipe, files=tuple(sources))
    return table


def _serve(server: Server, name: str) -> dict[str, prep.Recipe]:
    server.files.update(ARCHIVES[name])
    return local_table(server, ARCHIVES[name])


# ----------------------------------------------------------------------------- arrangement


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_each_dataset_arranged_from_its_archives(name: str, tmp_path: Path, server: Server,
                                                 small_specs: None) -> None:
    table = _serve(server, name)
    root = tmp_path / "data"
    from_dir = None
    if name == "stanford_cars":  # its archives come only from the user (--from)
        from_dir = tmp_path / "obtained"
        from_dir.mkdir()
        for f in ("cars_train.tgz", "cars_test.tgz"):
            (from_dir / f).write_bytes(ARCHIVES[name][f])
    outcome = prep.prepare_dataset(name, root, from_dir=from_dir, table=table)
    assert outcome.status == "prepared"
    assert outcome.report is not None and outcome.report.ok, outcome.report.problems
    report = check_dataset(name, root)  # with decoding
    assert report.ok, report.problems
    assert sum(found for found, _ in report.counts.values()) > 0
    # Only the dataset folder is left: no staging folder, no downloads.
    assert [p.name for p in root.iterdir()] == [specs.DATASETS[name].folder]


def test_arranged_layouts_are_coop_layouts(tmp_path: Path, server: Server,
                                           small_specs: None) -> None:
    root = tmp_path / "data"
    for name in ("caltech101", "fgvc_aircraft", "imagenet_sketch", "dtd"):
        prep.prepare_dataset(name, root, table=_serve(server, name))
    assert (root / "caltech-101/101_ObjectCategories/face/image_0001.jpg").is_file()
    assert not (root / "caltech-101/Annotations").exists()
    assert (root / "fgvc_aircraft/images_variant_test.txt").is_file()
    assert (root / "imagenet-sketch/images/n00000003/sketch_1.JPEG").is_file()
    assert (root / "imagenet-sketch/classnames.txt").read_bytes() == CLASSNAMES
    assert {p.name for p in (root / "dtd").iterdir()} == {
        "images", "labels", "imdb", "split_zhou_DescribableTextures.json"}


def _obtained_imagenet(tmp_path: Path, server: Server) -> tuple[Path, dict[str, prep.Recipe]]:
    """ImageNet's official tarballs as a user obtained them (a folder), and the recipe table."""
    archives = _imagenet_archives()
    obtained = tmp_path / "obtained"
    obtained.mkdir()
    for fname, data in archives.items():
        (obtained / fname).write_bytes(data)
    return obtained, local_table(server, archives)


def test_imagenet_from_official_tarballs(tmp_path: Path, server: Server,
                                         small_specs: None) -> None:
    obtained, table = _obtained_imagenet(tmp_path, server)
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"ImageNet's licence.*ILSVRC2012_img_train.tar.*--from"):
        prep.prepare_dataset("imagenet", root, table=table)
    outcome = prep.prepare_dataset("imagenet", root, from_dir=obtained, table=table)
    assert outcome.report is not None and outcome.report.ok, outcome.report.problems
    images = root / "imagenet" / "images"
    assert sorted(p.name for p in (images / "train").iterdir()) == WNIDS
    assert sorted(p.name for p in (images / "train" / WNIDS[1]).iterdir()) == [
        "n00000002_0.JPEG", "n00000002_1.JPEG"]
    # Ground truth 1, 2, 3, 2 -> devkit ids -> wnids n3, n1, n2, n1.
    val = {p.name: p.parent.name for p in (images / "val").rglob("*.JPEG")}
    assert val == {"ILSVRC2012_val_00000001.JPEG": WNIDS[2],
                   "ILSVRC2012_val_00000002.JPEG": WNIDS[0],
                   "ILSVRC2012_val_00000003.JPEG": WNIDS[1],
                   "ILSVRC2012_val_00000004.JPEG": WNIDS[0]}
    assert (root / "imagenet" / "classnames.txt").read_bytes() == CLASSNAMES
    assert all(p.is_file() for p in obtained.iterdir())  # the user's files are never deleted
    assert check_dataset("imagenet", root).ok
    # The variants then take classnames.txt from imagenet/, not from the network.
    table = _serve(server, "imagenet_r")
    del server.files["classnames.txt"]
    prep.prepare_dataset("imagenet_r", root, table=table)
    assert server.served("classnames.txt") == 0
    assert check_dataset("imagenet_r", root).ok


def test_imagenet_tarball_with_wrong_checksum_is_refused(tmp_path: Path, server: Server,
                                                         small_specs: None) -> None:
    obtained, table = _obtained_imagenet(tmp_path, server)
    (obtained / "ILSVRC2012_img_val.tar").write_bytes(b"not the tarball")
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch .*ILSVRC2012_img_val.tar.*left it"):
        prep.prepare_dataset("imagenet", root, from_dir=obtained, table=table)
    assert (obtained / "ILSVRC2012_img_val.tar").exists()
    assert list(root.iterdir()) == []


# ----------------------------------------------------------------------------- safety


def test_corrupt_archive_refused_and_nothing_left(tmp_path: Path, server: Server,
                                                  small_specs: None) -> None:
    table = _serve(server, "dtd")
    good = server.files["dtd-r1.0.1.tar.gz"]
    server.files["dtd-r1.0.1.tar.gz"] = good[:-40] + bytes(40)
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        prep.prepare_dataset("dtd", root, table=table)
    message = str(info.value)
    assert "dtd-r1.0.1.tar.gz" in message and "checksum mismatch" in message
    assert hashlib.md5(good).hexdigest() in message
    assert hashlib.md5(server.files["dtd-r1.0.1.tar.gz"]).hexdigest() in message
    assert list(root.iterdir()) == []


def test_archive_without_checksum_refused_by_structure(tmp_path: Path, server: Server,
                                                       small_specs: None) -> None:
    table = _serve(server, "ucf101")
    server.files["UCF-101-midframes.zip"] = _zip(_images("frames", UCF))  # wrong top folder
    root = tmp_path / "data"
    with pytest.raises(DataError, match="has no 'UCF-101-midframes'.*not the archive"):
        prep.prepare_dataset("ucf101", root, table=table)
    assert list(root.iterdir()) == []


def test_split_file_checked_by_structure(tmp_path: Path, server: Server,
                                         small_specs: None) -> None:
    table = _serve(server, "eurosat")
    server.files["split_zhou_EuroSAT.json"] = b"<html>sign in</html>"
    root = tmp_path / "data"
    with pytest.raises(DataError, match="split_zhou_EuroSAT.json is not valid JSON.*deleted"):
        prep.prepare_dataset("eurosat", root, table=table)
    assert list(root.iterdir()) == []
    assert server.served("EuroSAT.zip") == 0  # refused before the big archive


def test_drive_web_page_instead_of_file(tmp_path: Path, server: Server) -> None:
    server.files["file.json"] = b"<html>quota exceeded</html>"
    server.types["file.json"] = "text/html; charset=utf-8"
    with pytest.raises(DataError, match="Google Drive answered with a web page"):
        download((f"{server.url}/drive.google.com/file.json",), tmp_path / "file.json",
                 label="x", pause=0)


def test_rerun_is_a_no_op(tmp_path: Path, server: Server, small_specs: None) -> None:
    table = _serve(server, "oxford_pets")
    root = tmp_path / "data"
    assert prep.prepare_dataset("oxford_pets", root, table=table).status == "prepared"
    before = len(server.requests)
    again = prep.prepare_dataset("oxford_pets", root, table=table)
    assert again.status == "already prepared"
    assert len(server.requests) == before
    # An existing but incomplete folder is never written into.
    (root / "oxford_pets" / "images" / "beagle_1.jpg").unlink()
    with pytest.raises(DataError, match="exists but fails the check.*move it aside"):
        prep.prepare_dataset("oxford_pets", root, table=table)


def test_existing_image_folder_left_alone_on_failure(tmp_path: Path, server: Server,
                                                     small_specs: None) -> None:
    table = _serve(server, "food101")
    del server.files["food-101.tar.gz"]
    root = tmp_path / "data"
    with pytest.raises(DataError, match="food-101.tar.gz: download failed .*HTTP 404"):
        prep.prepare_dataset("food101", root, table=table)
    assert list(root.iterdir()) == []


# ----------------------------------------------------------------------------- downloads


def test_resume_after_connection_cut(tmp_path: Path, server: Server) -> None:
    data = np.random.default_rng(0).bytes(3_000_000)
    server.files["big.tar"] = data
    server.cut["big.tar"] = 1_234_567
    dest = tmp_path / "big.tar"
    download((f"{server.url}/big.tar",), dest, label="big", pause=0)
    assert dest.read_bytes() == data
    assert server.requests == [("big.tar", None), ("big.tar", "bytes=1234567-")]
    assert not (tmp_path / "big.tar.part").exists()


def test_interrupted_run_resumes_on_next_run(tmp_path: Path, server: Server) -> None:
    data = np.random.default_rng(1).bytes(2_500_000)
    server.files["big.tar"] = data
    dest = tmp_path / "big.tar"
    server.cut["big.tar"] = 1_000_000
    with pytest.raises(DataError, match="partial file .*big.tar.part.*kept"):
        download((f"{server.url}/big.tar",), dest, label="big", retries=1, pause=0)
    assert (tmp_path / "big.tar.part").stat().st_size == 1_000_000
    download((f"{server.url}/big.tar",), dest, label="big", pause=0)
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("big.tar", "bytes=1000000-")


def test_server_ignoring_range_restarts(tmp_path: Path, server: Server) -> None:
    data = np.random.default_rng(2).bytes(1_500_000)
    server.files["big.tar"] = data
    server.ignore_range = True
    server.cut["big.tar"] = 700_000
    dest = tmp_path / "big.tar"
    download((f"{server.url}/big.tar",), dest, label="big", pause=0)
    assert dest.read_bytes() == data


def test_prepare_resumes_a_cut_archive(tmp_path: Path, server: Server, small_specs: None) -> None:
    table = _serve(server, "eurosat")
    size = len(server.files["EuroSAT.zip"])
    server.cut["EuroSAT.zip"] = size // 2
    root = tmp_path / "data"
    assert prep.prepare_dataset("eurosat", root, table=table).report.ok  # type: ignore[union-attr]
    assert ("EuroSAT.zip", f"bytes={size // 2}-") in server.requests


def test_download_only_then_from(tmp_path: Path, server: Server, small_specs: None) -> None:
    table = {**_serve(server, "dtd"), **_serve(server, "stanford_cars")}
    carried = tmp_path / "carried"
    files, manual = prep.download_only(["dtd", "stanford_cars"], carried, table=table)
    assert sorted(p.name for p in files) == ["dtd-r1.0.1.tar.gz", "split_zhou_DescribableTextures.json",
                                             "split_zhou_StanfordCars.json"]
    assert len(manual) == 1 and "cars_train.tgz" in manual[0] and "--from" in manual[0]
    server.httpd.shutdown()  # the "cluster": no network from here on
    root = tmp_path / "data"
    outcome = prep.prepare_dataset("dtd", root, from_dir=carried, table=table)
    assert outcome.report is not None and outcome.report.ok
    assert (carried / "dtd-r1.0.1.tar.gz").is_file()  # --from files are the user's: kept


def test_checksums_come_from_torchvision() -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets import imagenet

    table = prep.recipes()
    by_name = {s.name: s for r in table.values() for s in r.files}
    assert by_name["dtd-r1.0.1.tar.gz"].checksum == f"md5:{tvd.DTD._MD5}"
    assert by_name["dtd-r1.0.1.tar.gz"].urls == (tvd.DTD._URL,)
    assert by_name["ILSVRC2012_img_val.tar"].checksum == f"md5:{imagenet.ARCHIVE_META['val'][1]}"
    assert by_name["split_zhou_OxfordPets.json"].urls == (
        drive_url("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),)
    assert set(table) == set(specs.DATASETS) - {"synthetic"}
    assert {n for n, r in table.items() if not r.automatic} == {"imagenet", "stanford_cars"}


def test_readme_shows_the_source_table() -> None:
    assert prep.source_table() in README.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- progress and CLI


def test_progress_reports_bytes_to_the_end(tmp_path: Path, server: Server,
                                           small_specs: None) -> None:
    table = _serve(server, "food101")
    events: list[tuple[str, str, int, int | None]] = []
    prep.prepare_dataset("food101", tmp_path / "data", table=table,
                         progress=lambda *e: events.append(e))
    size = len(ARCHIVES["food101"]["food-101.tar.gz"])
    for stage in ("download", "verify", "extract"):
        done = [d for s, label, d, t in events if s == stage and label.endswith("food-101.tar.gz")]
        assert done == sorted(done) and done[-1] == size, stage
        totals = {t for s, label, _, t in events if s == stage and label.endswith("food-101.tar.gz")}
        assert totals == {size}, stage


def test_cli_prepare_shows_bars_runs_the_check_and_reruns(tmp_path: Path, server: Server,
                                                          small_specs: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    table = {**_serve(server, "dtd"), **_serve(server, "eurosat")}
    monkeypatch.setattr(prep, "recipes", lambda: table)
    record = io.StringIO()
    monkeypatch.setattr(cli_data, "_progress_console",
                        lambda: Console(file=record, force_terminal=True, width=160))
    root = tmp_path / "data"
    result = CliRunner().invoke(app, ["data", "prepare", "dtd", "eurosat", "--root", str(root)])
    assert result.exit_code == 0, result.output
    bars = record.getvalue()
    for text in ("download", "extract", "dtd-r1.0.1.tar.gz", "EuroSAT.zip", "kB", "/s"):
        assert text in bars, text
    assert "datasets under" in result.output and "ok" in result.output  # the check's table
    assert "dtd: prepared" in bars

    record.truncate(0)
    again = CliRunner().invoke(app, ["data", "prepare", "dtd", "--root", str(root)])
    assert again.exit_code == 0
    assert "dtd: already prepared" in record.getvalue()


def test_cli_all_skips_what_needs_from_and_says_what_to_obtain(
        tmp_path: Path, server: Server, small_specs: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    table = {**_serve(server, "dtd"), **_serve(server, "stanford_cars")}
    table = {n: r for n, r in table.items() if n in ("imagenet", "dtd", "stanford_cars")}
    monkeypatch.setattr(prep, "recipes", lambda: table)
    record = io.StringIO()
    monkeypatch.setattr(cli_data, "_progress_console",
                        lambda: Console(file=record, width=400))
    result = CliRunner().invoke(app, ["data", "prepare", "all", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = record.getvalue()
    assert "skipped: imagenet cannot be downloaded automatically" in text
    assert "skipped: stanford_cars cannot be downloaded automatically" in text
    assert (tmp_path / "dtd").is_dir() and not (tmp_path / "stanford_cars").exists()


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "synthetic", "--root", str(tmp_path)])
    assert isinstance(result.exception, DataError) and "rayot data synth" in str(result.exception)
    result = runner.invoke(app, ["data", "prepare", "dtd"])
    assert isinstance(result.exception, DataError) and "--root" in str(result.exception)
    result = runner.invoke(app, ["data", "prepare", "imagenet", "--root", str(tmp_path / "r")])
    assert isinstance(result.exception, DataError) and "--from DIR" in str(result.exception)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("name", "fname"), [
    ("oxford_pets", "split_zhou_OxfordPets.json"), ("dtd", "split_zhou_DescribableTextures.json"),
    ("eurosat", "split_zhou_EuroSAT.json")])
def test_published_split_files_pass_the_structure_check(name: str, fname: str) -> None:
    from data_trees import coop_splits

    recipe = prep.recipes()[name]
    source = next(s for s in recipe.files if s.name == fname)
    prep.verify_file(recipe, source, coop_splits() / fname, delete=False)
