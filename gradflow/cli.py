"""Command line: a thin layer over the Python API.

    python -m gradflow                      solve the default preset, print a summary
    gradflow solve   [model] [--out FILE]   solve a flow (NetCDF output)
    gradflow train   [model] --steps N --lr X [--seeds S] --out FILE
    gradflow compare SOLUTION RUN [RUN ...]
    gradflow verify  [model] [--mc]         exit 0 when every check passes, 1 otherwise
    gradflow figures [--quick] --out DIR
    gradflow images  [--sample NAMES | FILES...] --grid 14 --areas 8 --out DIR [--redraw]
    gradflow bench   [--quick] [--json FILE]
    gradflow sweep   --grid GRID.toml --out DIR [--scheduler ADDRESS] | --example
    gradflow ladder  [model] [--rungs A,B] --seeds N --steps N --out DIR [--scheduler ADDRESS] | --list
    gradflow config  --example

[model] is ``--preset NAME [--P ..] [--mask-ratio ..] ...`` or ``--config FILE.toml``. Bad input
(an ``InvalidInputError``, or an input file that cannot be read) prints one line and exits 2; a
failure of gradflow itself prints one line and exits 1 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ._validate import choice, positive_real
from .analysis.comparison import compare
from .analysis.image_flows import DEFAULT_METHOD as IMAGE_METHOD
from .analysis.verification import verify
from .errors import InvalidInputError
from .flow.phase_times import phases, summarize
from .flow.solution import Solution
from .flow.solver import solve
from .io import check_output_path, check_output_paths, output_dir
from .model.config import EXAMPLE as CONFIG_EXAMPLE
from .model.config import load_model
from .model.presets import PRESETS, global_local, preset, preset_options, square_grid
from .theory.kernels import compiled_before
from .theory import warmup
from .training import transformer as training_kernels
from .training.run import TrainRun
from .training.sgd import train_transformer

# preset options the command line offers: flag -> option name
PRESET_FLAGS = {"--P": "P", "--mask-ratio": "mask_ratio", "--n-local": "n_local", "--local-size": "local_size",
                "--n-clusters": "n_clusters"}


class _Parser(argparse.ArgumentParser):
    """argparse reporting usage errors in one line, exit status 2; no abbreviated flags (``--mask``
    for ``--mask-ratio`` would silently break when a flag is added that shares the prefix)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


# what a preset builds when an option is not given, read from the model it builds with no options
BUILT_DEFAULTS = {"P": lambda m: m.n_patches, "n_clusters": lambda m: m.n_clusters, "mask_ratio": lambda m: m.mask_ratio}


def preset_defaults(option: str) -> dict:
    """preset name -> its default of ``option`` (the presets that have it): the signature's
    default, or, where that is None (chosen inside the preset), what its default model has."""
    out, built = {}, {}
    for name, fn in PRESETS.items():
        param = inspect.signature(fn).parameters.get(option)
        if param is None:
            continue
        value = param.default
        if value is None and option in BUILT_DEFAULTS:
            built.setdefault(name, fn())
            value = BUILT_DEFAULTS[option](built[name])
        out[name] = "chosen by P" if value is None else value
    return out


class _PresetDefaults:
    """The per-preset defaults of an option, worked out only when the help is shown."""

    def __init__(self, option: str):
        self.option = option

    def __str__(self) -> str:
        defaults = preset_defaults(self.option)
        if len(defaults) == 1:
            return str(*defaults.values())
        return "the preset's own: " + ", ".join(f"{name} {value}" for name, value in defaults.items())


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a preset and its options, or --config)")
    g.add_argument("--config", type=Path, help="TOML file describing any DataModel (gradflow config --example)")
    g.add_argument("--preset", default="global_local", help=f"one of {sorted(PRESETS)} (default: %(default)s)")
    helps = {"P": "number of patches, on the most square grid",
             "mask_ratio": "mask probability gamma in (0, 1)",
             "n_local": "local areas per cluster (default 4, fewer when P is too small for 4 beside a larger "
                        "global area)",
             "local_size": "patches per local area",
             "n_clusters": "clusters, each with its own areas"}
    for flag, option in PRESET_FLAGS.items():
        owners = [name for name in PRESETS if option in preset_options(name)]
        text = helps[option] if len(owners) == len(PRESETS) else f"{', '.join(owners)}: {helps[option]}"
        if option != "n_local":
            text += " (default: %(preset_defaults)s)"
        action = g.add_argument(flag, type=float if option == "mask_ratio" else int, help=text)
        action.preset_defaults = _PresetDefaults(option)


def _add_flow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--t-max", type=float, help="length of the flow (default: until it has converged)")
    p.add_argument("--method", default="exact", help="exact or meanfield (default: %(default)s)")
    p.add_argument("--max-wall-time", type=float,
                   help="seconds the flow may take; it then stops, says so and exits 1 (default: no limit)")


def _even_sided(P: int) -> list:
    """The numbers of patches nearest ``P`` whose most square grid has even sides (what the
    balanced preset's four equal areas need): the largest below P and the two smallest above."""
    ok = [q for q in range(4, 4 * P + 16, 2) if not any(side % 2 for side in square_grid(q))]
    return [q for q in ok if q < P][-1:] + [q for q in ok if q > P][:2]


def _check_preset_flags(name: str, given: dict) -> None:
    """Refuse, naming the flag to set, what a preset cannot build from the command line's flags."""
    P = given.get("P")
    if name == "balanced" and P is not None and P > 0:
        H, W = square_grid(P)
        if H % 2 or W % 2:
            raise InvalidInputError(
                f"--P {P} lays the patches out as a {H}x{W} grid, which the balanced preset's four equal areas "
                f"cannot tile: give a --P whose grid has even sides (e.g. {', '.join(map(str, _even_sided(P)))}), "
                f"or describe other areas in a --config file (gradflow config --example)")


def _flags_for(message: str, name: str) -> str:
    """What the command line calls the preset options a message names: '; on the command line
    n_local is --n-local, ...', and which options have no flag (use --config)."""
    named = [opt for opt in preset_options(name) if re.search(rf"\b{opt}\b", message)]
    flags = {opt: flag for flag, opt in PRESET_FLAGS.items()}
    parts = [f"{opt} is {flags[opt]}" for opt in named if opt in flags and flags[opt] != f"--{opt}"]
    missing = [opt for opt in named if opt not in flags]
    text = f" (on the command line {', '.join(parts)})" if parts else ""
    if missing:
        text += (f" ({', '.join(missing)} has no command-line flag: describe such a model in a --config file, "
                 f"gradflow config --example)")
    return text


def _model_from(args):
    given = {opt: getattr(args, opt) for opt in PRESET_FLAGS.values() if getattr(args, opt) is not None}
    if args.config is not None:
        if given:
            flags = [f for f, o in PRESET_FLAGS.items() if o in given]
            raise InvalidInputError(f"{', '.join(flags)} cannot be combined with --config (the file sets the model)")
        return load_model(args.config)
    choice("--preset", args.preset, sorted(PRESETS))
    known = preset_options(args.preset)
    for flag, opt in PRESET_FLAGS.items():
        if opt in given and opt not in known:
            raise InvalidInputError(f"{flag} does not apply to preset {args.preset!r}")
    _check_preset_flags(args.preset, given)
    try:
        return preset(args.preset, **given)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc}{_flags_for(str(exc), args.preset)}") from None


def solve_summary(sol) -> str:
    """What ``python -m gradflow`` prints: phases reached, loss, target attention, wall time."""
    summary = summarize(phases(sol))
    lines = [f"gradflow: {sol.model!r}",
             f"  method {sol.method}, last step ends at t = {sol.t[-1]:.6g}, status {sol.status}: {sol.message}",
             f"  loss {sol.loss_at(0):.6g} -> {sol.loss_at(-1):.6g}"]
    lines += ["  phases of " + g.line() + " (median)" for g in summary.groups.values()]
    if sol.method == "meanfield":
        lines.append("  (the mean-field loss drives the flow; attention is measured exactly on its state)")
    lines += [f"  target attention / ceiling at the end: min {summary.min_target_fraction:.4f}, "
              f"mean {summary.mean_target_fraction:.4f}",
              f"  wall time {sol.wall_time:.2f} s ({sol.nfev} gradient evaluations, "
              f"{sol.reduction.n_classes} classes)"]
    return "\n".join(lines)


def seed_path(out: Path, seed: int) -> Path:
    """One file per seed: ``run.nc`` -> ``run_seed0.nc``, ``run_seed1.nc``; a ``{seed}`` in the
    name is filled in instead."""
    if "{seed}" in out.name:
        return out.with_name(out.name.format(seed=seed))
    return out.with_name(f"{out.stem}_seed{seed}{out.suffix}")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="gradflow", description="Exact gradient-flow dynamics of attention (arXiv 2403.02233).")
    ap.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    ap.commands = sub.choices            # command name -> its parser (errors are reported by it)

    s = sub.add_parser("solve", help="solve a gradient flow, print a summary, optionally save it")
    _add_model_options(s)
    _add_flow_options(s)
    s.add_argument("--out", type=Path, help="NetCDF file for the Solution")

    t = sub.add_parser("train", help="train Monte-Carlo transformers by SGD")
    _add_model_options(t)
    t.add_argument("--steps", type=int, required=True, help="SGD steps per seed")
    t.add_argument("--lr", type=float, required=True, help="SGD step; record times are t = lr x steps")
    t.add_argument("--batch-size", type=int, default=256, help="samples per step (default: %(default)s)")
    t.add_argument("--seeds", type=int, default=1, help="number of seeds 0, 1, ... (default: %(default)s)")
    t.add_argument("--record-every", type=int, default=100, help="steps between records (default: %(default)s)")
    t.add_argument("--out", type=Path, required=True, help="NetCDF name; one file per seed, R_seed0.nc, ...")

    c = sub.add_parser("compare", help="compare a saved Solution with saved TrainRuns")
    c.add_argument("solution", type=Path, help="a Solution file (gradflow solve --out)")
    c.add_argument("runs", type=Path, nargs="+", help="TrainRun files (gradflow train --out)")
    c.add_argument("--tol", type=float, default=0.05,
                   help="largest allowed target-attention error; exit 1 beyond it (default: %(default)s)")

    v = sub.add_parser("verify", help="check the paper's claims; exit 1 if a check fails")
    _add_model_options(v)
    _add_flow_options(v)
    v.add_argument("--mc", action="store_true", help="also train Monte-Carlo transformers and compare")
    v.add_argument("--mc-steps", type=int, default=2000, help="SGD steps per seed (default: %(default)s)")
    v.add_argument("--mc-lr", type=float, default=0.05, help="SGD step (default: %(default)s)")
    v.add_argument("--mc-batch-size", type=int, default=256, help="samples per step (default: %(default)s)")
    v.add_argument("--mc-seeds", type=int, default=2, help="number of seeds (default: %(default)s)")

    w = sub.add_parser("sweep", help="solve a grid of models as Dask tasks, gather one NetCDF")
    w.add_argument("--grid", type=Path, help="TOML: preset, t_max, [fixed], [grid], [mc] (see --example)")
    w.add_argument("--out", type=Path, help="directory (reruns skip finished points)")
    w.add_argument("--scheduler", help="address of a running dask scheduler (default: a LocalCluster)")
    w.add_argument("--example", action="store_true", help="print a commented grid file and exit")

    lad = sub.add_parser("ladder", help="realistic PyTorch transformers (rungs) x seeds against the flow "
                                        "(needs gradflow[torch])")
    _add_model_options(lad)
    lad.add_argument("--rungs", help="comma-separated rung names (default: all; --list shows them)")
    lad.add_argument("--seeds", type=int, default=3, help="seeds per rung (default: %(default)s)")
    lad.add_argument("--steps", type=int, default=1000, help="optimiser steps per run (default: %(default)s)")
    lad.add_argument("--lr", type=float, default=1.0,
                     help="the ladder's SGD step; rungs scale it by their own rule (default: %(default)s)")
    lad.add_argument("--batch-size", type=int, default=256, help="samples per step (default: %(default)s)")
    lad.add_argument("--records", type=int, default=40, help="log-spaced records per run (default: %(default)s)")
    lad.add_argument("--eval-size", type=int, default=2048,
                     help="samples in each run's evaluation batch (default: %(default)s)")
    lad.add_argument("--out", type=Path, help="directory: runs/ (reruns skip them), report.md, report.json, ladder.png")
    lad.add_argument("--scheduler", help="address of a running dask scheduler (default: a LocalCluster of 2 workers)")
    lad.add_argument("--list", action="store_true", help="print the rungs and exit")

    g = sub.add_parser("config", help="model files: print a commented example")
    g.add_argument("--example", action="store_true", help="print a commented model file that works as it is")

    b = sub.add_parser("bench", help="benchmarks against brute force, NumPy and Monte Carlo")
    b.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    b.add_argument("--json", type=Path, help="also write the results as JSON")

    i = sub.add_parser("images", help="flows of data models made from photographs, and their pictures")
    i.add_argument("files", nargs="*", type=Path, help="image files to read (any format scikit-image reads)")
    i.add_argument("--sample", help="comma-separated names of photographs shipped with scikit-image "
                   "(e.g. astronaut,camera,coffee; faces lfw:0 .. lfw:199; 'default', also when no FILES are "
                   "given: 16 photographs)")
    i.add_argument("--grid", default="14", help="patches per side, or ROWSxCOLS (default: %(default)s)")
    i.add_argument("--areas", type=int, default=8, help="areas per image (default: %(default)s)")
    i.add_argument("--mask-ratio", type=float, default=0.5, help="mask probability gamma (default: %(default)s)")
    i.add_argument("--amplitudes", default="contrast", help="contrast or unit (default: %(default)s)")
    i.add_argument("--segmentation", default="slic", help="slic, slic-pixels, felzenszwalb or voronoi "
                   "(default: %(default)s)")
    i.add_argument("--t-max", type=float, help="length of the flow (default: 5000 x the number of images)")
    i.add_argument("--method", default=IMAGE_METHOD, help="exact or meanfield (default: %(default)s)")
    i.add_argument("--query", help="masked query shown in every image as ROW,COL (default: the centre patch)")
    i.add_argument("--out", type=Path, required=True, help="directory for images.nc and the figures")
    i.add_argument("--redraw", action="store_true", help="draw again from OUT/images.nc without solving")

    f = sub.add_parser("figures", help="make the six figures (PNG and PDF)")
    f.add_argument("--out", type=Path, default=Path("figures"), help="directory (default: %(default)s)")
    f.add_argument("--quick", action="store_true", help="small versions, under a minute")
    return ap


# ---- the commands -------------------------------------------------------------------------------
def cmd_default(args) -> int:
    print(solve_summary(solve(global_local(64, n_local=4, local_size=4, mask_ratio=0.5), 2000.0)))
    return 0


def cmd_solve(args) -> int:
    if args.out is not None:
        check_output_path(args.out, "--out")
    sol = solve(_model_from(args), args.t_max, method=args.method, max_wall_time=args.max_wall_time)
    print(solve_summary(sol))
    if args.out is not None:
        sol.save(args.out)
        print(f"  saved {args.out}")
    return 0 if sol.status >= 0 else 1


def cmd_train(args) -> int:
    model = _model_from(args)
    if args.seeds < 1:
        raise InvalidInputError(f"--seeds must be >= 1, got {args.seeds}")
    paths = [seed_path(args.out, seed) for seed in range(args.seeds)]
    for path in paths:
        check_output_path(path, "--out")
    status = 0
    for seed, path in enumerate(paths):
        run = train_transformer(model, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                seed=seed, record_every=args.record_every)
        run.save(path)
        print(f"seed {seed}: t = {run.t[-1]:g}, final batch loss {run.loss[-1]:.6g}, "
              f"{run.step[-1] / run.wall_time:.0f} steps/s, saved {path}")
        if run.status < 0:
            print(f"seed {seed}: {run.message}")
            status = 1
    return status


def cmd_compare(args) -> int:
    positive_real("--tol", args.tol)
    comparison = compare(Solution.load(args.solution), [TrainRun.load(p) for p in args.runs])
    print(comparison.table())
    ok = comparison.ok(args.tol)
    err = comparison["target_attention"].max_abs_error
    print(f"{'PASS' if ok else 'FAIL'}: largest target-attention error {err:.4f} "
          f"{'<=' if ok else '>'} --tol {args.tol:g}")
    return 0 if ok else 1


def cmd_verify(args) -> int:
    model = _model_from(args)
    mc = None
    if args.mc:
        mc = dict(steps=args.mc_steps, lr=args.mc_lr, batch_size=args.mc_batch_size,
                  seeds=args.mc_seeds, record_every=max(1, args.mc_steps // 20))
    report = verify(model, t_max=args.t_max, method=args.method, mc=mc, max_wall_time=args.max_wall_time)
    print(f"gradflow verify: {model!r}")
    print(report.table())
    return 0 if report.passed else 1


def cmd_sweep(args) -> int:
    from .analysis.sweeps import EXAMPLE, sweep_from_file
    if args.example:
        print(EXAMPLE, end="")
        return 0
    if args.grid is None or args.out is None:
        raise InvalidInputError("gradflow sweep needs --grid FILE and --out DIR (or --example)")
    ds = sweep_from_file(args.grid, args.out, scheduler=args.scheduler)
    failed = int(ds.attrs["failed"])
    print(f"{ds.attrs['points']} points ({ds.attrs['computed']} computed now, {failed} failed): "
          f"{args.out / 'sweep.nc'}")
    return 1 if failed else 0


def cmd_ladder(args) -> int:
    from .analysis.ladder import RUNGS, ladder, rung_names
    if args.list:
        for name in rung_names():
            print(f"{name:<15}{RUNGS[name].description}")
        return 0
    if args.out is None:
        raise InvalidInputError("gradflow ladder needs --out DIR (or --list)")
    model = _model_from(args)
    output_dir(args.out, "--out")
    check_output_paths([args.out / "ladder.png", args.out / "ladder.pdf"], "ladder figure")    # before any work
    client = None
    if args.scheduler:
        from dask.distributed import Client
        try:
            client = Client(args.scheduler, timeout=10)
        except OSError as exc:
            raise InvalidInputError(f"scheduler {args.scheduler!r} could not be reached: {exc}") from None
    try:
        result = ladder(model, args.rungs, seeds=args.seeds, steps=args.steps, lr=args.lr,
                        batch_size=args.batch_size, n_records=args.records, eval_size=args.eval_size,
                        out=args.out, client=client)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        print(f"gradflow: error: {exc}", file=sys.stderr)       # a missing extra, not a bug
        return 1
    finally:
        if client is not None:
            client.close()
    from .figures.ladder import ladder_figure
    figure = ladder_figure(result, args.out)
    print(f"gradflow ladder: {model!r}")
    print(result.table())
    print(f"{result.runs_line(args.out / 'runs')}; "
          + ", ".join(str(p) for p in [*result.paths.values(), *figure.paths]))
    return 0


def cmd_config(args) -> int:
    if not args.example:
        raise InvalidInputError("gradflow config: give --example to print a model file")
    print(CONFIG_EXAMPLE, end="")
    return 0


def cmd_bench(args) -> int:
    from .analysis.bench import main as bench_main
    bench_main(quick=args.quick, json_path=args.json)
    return 0


def cmd_figures(args) -> int:
    from .figures import make_figures
    start = time.perf_counter()
    results = make_figures(args.out, quick=args.quick)
    for res in results.values():
        print("  " + ", ".join(str(p) for p in res.paths))
    print(f"{len(results)} figures in {time.perf_counter() - start:.1f} s")
    return 0


def _pair(flag: str, text: str, sep: str, square: bool = False) -> tuple[int, int]:
    """'12x16' -> (12, 16) for ``sep`` 'x' (',' for ROW,COL); with ``square``, '14' -> (14, 14)."""
    parts = text.lower().split(sep)
    if square and len(parts) == 1:
        parts = parts * 2
    try:
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    form = f"N or N{sep}M" if square else f"N{sep}M"
    raise InvalidInputError(f"{flag} must be {form} with integers, got {text!r}")


# the figures ``gradflow images`` draws (each .png and .pdf): one per image, the overview, T2
IMAGE_FIGURES = ("images_{k:02d}", "images_overview", "images_t2")


def image_figure_paths(out: Path, n_images: int) -> list:
    """Every figure file ``gradflow images`` writes into ``out`` for ``n_images`` images."""
    names = [IMAGE_FIGURES[0].format(k=k) for k in range(n_images)] + list(IMAGE_FIGURES[1:])
    return [out / f"{name}.{ext}" for name in names for ext in ("png", "pdf")]


def cmd_images(args) -> int:
    from .analysis.image_flows import ImageFlow, image_flow
    from .figures.images import draw_images, draw_learned_last
    from .model.images import DEFAULT_SAMPLES, read_image, sample_images
    path = args.out / "images.nc"
    if args.redraw:
        if args.files or args.sample:
            raise InvalidInputError("--redraw reads OUT/images.nc: give no FILES and no --sample")
        flow = ImageFlow.load(path)
    else:
        if args.files and args.sample:
            raise InvalidInputError("give image FILES or --sample NAMES, not both")
        if args.files:
            names = [p.name for p in args.files]
            if len(set(names)) < len(names):       # same file names in different folders: keep the paths
                names = [str(p) for p in args.files]
            images = {n: read_image(p) for n, p in zip(names, args.files)}
        else:
            names = None if args.sample in (None, "default") else args.sample.split(",")
            images = sample_images(DEFAULT_SAMPLES if names is None else names)
        query = None if args.query is None else _pair("--query", args.query, ",")
        grid = _pair("--grid", args.grid, "x", square=True)
        output_dir(args.out, "--out")                   # the inputs are good: make room for the results
        check_output_paths([path] + image_figure_paths(args.out, len(images)), "--out")
        flow = image_flow(images, grid, args.areas, args.t_max, method=args.method, mask_ratio=args.mask_ratio,
                          amplitudes=args.amplitudes, segmentation=args.segmentation, query=query)
        flow.save(path)
    if args.redraw:
        check_output_paths(image_figure_paths(args.out, len(flow.names)), "--out")
    if args.redraw and args.query is not None:
        flow = flow.with_query(_pair("--query", args.query, ","))
    sol = flow.solution
    print(f"gradflow images: {len(flow.names)} images, {sol.model!r}")
    print(f"  {sol.method} flow to t = {sol.t[-1]:g}: status {sol.status} ({sol.message}), "
          f"{sol.nfev} gradient evaluations, {sol.wall_time:.1f} s")
    row, col = divmod(int(flow.query[0]), flow.grid[1])
    print(f"  masked query shown: patch (row {row}, col {col}) of every image")
    print(flow.area_table().table())
    print(flow.learned_last().text())
    rho = flow.shared_area_attention()
    if np.isfinite(rho).any():
        print(f"  at the end, the query's weight on a key of its area rises with the number of images in which "
              f"that key shares its area: rank correlation {np.nanmin(rho):+.2f} .. {np.nanmax(rho):+.2f} "
              f"over the images")
    paths = [] if args.redraw else [path]
    for k, name in enumerate(flow.names):
        paths += draw_images(flow, args.out, [k], IMAGE_FIGURES[0].format(k=k)).paths
    paths += draw_images(flow, args.out, range(min(4, len(flow.names))), IMAGE_FIGURES[1]).paths
    paths += draw_learned_last(flow, args.out, IMAGE_FIGURES[2]).paths
    print(f"  wrote {len(paths)} files into {args.out}: " + ("" if args.redraw else "images.nc, ")
          + "images_NN.png/pdf per image, images_overview, images_t2 (png/pdf)")
    return 0


COMMANDS = {None: cmd_default, "solve": cmd_solve, "train": cmd_train, "compare": cmd_compare,
            "verify": cmd_verify, "sweep": cmd_sweep, "ladder": cmd_ladder, "config": cmd_config, "bench": cmd_bench,
            "figures": cmd_figures, "images": cmd_images}


# commands that solve flows or read their phases: a first run compiles the attention kernels for
# them in a child process while it compiles the gradient itself (theory/warmup.py)
FLOW_COMMANDS = (None, "solve", "verify", "compare", "sweep", "figures", "images", "ladder")   # not bench: it times
# commands that train Monte-Carlo transformers (verify only with --mc)
TRAINING_COMMANDS = ("train", "figures", "bench")


def _uses_training(args) -> bool:
    return args.command in TRAINING_COMMANDS or (args.command == "verify" and args.mc)


def first_run_notice(args) -> str | None:
    """The line to print when the kernels a command runs are not compiled yet (None: they are)."""
    if args.command == "config" or getattr(args, "example", False) or getattr(args, "list", False):
        return None
    cold = [] if compiled_before() else ["the flow"]
    if _uses_training(args) and not training_kernels.compiled_before():
        cold.append("the training")
    if not cold:
        return None
    return (f"gradflow: first run: compiling {' and '.join(cold)} kernels (about 10 s); they are cached "
            f"for the next runs")


PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _one_line_warnings(show):
    """A ``warnings.showwarning`` that prints gradflow's own warnings (raised from its code, as
    an early stop or a divergence) as one line on stderr, without file path or source line, and
    leaves other libraries' warnings to ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if not str(Path(filename).resolve()).startswith(PACKAGE_DIR):
            return show(message, category, filename, lineno, file, line)
        text = re.sub(r"^gradflow\.", "", " ".join(str(message).split()))   # 'gradflow.solve: ...' -> 'solve: ...'
        print(f"gradflow: warning: {text}", file=sys.stderr)
    return showwarning


def _flag_name(message: str, parser: argparse.ArgumentParser | None) -> str:
    """An input error that names a field the command line sets through a flag, named by the flag:
    "t_max must be ..." -> "--t-max must be ..."."""
    if parser is None or "on the command line" in message:      # the preset options say it already
        return message
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if flags and message.startswith(f"{action.dest} "):
            return flags[0] + message[len(action.dest):]
    return message


def main(argv=None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    commands = parser.commands
    if extra:                       # reported by the command's own parser: "gradflow solve: error: ..."
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    args.parser = commands.get(args.command)
    notice = first_run_notice(args)
    if notice:
        print(notice, file=sys.stderr)
        if args.command in FLOW_COMMANDS and not compiled_before():
            warmup.start()              # the attention kernels compile on a second core meanwhile
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            return _run(args)
        finally:
            warmup.stop_all()


def _run(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except (InvalidInputError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        # bad input, or an input file we cannot read
        message = _flag_name(str(exc), getattr(args, "parser", None)) if isinstance(exc, InvalidInputError) else exc
        print(f"gradflow: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (gradflow solve | head): stop quietly, as Unix tools do; stdout is
        # pointed at devnull so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:            # a failure of gradflow itself, not of the input
        if args.debug:
            raise
        print(f"gradflow: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
