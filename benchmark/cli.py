"""The `segleak` command line: parses arguments and hands each subcommand to one library function.

Heavy imports (torch, Ray, MLflow) happen inside the handlers so `segleak --help` stays instant and a
data command does not start Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from benchmark.errors import SegleakError
from benchmark.paths import DEFAULT_RESULTS, default_tracking_uri

DATASET_HELP = ("a registered dataset (`segleak list datasets`), e.g. generic: mmseg's img_dir/ann_dir layout, "
                "its classes given with --option 'classes=[a, b]'")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 64x128 (HxW), got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small: both sides must be >= 16")
    return h, w


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1], got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key!r} is not valid YAML: {value!r}") from None


def _dataset_spec(name: str, options: list[tuple[str, object]] | None) -> dict[str, object]:
    """A dataset adapter's spec: its registered name plus the `--option KEY=VALUE` settings it declares."""
    return {"type": name, **dict(options or [])}


def _tracking_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or default_tracking_uri(args.results)


def _report_dir(args: argparse.Namespace, name: str) -> Path:
    """--out, else where `segleak benchmark` writes its report: <results>/report/<name>."""
    return Path(args.out) if args.out else Path(args.results) / "report" / name


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from ray_jobs.running.runner import run_benchmark

    summary = run_benchmark(
        profile=args.profile,
        grid_file=args.grid,
        results=args.results,
        tracking_uri=args.tracking_uri,
        address=args.address or os.environ.get("RAY_ADDRESS"),
        max_concurrent=args.max_concurrent,
        dry_run=args.dry_run,
        gpu_check=args.gpu_check,
        stream=sys.stdout,  # now: the default was bound when the runner was first imported
    )
    return 1 if summary.failed else 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from benchmark.data.labels import CITYSCAPES_CATEGORIES
    from benchmark.data.synth import SynthSpec, write_synthetic_dataset

    spec = _dataset_spec(args.layout, args.option)
    if args.layout == "generic":  # the twin is labelled with the 7 Cityscapes categories
        spec.setdefault("classes", list(CITYSCAPES_CATEGORIES))
    n_train, n_val = write_synthetic_dataset(SynthSpec.of(spec, n_train=args.n_train, n_val=args.n_val,
                                                          size=list(args.size), seed=args.seed,
                                                          group_size=args.group_size), Path(args.out))
    print(f"wrote {n_train} train and {n_val} val images in the {args.layout} layout under {args.out}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from benchmark.data.check import check_dataset

    report = check_dataset(_dataset_spec(args.dataset, args.option), Path(args.root))
    for line in report.lines():
        print(line, file=sys.stdout if report.usable else sys.stderr)
    return 0 if report.usable else 1


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from benchmark.data.adapters import get_adapter

    written = get_adapter(_dataset_spec(args.dataset, None)).prepare(Path(args.root))
    print(f"wrote {written} label files under {args.root}")
    return 0


def _cmd_splits(args: argparse.Namespace) -> int:
    from benchmark.data.splits import make_manifest, write_manifest

    manifest = make_manifest(
        dataset=_dataset_spec(args.dataset, args.option),
        root=Path(args.root),
        overlap=args.overlap,
        seed=args.seed,
        recipe=args.recipe,
        shadow_dataset=args.shadow_dataset and _dataset_spec(args.shadow_dataset, args.shadow_option),
        shadow_root=Path(args.shadow_root) if args.shadow_root else None,
        placebo=args.placebo,
        group_split=not args.image_split,
    )
    digest = write_manifest(manifest, Path(args.out))
    print(f"wrote {args.out} (sha256 {digest[:12]}): {manifest.summary()}")
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from analysis.leaderboard import write_leaderboard

    for path in write_leaderboard(_tracking_uri(args), args.experiment, _report_dir(args, "leaderboard")):
        print(path)
    return 0


def _cmd_plots(args: argparse.Namespace) -> int:
    from analysis.plots import write_plots

    for path in write_plots(_tracking_uri(args), args.experiment, _report_dir(args, "plots"), style=args.style):
        print(path)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from analysis.ui import serve_ui

    return serve_ui(_tracking_uri(args), port=args.port)


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<results>/mlflow.db)")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: ./results)")


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--option", type=_option, action="append", metavar="KEY=VALUE",
                        help="a dataset option, e.g. classes=[a, b] or group_pattern='^(seq\\d+)_'")


LISTABLE = ("attacks", "defenses", "datasets", "archs", "unit-kinds")


def catalogue(what: str) -> list[tuple[str, str, str]]:
    """(name, parameters, one-line doc) of every registered component of a kind, as `segleak list` prints them."""
    if what == "archs":
        from benchmark.models.builder import configs_dir, list_architectures

        def comment(name: str) -> str:
            lines = (configs_dir() / f"{name}.py").read_text().splitlines()
            return " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))

        return [(name, "", _first_sentence(comment(name))) for name in list_architectures()]
    from benchmark.registry import ATTACKS, DATASETS, DEFENSES

    if what == "unit-kinds":
        from ray_jobs.units import UNIT_KINDS

        registry = UNIT_KINDS
    else:
        registry = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS}[what]
    rows = []
    for name in registry.names():
        cls = registry.lookup(name)
        params = ", ".join(f"{key}={p.default!r}" for key, p in getattr(cls, "params", {}).items())
        extra = f"side={cls.side}" if what == "defenses" else f"stage={cls.stage}" if what == "unit-kinds" else ""
        doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
        rows.append((name, "; ".join(v for v in (extra, params) if v), _first_sentence(doc)))
    return rows


def _first_sentence(text: str) -> str:
    import re

    words = " ".join(text.split())
    end = re.search(r"(?<! al)(?<! e\.g)(?<! i\.e)\. ", words)  # not at "et al. " or "e.g. "
    return words if end is None else words[:end.start() + 1]


def _cmd_list(args: argparse.Namespace) -> int:
    rows = catalogue(args.what)
    width = max(len(name) for name, _, _ in rows)
    for name, params, doc in rows:
        print(f"{name:<{width}}  {doc}" + (f"\n{'':<{width}}  [{params}]" if params else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segleak", description="Membership inference benchmark for semantic segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("benchmark", help="run a grid (a profile or a grid file) on Ray, logging to MLflow")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--profile", default=None, help="smoke | default | extended | paper (default: default)")
    source.add_argument("--grid", help="a grid YAML file")
    bench.add_argument("--results", default=DEFAULT_RESULTS, help="results folder or s3:// URI (default: ./results)")
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<results>/mlflow.db)")
    bench.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    bench.add_argument("--max-concurrent", type=_positive, help="at most this many jobs at once")
    bench.add_argument("--dry-run", action="store_true",
                       help="validate the grid and the data, print the plan, what is finished and the estimated "
                            "GPU-hours, then stop")
    bench.add_argument("--gpu-check", metavar="FILE",
                       help="a `make gpu-check` JSON for the GPU-hour estimate (default: <results>/gpu-check.json "
                            "if there, else the committed NVIDIA H200 measurement)")
    bench.set_defaults(handler=_cmd_benchmark)

    data = sub.add_parser("data", help="synthesise, check or prepare a dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write the embedded synthetic street scenes in a real layout")
    synth.add_argument("--layout", required=True, help=DATASET_HELP)
    synth.add_argument("--out", required=True)
    synth.add_argument("--n-train", type=_positive, default=200)
    synth.add_argument("--n-val", type=_positive, default=100)
    synth.add_argument("--size", type=_size, default=(64, 128), help="HxW (default 64x128)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--group-size", type=_positive, default=1, help="near-duplicate frames per sequence")
    _add_options(synth)
    synth.set_defaults(handler=_cmd_data_synth)
    check = data_sub.add_parser("check", help="validate a dataset tree")
    check.add_argument("--dataset", required=True, help=DATASET_HELP)
    check.add_argument("--root", required=True)
    _add_options(check)
    check.set_defaults(handler=_cmd_data_check)
    prepare = data_sub.add_parser("prepare", help="an official download's labels -> the files segleak reads "
                                                  "(Cityscapes: trainIds)")
    prepare.add_argument("--dataset", required=True, help=DATASET_HELP)
    prepare.add_argument("--root", required=True)
    prepare.set_defaults(handler=_cmd_data_prepare)

    splits = sub.add_parser("splits", help="write a membership manifest")
    splits.add_argument("--dataset", required=True, help=DATASET_HELP)
    splits.add_argument("--root", required=True)
    splits.add_argument("--overlap", type=_fraction, default=0.0, help="fraction of shadow members drawn from victim members")
    splits.add_argument("--seed", type=int, default=0)
    splits.add_argument("--recipe", default="auto", help="auto (sizes from the data) | paper (the paper's split sizes)")
    splits.add_argument("--shadow-dataset", help="independent setting: the shadow's dataset")
    splits.add_argument("--shadow-option", type=_option, action="append", metavar="KEY=VALUE",
                        help="an option of the shadow dataset (as --option)")
    splits.add_argument("--image-split", action="store_true",
                        help="split image by image, even where images share a group (a city, a sequence)")
    splits.add_argument("--shadow-root", help="independent setting: the shadow dataset's root")
    splits.add_argument("--placebo", action="store_true", help="victim trained on images outside both query sets")
    splits.add_argument("--out", required=True)
    _add_options(splits)
    splits.set_defaults(handler=_cmd_splits)

    for name, handler, text in (
        ("leaderboard", _cmd_leaderboard, "leaderboard tables (CSV, Markdown, HTML) from MLflow"),
        ("plots", _cmd_plots, "comparison plots (PNG, SVG with editable text, PDF) from MLflow"),
    ):
        cmd = sub.add_parser(name, help=text)
        _add_tracking(cmd)
        cmd.add_argument("--experiment", help="MLflow experiment (default: the most recent segleak experiment)")
        cmd.add_argument("--out", help=f"output folder (default: <results>/report/{name}, as the benchmark writes)")
        if name == "plots":
            cmd.add_argument("--style", choices=("screen", "paper"), default="screen",
                             help="screen (default) | paper: one- or two-column widths (3.5 / 7.16 in), small fonts")
        cmd.set_defaults(handler=handler)

    listing = sub.add_parser("list", help="the registered components: " + ", ".join(LISTABLE))
    listing.add_argument("what", choices=LISTABLE)
    listing.set_defaults(handler=_cmd_list)

    ui = sub.add_parser("ui", help="serve the MLflow UI on 127.0.0.1")
    _add_tracking(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `segleak` console script: bad input ends in one line on stderr and exit 2, any other
    error in one line and exit 1, SIGTERM/SIGHUP like Ctrl-C (clean-up, then 128 + the signal's number). Every
    line has its URIs' credentials masked."""
    from benchmark.failure import one_line
    from benchmark.signals import Stopped, stop_on_signals

    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with stop_on_signals():
            return handler(args)
    except SegleakError as exc:
        print(f"segleak: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Stopped as stopped:
        print(f"segleak: stopped by {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("segleak: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if os.environ.get("SEGLEAK_DEBUG"):
            raise
        print(f"segleak: error: {one_line(exc)} (set SEGLEAK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
