"""The scene source: GeoTIFF + GeoJSON -> chips with grounding samples, bad inputs, and the map round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from mini_internvl_adapt.domains.remote_sensing import RemoteSensingDomain  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform_geom  # noqa: E402

from mini_internvl_adapt.cli import main  # noqa: E402
from mini_internvl_adapt.data_format.samples import read_samples  # noqa: E402
from mini_internvl_adapt.metrics.boxes import parse_boxes  # noqa: E402

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000, 5600000, 10, 10)


def map_box(x1: float, y1: float, x2: float, y2: float, transform=TRANSFORM) -> dict:
    ring = [list(transform @ p) for p in ((x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1))]
    return {"type": "Polygon", "coordinates": [ring]}


def make_scene(tmp: Path, size: int = 256, nodata_rows: int = 0) -> Path:
    """A 4-band uint16 scene (blue, green, red, nir) with nodata 0 in its top rows."""
    rng = np.random.default_rng(1)
    data = rng.integers(500, 4000, size=(4, size, size)).astype(np.uint16)
    data[:, :nodata_rows, :] = 0
    path = tmp / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=size,
        width=size,
        count=4,
        dtype="uint16",
        crs=CRS,
        transform=TRANSFORM,
        nodata=0,
    ) as dst:
        dst.write(data)
        dst.descriptions = ("blue", "green", "red", "nir")
    return path


def write_labels(path: Path, features: list[tuple[str, dict]], crs: str | None = "EPSG:4326") -> Path:
    """GeoJSON in WGS84 (no crs member, RFC 7946) or with a named CRS; geometries given in the scene CRS."""
    out = []
    for label, geom in features:
        if crs == "EPSG:4326":
            geom = transform_geom(CRS, "EPSG:4326", geom)
        out.append({"type": "Feature", "properties": {"label": label}, "geometry": geom})
    doc: dict = {"type": "FeatureCollection", "features": out}
    if crs not in (None, "EPSG:4326"):
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def convert(source: Path, out: Path, **options: object):
    options = {"bands": "3,2,1", "chip_size": 128, "workers": 2, **options}
    return RemoteSensingDomain().convert(source, out, **options)


def all_samples(out: Path) -> list:
    return [
        s
        for split in ("train", "test")
        if (out / f"{split}.jsonl").exists()
        for s in read_samples(out / f"{split}.jsonl")
    ]


def test_features_become_grounding_boxes_of_their_chip(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    labels = write_labels(
        tmp_path / "labels.geojson",
        [
            ("building", map_box(10, 20, 40, 50)),  # chip (0, 0)
            ("building", map_box(60, 70, 100, 90)),  # chip (0, 0)
            ("pond", map_box(150, 10, 170, 30)),  # chip (128, 0)
            ("tree", {"type": "Point", "coordinates": list(TRANSFORM @ (200, 200))}),  # chip (128, 128)
            ("road", map_box(120, 140, 140, 150)),  # straddles chips: 8/20 left, 12/20 right -> (128, 128)
        ],
    )
    report = convert(
        scene, tmp_path / "ds", labels=labels, point_size=10, count_questions=True, test_fraction=0.5
    )
    assert report.read == 1 + 5 and report.converted == 6 and not report.skipped
    samples = {s.id: s for s in all_samples(tmp_path / "ds")}
    building = samples["scene/0_0/building"]
    assert building.task == "rs-grounding" and building.question == "<image>\nDetect <ref>building</ref>"
    # Pixels / 128 * 1000, rounded; reprojection through WGS84 moves nothing by more than a millimetre.
    assert building.answer == "<ref>building</ref><box>[[78, 156, 312, 391], [469, 547, 781, 703]]</box>"
    assert building.meta["boxes"] == [[10.0, 20.0, 40.0, 50.0], [60.0, 70.0, 100.0, 90.0]]
    assert building.meta["window"] == [0, 0, 128, 128]
    assert building.meta["crs"] == CRS and building.meta["transform"] == [
        10.0,
        0.0,
        500000.0,
        0.0,
        -10.0,
        5600000.0,
    ]
    assert samples["scene/0_0/count/building"].answer == "2"
    tree = samples["scene/128_128/tree"]
    assert tree.meta["boxes"] == [[67.0, 67.0, 77.0, 77.0]]  # point (200, 200) +- 5 px, in chip pixels
    assert tree.meta["transform"][2] == 500000 + 128 * 10 and tree.meta["transform"][5] == 5600000 - 128 * 10
    road = samples["scene/128_128/road"]
    assert road.meta["boxes"] == [[0.0, 12.0, 12.0, 22.0]]  # clipped to the chip
    assert "scene/0_128/road" not in samples
    image = Image.open(tmp_path / "ds" / building.images[0])
    assert image.size == (128, 128) and image.mode == "RGB"
    assert building.widths == [128] and building.heights == [128]
    # Grouped split: every chip row is in one split only.
    rows = {}
    for split in ("train", "test"):
        for s in read_samples(tmp_path / "ds" / f"{split}.jsonl"):
            rows.setdefault(s.meta["window"][1], set()).add(split)
    assert all(len(v) == 1 for v in rows.values()) and len({next(iter(v)) for v in rows.values()}) == 2


def test_round_trip_box_to_chip_and_back_to_the_map(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    original = map_box(137.0, 150.0, 181.0, 203.0)  # in chip (128, 128)
    labels = write_labels(tmp_path / "l.geojson", [("ship", original)], crs="EPSG:4326")
    convert(scene, tmp_path / "ds", labels=labels, test_fraction=1.0)
    test = tmp_path / "ds" / "test.jsonl"
    sample = read_samples(test)[0]
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"id": sample.id, "answer": sample.answer}) + "\n")
    geojson = tmp_path / "pred.geojson"
    domain = RemoteSensingDomain()
    metrics = domain.score(read_samples(test), {sample.id: sample.answer}, geojson=geojson)
    assert metrics["geojson"]["features"] == 1 and metrics["geojson"]["crs"] == CRS
    doc = json.loads(geojson.read_text())
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    ring = np.array(doc["features"][0]["geometry"]["coordinates"][0])
    want = np.array(original["coordinates"][0])
    # Within one pixel (10 m) of the original feature, corner by corner.
    assert np.abs(ring - want).max() < 10.0
    assert doc["features"][0]["properties"]["iou"] > 0.9


def test_rotated_raster_without_crs_takes_labels_in_its_own_coordinates(
    shared_data: Path, tmp_path: Path
) -> None:
    rotated = shared_data / "geotiff" / "rotated.tif"
    with rasterio.open(rotated) as ds:
        transform = ds.transform
    labels = tmp_path / "rot.geojson"
    write_labels(labels, [("spot", map_box(2, 3, 6, 9, transform))], crs=None)
    out = tmp_path / "ds"
    report = RemoteSensingDomain().convert(
        rotated, out, labels=labels, chip_size=16, min_valid=0.1, test_fraction=0
    )
    [sample] = all_samples(out)
    assert report.converted == 2 and sample.meta["crs"] is None
    assert sample.meta["boxes"] == [[2.0, 3.0, 6.0, 9.0]]
    assert sample.meta["transform"] == pytest.approx(list(transform)[:6])


def test_bad_inputs_are_skipped_with_file_and_reason(shared_data: Path, tmp_path: Path) -> None:
    geotiff = shared_data / "geotiff"
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("RGB.byte.tif", "corrupt.tif", "all-nodata.tif"):
        (batch / name).symlink_to(geotiff / name)
    # One label file per scene (<scene>.geojson); boxes in each raster's pixels, written in its CRS.
    for name, boxes in {
        "RGB.byte.tif": [(300, 300, 340, 330), (5000, 5000, 5010, 5010)],  # the second is far outside
        "corrupt.tif": [(600, 600, 700, 700)],  # the block at (512, 512) fails to read
        "all-nodata.tif": [(10, 10, 20, 20)],
    }.items():
        with rasterio.open(geotiff / name) as ds:
            feats = [("thing", map_box(*b, ds.transform)) for b in boxes]
            write_labels(batch / f"{Path(name).stem}.geojson", feats, crs=f"EPSG:{ds.crs.to_epsg()}")
    report = RemoteSensingDomain().convert(batch, tmp_path / "ds", chip_size=256, workers=2)
    reasons = {
        Path(s.source.split("#")[0]).name
        + ("#" + s.source.split("#")[1] if "#" in s.source else ""): s.reason
        for s in report.skipped
    }
    # The broken block at (512, 512) fails in the statistics read or in its chip's read.
    assert "RasterioIOError: Read failed" in reasons["corrupt.tif"]
    assert "no valid pixel" in reasons["all-nodata.tif"]
    assert "lies outside the scene RGB.byte.tif" in reasons["RGB.byte.geojson#features[1]"]
    assert report.read == report.converted + len(report.skipped) == 3 + 4
    assert report.converted == 2  # RGB.byte.tif and its in-scene feature
    assert not any((tmp_path / "ds" / "images").glob("corrupt_*"))  # the broken scene leaves no chips behind
    saved = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert saved["skipped"] == 5 and saved["read"] == 7


def test_unknown_label_crs_is_reported_and_other_scenes_convert(tmp_path: Path) -> None:
    make_scene(tmp_path)
    folder = tmp_path / "scenes"
    folder.mkdir()
    shutil.copy(tmp_path / "scene.tif", folder / "a.tif")
    shutil.copy(tmp_path / "scene.tif", folder / "b.tif")
    write_labels(folder / "a.geojson", [("car", map_box(10, 10, 30, 30))], crs="EPSG:32633")
    write_labels(folder / "b.geojson", [("car", map_box(10, 10, 30, 30))], crs="EPSG:999999")
    report = convert(folder, tmp_path / "ds", test_fraction=0.5)
    reasons = {Path(s.source).name: s.reason for s in report.skipped}
    assert "unknown CRS 'EPSG:999999'" in reasons["b.geojson"]
    assert "label file" in reasons["b.tif"]
    assert report.read == report.converted + len(report.skipped)
    assert [s.meta["scene"] for s in all_samples(tmp_path / "ds")] == ["a"]


def test_low_valid_chips_are_skipped_and_counted(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, nodata_rows=100)  # chips of the first row are 100/128 nodata
    labels = write_labels(
        tmp_path / "l.geojson", [("a", map_box(10, 110, 20, 120)), ("a", map_box(10, 200, 20, 210))]
    )
    report = convert(scene, tmp_path / "ds", labels=labels, test_fraction=0)
    assert report.details["chips"]["low_valid"] == 1 and report.details["chips"]["written"] == 1
    assert "is in no written chip with at least half of its box" in report.skipped[0].reason
    report = convert(scene, tmp_path / "ds2", labels=labels, test_fraction=0, min_valid=0.2)
    assert report.details["chips"]["written"] == 2 and not report.skipped


def test_five_band_scene_needs_bands(tmp_path: Path) -> None:
    path = tmp_path / "s2.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=8, width=8, count=5, dtype="uint16", crs=CRS, transform=TRANSFORM
    ) as dst:
        dst.write(np.ones((5, 8, 8), dtype=np.uint16))
    labels = write_labels(tmp_path / "s2.geojson", [("a", map_box(1, 1, 4, 4))])
    report = RemoteSensingDomain().convert(path, tmp_path / "ds", labels=labels, chip_size=8)
    assert "--bands" in report.skipped[0].reason and "5 bands" in report.skipped[0].reason


def test_demo_converts_with_default_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The command a user types first: no --bands; the demo's bands are described blue, green, red, nir.
    demo = RemoteSensingDomain().demo_source()
    args = ["convert", "--domain", "remote-sensing", "--source", str(demo / "scene.tif"),
            "--labels", str(demo / "scene.geojson"), "--out", str(tmp_path / "ds")]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["read"] == summary["converted"] + summary["skipped"]
    assert summary["converted"] > 20 and summary["samples"]["train"] + summary["samples"]["test"] > 0
    assert summary["bands"] == {"scene": [3, 2, 1]}  # true colour
    # The only skip is the feature placed outside the scene on purpose.
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert [s["reason"] for s in report["skips"]] == ["feature 'building' lies outside the scene scene.tif"]


def test_unusable_scene_skips_its_features_with_the_scene_reason(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"  # 4 bands, neither described nor colour-interpreted: no default
    with rasterio.open(
        path, "w", driver="GTiff", height=64, width=64, count=4, dtype="uint16", crs=CRS, transform=TRANSFORM
    ) as dst:
        dst.write(np.full((4, 64, 64), 1000, dtype=np.uint16))
    boxes = [("a", map_box(1, 1, 10, 10)), ("b", map_box(20, 20, 30, 30)), ("a", map_box(40, 40, 50, 50))]
    labels = write_labels(tmp_path / "plain.geojson", boxes)
    report = RemoteSensingDomain().convert(path, tmp_path / "ds", labels=labels, chip_size=32)
    assert report.read == 4 and report.converted == 0 and len(report.skipped) == 4
    assert report.read == report.converted + len(report.skipped)
    scene, *features = report.skipped
    assert str(scene.source) == str(path) and "4 bands and no default RGB mapping" in scene.reason
    assert "4,3,2" not in scene.reason and "Bands: 1=no description" in scene.reason
    for feat in features:
        assert "less than half" not in feat.reason
        assert feat.reason.endswith(
            f"was not converted because its scene was skipped ({path}; see its entry)"
        )


def test_cli_convert_and_score_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = RemoteSensingDomain()
    out = tmp_path / "ds"
    args = [
        "convert",
        "--domain",
        "remote-sensing",
        "--source",
        str(domain.demo_source()),
        "--out",
        str(out),
        "--bands",
        "3,2,1",
        "--chip-size",
        "128",
        "--count-questions",
        "--test-fraction",
        "0.3",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["read"] == summary["converted"] + summary["skipped"] and summary["samples"]["test"] > 0
    test = read_samples(out / "test.jsonl")
    preds = tmp_path / "pred.jsonl"
    # A perfect model, except that it answers one grounding question without a box.
    grounding = [s for s in test if s.task == "rs-grounding"]
    rows = [{"id": s.id, "answer": s.answer} for s in test if s is not grounding[0]]
    rows.append({"id": grounding[0].id, "answer": "I do not know"})
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    geojson = tmp_path / "boxes.geojson"
    assert (
        main(
            [
                "score",
                "--domain",
                "remote-sensing",
                "--data",
                str(out / "test.jsonl"),
                "--predictions",
                str(preds),
                "--geojson",
                str(geojson),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    n = len(grounding)
    assert metrics["grounding"]["misses"] == 1 and metrics["grounding"]["count"] == n
    assert metrics["grounding"]["acc@0.5"] == pytest.approx((n - 1) / n)
    assert metrics["vqa"]["per_type"]["object_count"]["accuracy"] == 1.0
    assert json.loads(geojson.read_text())["features"]
    assert (tmp_path / "pred.metrics.json").is_file()
    boxes = [parse_boxes(s.answer) for s in grounding]
    assert all(0 <= v <= 1000 for b in boxes for box in b for v in box)


def test_a_chip_that_fails_to_read_drops_its_scene_and_its_written_chips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mini_internvl_adapt.domains.remote_sensing import chips

    scene = make_scene(tmp_path)
    labels = write_labels(
        tmp_path / "l.geojson", [("a", map_box(10, 10, 20, 20)), ("a", map_box(200, 200, 210, 210))]
    )
    real = chips.read_window

    def flaky(ds, bands, col, row, width, height):  # type: ignore[no-untyped-def]
        if (col, row) == (128, 128):
            raise rasterio.errors.RasterioIOError("Read failed. See previous exception for details.")
        return real(ds, bands, col, row, width, height)

    monkeypatch.setattr(chips, "read_window", flaky)
    report = convert(scene, tmp_path / "ds", labels=labels, workers=1)
    assert report.skipped[0].reason.startswith("read failed at window [128, 128, 128, 128]: RasterioIOError")
    assert report.read == report.converted + len(report.skipped) == 3
    assert not list((tmp_path / "ds" / "images").glob("*.png"))


def test_one_band_chips_are_grey_pngs_read_back_as_equal_rgb(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    labels = write_labels(tmp_path / "l.geojson", [("field", map_box(10, 20, 40, 50))])
    report = convert(scene, tmp_path / "ds", labels=labels, bands="4", test_fraction=0.0)
    (sample,) = all_samples(tmp_path / "ds")
    (stretch,) = report.details["stretch"].values()
    with Image.open(tmp_path / "ds" / sample.images[0]) as image:
        assert image.mode == "L" and image.size == (128, 128)
        rgb = np.asarray(image.convert("RGB"))
    with rasterio.open(scene) as ds:
        nir = ds.read(4, window=((0, 128), (0, 128))).astype(np.float64)
    lo, hi = stretch["lo"][0], stretch["hi"][0]
    expected = np.clip((nir - lo) / (hi - lo), 0, 1) * 255
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - expected).max() <= 1.0  # the percentile stretch of band 4, rounded


def test_every_feature_reaches_its_chip_on_a_scene_with_many_of_both(tmp_path: Path) -> None:
    # 36 features on a 6x6 grid of 40 px chips (stride 40): each lies in exactly one chip.
    scene = make_scene(tmp_path, size=240)
    features = [
        ("car", map_box(40 * i + 5, 40 * j + 5, 40 * i + 25, 40 * j + 15)) for i in range(6) for j in range(6)
    ]
    labels = write_labels(tmp_path / "l.geojson", features)
    convert(scene, tmp_path / "ds", labels=labels, chip_size=40, test_fraction=0.0)
    samples = all_samples(tmp_path / "ds")
    assert len(samples) == 36
    for sample in samples:
        assert sample.meta["boxes"] == [[5.0, 5.0, 25.0, 15.0]], sample.id


def test_a_feature_in_an_edge_chips_padding_is_skipped_not_boxed_on_black(tmp_path: Path) -> None:
    # 200 px scene, 128 px chips: the right chip column covers scene columns 128-199 and pads 200-255.
    scene = make_scene(tmp_path, size=200)
    labels = write_labels(
        tmp_path / "labels.geojson",
        [
            ("padding", map_box(210, 20, 240, 50)),  # wholly past the scene's right edge
            ("edge", map_box(170, 60, 210, 90)),  # three quarters in the scene: assigned
            ("mostly_out", map_box(190, 100, 230, 120)),  # a quarter in the scene: not assigned
        ],
    )
    report = convert(scene, tmp_path / "out", labels=labels, test_fraction=0)
    boxes = {
        s.meta["label"]: s.meta["boxes"] for s in all_samples(tmp_path / "out") if s.task == "rs-grounding"
    }
    assert boxes == {
        "edge": [[42.0, 60.0, 72.0, 90.0]]
    }  # clipped at the scene edge (x 200 -> 72 in the chip)
    skips = {Path(s.source).name: s.reason for s in report.skipped}
    assert "lies outside the scene" in skips["labels.geojson#features[0]"]
    assert "at least half of its box" in skips["labels.geojson#features[2]"]
    assert report.read == report.converted + len(report.skipped)


def test_overlapping_chips_never_put_a_feature_in_both_splits(tmp_path: Path) -> None:
    # A stride under the chip size: neighbouring chip rows share pixels. Test rows are one seeded run,
    # and train chips sharing pixels with a test chip are dropped (and counted), so nothing leaks.
    scene = make_scene(tmp_path, size=256)
    features = [
        (f"f{r}_{c}", map_box(c + 40, r + 40, c + 56, r + 56)) for r in range(0, 256, 64) for c in (0, 128)
    ]
    labels = write_labels(tmp_path / "labels.geojson", features)
    out = tmp_path / "out"
    report = convert(scene, out, labels=labels, stride=64, test_fraction=0.34, seed=3)
    split_of: dict[str, set[str]] = {}
    windows: dict[str, list[list[int]]] = {"train": [], "test": []}
    for split in ("train", "test"):
        for s in read_samples(out / f"{split}.jsonl"):
            split_of.setdefault(s.meta["label"], set()).add(split)
            windows[split].append(s.meta["window"])
    assert windows["train"] and windows["test"]
    assert all(len(splits) == 1 for splits in split_of.values()), split_of
    for c, r, w, h in windows["train"]:
        assert all(abs(c - tc) >= w or abs(r - tr) >= h for tc, tr, _, _ in windows["test"])
    chips = report.details["chips"]
    assert chips["dropped_overlapping_test"] > 0
    referenced = {s.images[0] for s in all_samples(out)}
    assert {f"images/{p.name}" for p in (out / "images").iterdir()} == referenced  # dropped chips removed
    assert report.images == len(referenced)
