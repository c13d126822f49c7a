"""The remote-sensing domain plugin: GeoTIFF scenes (rasterio) to chips, RS VQA / grounding / classification /
captioning, and their metrics.

rasterio is imported only when a conversion runs (see common.require_rasterio).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.dataset import ConversionReport, write_dataset
from mini_internvl_adapt.data_format.samples import Sample

from .common import DOMAIN, TASKS

FORMATS = ("scene", "manifest", "rsvqa", "dior-rsvg", "geochat")


def detect_format(source: Path) -> str:
    """Guess the source format from its files; raises ValueError when nothing fits."""
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in (".tif", ".tiff"):
            return "scene"
        if suffix == ".csv":
            return "manifest"
        if suffix == ".json":
            return "geochat"
    elif source.is_dir():
        if any(source.glob("*_split_*_questions.json")):
            return "rsvqa"
        if (source / "Annotations").is_dir():
            return "dior-rsvg"
        if any(p.suffix.lower() in (".tif", ".tiff") for p in source.rglob("*")):
            return "scene"
    else:
        raise FileNotFoundError(f"{source}: no such file or folder")
    raise ValueError(f"{source}: cannot tell the source format; pass --format ({', '.join(FORMATS)})")


class RemoteSensingDomain:
    """GeoTIFF scenes and remote-sensing benchmarks (RSVQA, DIOR-RSVG, GeoChat, manifests)."""

    name = DOMAIN
    tasks = TASKS

    def add_convert_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of `adapt convert --domain remote-sensing` (defaults None: only given ones pass)."""
        add = parser.add_argument
        add("--format", choices=FORMATS, help="source format (default: detected from the files)")
        add(
            "--labels",
            type=Path,
            help="scene: GeoJSON of labelled features, any CRS (default: <scene>.geojson)",
        )
        add("--label-field", help="scene: the feature property holding the class (default: label)")
        add("--point-size", type=float, help="scene: box side in pixels for Point features (default 16)")
        add("--chip-size", type=int, help="scene: chip side in pixels (default 448)")
        add("--stride", type=int, help="scene: step between chips in pixels (default: the chip size)")
        add("--min-valid", type=float, help="scene: skip chips with a smaller valid share (default 0.5)")
        add("--count-questions", action="store_true", default=None, help="scene: add 'How many X' questions")
        add("--image-format", choices=("png", "jpg"), help="scene: chip image format (default png, lossless)")
        add("--bands", help="1-based bands to render as RGB (or one for grey), e.g. 4,3,2")
        add(
            "--stretch",
            choices=("none", "percentile", "minmax"),
            help="default: uint8 as is, others percentile",
        )
        add("--percentiles", help="LO,HI of the percentile stretch (default 2,98)")
        add("--max-size", type=int, help="manifest/rsvqa: longest side of a whole raster (default 4096)")
        add("--image-root", type=Path, help="geochat: folder of the images (default: the JSON's folder)")
        add(
            "--test-fraction",
            type=float,
            help="share of groups (scenes, images) in test when no split is given",
        )
        add("--seed", type=int, help="seed of the split (default 0)")
        add(
            "--workers",
            type=int,
            help="parallel workers (default 4): processes chipping a scene (at most one per core), "
            "threads for whole images",
        )

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of `adapt score --domain remote-sensing`."""
        parser.add_argument(
            "--geojson", type=Path, help="write predicted grounding boxes as GeoJSON in the scene CRS"
        )

    def convert(self, source: Path, out: Path, **options: Any) -> ConversionReport:
        """Convert a remote-sensing source (see FORMATS) into a shared-format dataset folder.

        Raises:
            ValueError: Unknown options or values, or bands that need --bands.
            FileNotFoundError: The source is missing or holds nothing of its format.
        """
        from .common import require_rasterio
        from .raster import RenderOptions, parse_bands, parse_percentiles

        require_rasterio()
        source, out = Path(source), Path(out)
        fmt = options.pop("format", None) or detect_format(source)
        render = RenderOptions(
            bands=parse_bands(options.pop("bands", None)),
            stretch=options.pop("stretch", None),
            percentiles=parse_percentiles(options.pop("percentiles", None)),
        )
        common = {k: options.pop(k) for k in ("test_fraction", "seed", "workers") if k in options}
        max_size = options.pop("max_size", 4096)
        if max_size < 1:
            raise ValueError(f"--max-size must be a positive number of pixels, got {max_size}")
        report = ConversionReport(domain=DOMAIN, source=str(source), details={"format": fmt})
        if fmt == "scene":
            from .scene import SceneOptions, convert_scene

            labels = options.pop("labels", None)
            scene_keys = (
                "label_field",
                "point_size",
                "chip_size",
                "stride",
                "min_valid",
                "count_questions",
                "image_format",
            )
            opts = SceneOptions(
                labels=Path(labels) if labels else None,
                render=render,
                **{k: options.pop(k) for k in scene_keys if k in options},
                **common,
            )
            _no_leftovers(fmt, options)
            splits = convert_scene(source, out, opts, report)
        elif fmt == "manifest":
            from .manifest import convert_manifest

            _no_leftovers(fmt, options)
            splits = convert_manifest(source, out, report, render, max_size=max_size, **common)
        elif fmt == "rsvqa":
            from .rsvqa import convert_rsvqa

            common.pop("test_fraction", None)
            common.pop("seed", None)
            _no_leftovers(fmt, options)
            splits = convert_rsvqa(source, out, report, render, max_size=max_size, **common)
        elif fmt == "dior-rsvg":
            from .dior_rsvg import convert_dior_rsvg

            _no_leftovers(fmt, options)
            splits = convert_dior_rsvg(source, out, report, render, **common)
        elif fmt == "geochat":
            from .geochat import convert_geochat

            image_root = options.pop("image_root", None)
            _no_leftovers(fmt, options)
            splits = convert_geochat(source, out, report, render, image_root=image_root, **common)
        else:
            raise ValueError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        write_dataset(out, splits, report)
        return report

    def score(
        self, samples: Iterable[Sample], predictions: Mapping[str, str], **options: Any
    ) -> dict[str, Any]:
        """VQA per question type, grounding Acc@0.5 / mean IoU, classification, captioning.

        Options:
            geojson: a path; predicted grounding boxes are written there in the scene CRS.
        """
        from .scoring import predictions_to_geojson, score_samples

        samples = list(samples)
        geojson = options.pop("geojson", None)
        if options:
            raise ValueError(f"unknown score option(s) for remote-sensing: {', '.join(sorted(options))}")
        metrics = score_samples(samples, predictions)
        if geojson is not None:
            metrics["geojson"] = predictions_to_geojson(samples, predictions, Path(geojson))
        return metrics

    def demo_source(self) -> Path:
        """The bundled synthetic scene (4-band uint16 GeoTIFF with nodata + a GeoJSON of labelled features)."""
        return Path(__file__).parent / "demo"

    def demo_convert_options(self) -> dict[str, Any]:
        """The demo scene has blue, green, red, nir bands: render 3,2,1 in small chips, with count questions."""
        return {
            "format": "scene",
            "bands": "3,2,1",
            "chip_size": 128,
            "count_questions": True,
            "test_fraction": 0.3,
        }


def _no_leftovers(fmt: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ValueError(
            f"option(s) {', '.join('--' + k.replace('_', '-') for k in sorted(options))} "
            f"do not apply to the '{fmt}' format"
        )


__all__ = ["FORMATS", "RemoteSensingDomain", "detect_format"]
