"""`geor1 data ...`: build GeoWorld, convert public data sets, inspect shards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geor1 import Geor1Error


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build GeoWorld, convert data sets to shards, inspect shards")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    w = dsub.add_parser("world", help="render GeoWorld (the embedded default data set) into shards")
    w.add_argument("--out", default="data/geoworld")
    w.add_argument("--num-train", type=int, default=2000)
    w.add_argument("--num-val", type=int, default=200)
    w.add_argument("--num-test", type=int, default=600)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--min-separation-km", type=float, default=60.0, help="minimum distance between any two places")
    w.set_defaults(handler=_world)

    n = dsub.add_parser(
        "instruct", help="generic questions about the images of pair shards (the demo's instruction-following data)"
    )
    n.add_argument("--shards", required=True, help="pair shards (ground.jpg + sat.jpg): a folder or a URL spec")
    n.add_argument("--out", required=True, help="folder for the describe shards")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--margin", type=float, default=0.1, help="a 'cover' answer must lead the second cover by this")
    n.add_argument("--more-margin", type=float, default=0.15, help="a 'more' answer must lead the second by this")
    n.add_argument("--max-images", type=int, default=2, help="images of a 'more' question: 2..this (at most 4)")
    n.set_defaults(handler=_instruct)

    i = dsub.add_parser("inspect", help="counts per split, schema check of every sample, a PNG grid of pairs")
    i.add_argument("path", help="folder of shards, or a shard URL spec (glob, brace range, pipe:, http(s):)")
    i.add_argument("--grid", default=None, help="PNG to write (default: <path>/inspect.png, ./inspect.png for a spec)")
    i.add_argument("--grid-count", type=int, default=8)
    i.set_defaults(handler=_inspect)

    c = dsub.add_parser("convert", help="convert a public data set into shards")
    csub = c.add_subparsers(dest="format", metavar="FORMAT", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder for shards + manifest.json")
    common.add_argument("--max-side", type=int, default=None, help="downscale images larger than this (px)")
    common.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
    common.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="hold this share of the training samples out as a 'val' split, by place (whole ~--place-km cells)",
    )
    common.add_argument("--place-km", type=float, default=1.0, help="side of a place for --val-fraction (km)")
    common.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction draw")
    cities = argparse.ArgumentParser(add_help=False)
    cities.add_argument("--val-cities", default="", help="comma-separated cities whose training samples are 'val'")

    f = csub.add_parser(
        "csv", parents=[common, cities], help="image folder + CSV (im2gps3k, YFCC4k, IMAGEO, OSV-5M, ...)"
    )
    f.add_argument("--csv", required=True)
    f.add_argument("--images", required=True, help="folder the image ids/paths are relative to")
    f.add_argument("--id-col", default="IMG_ID")
    f.add_argument("--lat-col", default="LAT")
    f.add_argument("--lon-col", default="LON")
    f.add_argument("--path-col", default=None, help="column with the image path (default: id + --ext)")
    f.add_argument("--sat-col", default=None, help="column with a satellite image path, for pair data")
    f.add_argument("--city-col", default=None, help="column with the city (needed by --val-cities)")
    f.add_argument("--country-col", default=None, help="ISO alpha-2 or a name (names are kept as country_name)")
    f.add_argument("--split", default="test")
    f.add_argument("--ext", default=".jpg")
    f.add_argument("--source", default=None, help="data set name (default: the CSV's file stem)")
    f.add_argument(
        "--lat-lon-check",
        choices=["auto", "off", "swap"],
        default="auto",
        help="auto: stop with an error when LAT/LON look swapped (by the share of points on land); "
        "swap: read them swapped; off: as the header says, unchecked",
    )
    f.set_defaults(handler=_convert_csv)

    v = csub.add_parser(
        "vigor", parents=[common, cities], help="VIGOR, or one's own cities in its layout (panorama/, satellite/)"
    )
    v.add_argument("--root", required=True)
    v.add_argument("--mode", choices=["cross", "same"], default="cross", help="with VIGOR's own split lists")
    v.add_argument("--cities", default="", help="comma-separated cities (default: every <City>/panorama/ folder)")
    v.add_argument("--test-cities", default="", help="comma-separated cities for the test split (the rest: train)")
    v.add_argument(
        "--max-sat-m",
        type=float,
        default=100.0,
        help="cities without split lists: a panorama's nearest satellite tile must be this close (m)",
    )
    v.set_defaults(
        handler=lambda ns: _convert(
            ns,
            "vigor",
            "VIGOR (research use; see its licence)",
            _rows(
                "vigor_rows",
                ns.root,
                mode=ns.mode,
                cities=_names(ns.cities) or None,
                test_cities=_names(ns.test_cities),
                max_sat_m=ns.max_sat_m,
            ),
        )
    )

    u = csub.add_parser("cvusa", parents=[common], help="CVUSA (splits/*-19zl.csv + a locations file)")
    u.add_argument("--root", required=True)
    u.add_argument("--locations", default="split_locations/all.csv")
    u.add_argument(
        "--location-columns",
        default="sat_lat,sat_lon,lat,lon,id",
        help="names of the header-less locations file's columns",
    )
    u.set_defaults(
        handler=lambda ns: _convert(
            ns,
            "cvusa",
            "CVUSA (research use; see its licence)",
            _rows("cvusa_rows", ns.root, ns.locations, ns.location_columns),
        )
    )

    a = csub.add_parser("cvact", parents=[common], help="CVACT (ACT_data.mat, streetview/, satview_polish/)")
    a.add_argument("--root", required=True)
    a.add_argument("--mat", default="ACT_data.mat")
    a.add_argument("--utm-zone", type=int, default=55)
    a.set_defaults(
        handler=lambda ns: _convert(
            ns,
            "cvact",
            "CVACT (research use; see its licence)",
            _rows("cvact_rows", ns.root, ns.mat, ns.utm_zone, True),
        )
    )

    cc = csub.add_parser(
        "cvcities", parents=[common, cities], help="CV-Cities (<City>/{ground,satellite}/, <City>.csv)"
    )
    cc.add_argument("--root", required=True)
    cc.add_argument("--test-cities", default="", help="comma-separated cities for the test split")
    cc.set_defaults(
        handler=lambda ns: _convert(
            ns,
            "cvcities",
            "CV-Cities (see its licence)",
            _rows("cvcities_rows", ns.root, _names(ns.test_cities)),
        )
    )


def _rows(name: str, *args, **kwargs):
    from geor1.data import convert

    return getattr(convert, name)(*args, **kwargs)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _convert(ns: argparse.Namespace, source: str, licence: str, rows) -> None:
    """Hold a val split out of the training rows (`--val-fraction`, `--val-cities`), then write the shards."""
    from geor1.data.convert import hold_out, write_rows

    rows, held = hold_out(rows, ns.val_fraction, _names(getattr(ns, "val_cities", "")), ns.seed, ns.place_km)
    extra = {"held_out": held} if held else None
    report = write_rows(rows, ns.out, source, licence, max_side=ns.max_side, strict=ns.strict, extra=extra)
    print(report.summary())
    if held:
        places = f" ({held['places']} of {held['of_places']} places)" if "places" in held else ""
        cities = f" (cities {', '.join(held['cities'])})" if "cities" in held else ""
        print(f"held out as 'val': {held['rows']} rows{cities}{places}; written: {report.written.get('val', 0)}")


def _convert_csv(ns: argparse.Namespace) -> None:
    from geor1.data.convert import csv_rows

    if _names(ns.val_cities) and not ns.city_col:
        raise Geor1Error("--val-cities needs --city-col, the CSV's city column")
    swap = {"auto": None, "swap": True, "off": False}[ns.lat_lon_check]  # auto: an error when they look swapped
    source = ns.source or Path(ns.csv).stem
    rows = csv_rows(
        ns.csv,
        ns.images,
        ns.id_col,
        ns.lat_col,
        ns.lon_col,
        ns.path_col,
        ns.sat_col,
        ns.city_col,
        ns.country_col,
        ns.split,
        ns.ext,
        swap_lat_lon=swap,
    )
    _convert(ns, source, "see the data set's own licence", rows)


def _world(ns: argparse.Namespace) -> None:
    from geor1.data.geoworld import build_geoworld

    out = build_geoworld(ns.out, ns.num_train, ns.num_val, ns.num_test, ns.seed, min_separation_km=ns.min_separation_km)
    print(f"GeoWorld written to {out} (train {ns.num_train}, val {ns.num_val}, test {ns.num_test}, seed {ns.seed})")


def _instruct(ns: argparse.Namespace) -> None:
    from geor1.data.instruct import build_instruct

    report = build_instruct(ns.shards, ns.out, ns.seed, ns.margin, ns.more_margin, ns.max_images)
    print(json.dumps(report.as_dict(), indent=2))
    print(f"describe shards written to {ns.out}")


def _inspect(ns: argparse.Namespace) -> None:
    from geor1.data.inspect import inspect_shards
    from geor1.data.reader import is_remote

    folder = Path(ns.path).is_dir()
    if not folder and not (is_remote(ns.path) or any(c in ns.path for c in "*?[{")):  # a spec: glob, braces, URL
        raise Geor1Error(f"not a folder of shards (nor a shard URL spec): {ns.path}")
    grid = ns.grid or (str(Path(ns.path) / "inspect.png") if folder else "inspect.png")
    try:
        report = inspect_shards(ns.path, grid, ns.grid_count)
    except FileNotFoundError as e:
        raise Geor1Error(str(e)) from None
    for split, counts in sorted(report["splits"].items()):
        print(
            f"{split:>8}: {counts.get('valid', 0)} valid, {counts.get('corrupt', 0)} corrupt"
            + (f", {counts['ground_only']} ground-only" if counts.get("ground_only") else "")
        )
    for c in report["corrupt"][:20]:
        print(f"  corrupt {c['shard']} {c['key']}: {c['field']}: {c['reason']}")
    for b in report["broken_shards"]:
        print(f"  truncated/unreadable shard {b['shard']}: {b['error']}")
    if report.get("manifest_mismatch"):
        print(f"  manifest disagrees with the shards: {json.dumps(report['manifest_mismatch'])}")
    if report.get("grid_png"):
        print(f"grid of example pairs: {report['grid_png']}")
