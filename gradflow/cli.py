"""Command line: a thin layer over the Python API.

    python -m gradflow                      solve the default preset, print a summary
    gradflow solve   [model] [--out FILE]   solve a flow (NetCDF output)
    gradflow train   [model] --steps N --lr X --batch-size B --seeds S --out FILE
    gradflow compare SOLUTION RUN [RUN ...]
    gradflow verify  [model] [--mc]         exit 0 when every check passes, 1 otherwise
    gradflow figures [--quick] --out DIR
    gradflow bench   [--quick] [--json FILE]
    gradflow sweep   --grid GRID.toml --out DIR [--scheduler ADDRESS]

[model] is ``--preset NAME [--P ..] [--mask-ratio ..] ...`` or ``--config FILE.toml``. User errors
print one line to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .compare import compare
from .config import load_model
from .montecarlo import TrainRun, train_transformer
from .observables import phases
from .presets import PRESETS, global_local, preset_model
from .solver import Solution, solve, target_fraction
from .verify import verify


class _Parser(argparse.ArgumentParser):
    """argparse reporting usage errors in one line, exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a preset, or --config)")
    g.add_argument("--config", type=Path, help="TOML file describing any DataModel")
    g.add_argument("--preset", default="global_local", help=f"one of {sorted(PRESETS)}")
    g.add_argument("--P", type=int, default=64, help="number of patches")
    g.add_argument("--mask-ratio", type=float, default=0.5, help="mask probability gamma")
    g.add_argument("--n-local", type=int, default=4, help="local areas per cluster (global_local)")
    g.add_argument("--local-size", type=int, default=4, help="patches per local area (global_local)")
    g.add_argument("--n-clusters", type=int, default=1)


def _add_flow_options(p: argparse.ArgumentParser, t_max: float) -> None:
    p.add_argument("--t-max", type=float, default=t_max, help="length of the flow")
    p.add_argument("--method", default="exact", help="exact or meanfield")


def _model_from(args):
    if args.config is not None:
        return load_model(args.config)
    kw = {"n_clusters": args.n_clusters}
    if args.preset == "global_local":
        kw.update(n_local=args.n_local, local_size=args.local_size)
    return preset_model(args.preset, args.P, args.mask_ratio, **kw)


def solve_summary(sol) -> str:
    """What ``python -m gradflow`` prints: phases reached, loss, area attention, wall time."""
    model = sol.model
    ph = phases(sol)
    frac = target_fraction(sol.area_attention[-1], model.ceiling())
    lines = [f"gradflow: {model!r}",
             f"  method {sol.method}, t_max {sol.t[-1]:g}, status {sol.status}: {sol.message}",
             f"  loss {sol.loss[0]:.6g} -> {sol.loss[-1]:.6g}"]
    for name, sel in (("local", ph.is_local), ("global", ~ph.is_local)):
        if sel.any():
            parts = []
            for tn in ("T1", "T2", "T3"):
                T = getattr(ph, tn)[sel]
                reached = np.isfinite(T)
                parts.append(f"{tn} {np.median(T[reached]):.4g}" if reached.all()
                             else f"{tn} reached by {reached.sum()}/{reached.size}")
            lines.append(f"  phases of {name} queries ({sel.sum()}): " + ", ".join(parts) + " (median)")
    lines += [f"  area attention / ceiling at t_max: min {np.nanmin(frac):.4f}, mean {np.nanmean(frac):.4f}, "
              f"max {np.nanmax(frac):.4f}",
              f"  wall time {sol.wall_time:.2f} s ({sol.nfev} gradient evaluations, "
              f"{sol.reduction.n_classes} classes)"]
    return "\n".join(lines)


def _seed_path(out: Path, seed: int, n: int) -> Path:
    """One file per seed: ``run.nc`` -> ``run_seed0.nc`` when several seeds are trained."""
    if "{seed}" in out.name:
        return out.with_name(out.name.format(seed=seed))
    return out if n == 1 else out.with_name(f"{out.stem}_seed{seed}{out.suffix}")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="gradflow", description="Exact gradient-flow dynamics of attention (arXiv 2403.02233).")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)

    s = sub.add_parser("solve", help="solve a gradient flow, print a summary, optionally save it")
    _add_model_options(s)
    _add_flow_options(s, 2000.0)
    s.add_argument("--out", type=Path, help="NetCDF file for the Solution")

    t = sub.add_parser("train", help="train Monte-Carlo transformers by SGD")
    _add_model_options(t)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--lr", type=float, required=True)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    t.add_argument("--record-every", type=int, default=100)
    t.add_argument("--out", type=Path, required=True, help="NetCDF file (one per seed: _seedN added)")

    c = sub.add_parser("compare", help="compare a saved Solution with saved TrainRuns")
    c.add_argument("solution", type=Path)
    c.add_argument("runs", type=Path, nargs="+")
    c.add_argument("--tol", type=float, default=0.05, help="area-attention tolerance for the exit status")

    v = sub.add_parser("verify", help="check the paper's claims; exit 1 if a check fails")
    _add_model_options(v)
    _add_flow_options(v, 1e4)
    v.add_argument("--mc", action="store_true", help="also train Monte-Carlo transformers")
    v.add_argument("--mc-steps", type=int, default=2000)
    v.add_argument("--mc-lr", type=float, default=0.05)
    v.add_argument("--mc-batch-size", type=int, default=256)
    v.add_argument("--mc-seeds", type=int, default=2)

    w = sub.add_parser("sweep", help="solve a grid of models as Dask tasks, gather one NetCDF")
    w.add_argument("--grid", type=Path, required=True, help="TOML: preset, t_max, [fixed], [grid], [mc]")
    w.add_argument("--out", type=Path, required=True, help="directory (reruns skip finished points)")
    w.add_argument("--scheduler", help="address of a running dask scheduler (default: a LocalCluster)")

    b = sub.add_parser("bench", help="benchmarks against brute force, NumPy and Monte Carlo")
    b.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    b.add_argument("--json", type=Path, help="also write the results as JSON")

    f = sub.add_parser("figures", help="make the six figures (PNG and PDF)")
    f.add_argument("--out", type=Path, default=Path("figures"))
    f.add_argument("--quick", action="store_true", help="small versions, under a minute")
    return ap


def _check_out(path) -> None:
    """Refuse an output file we could not write, before any work is done."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a directory, not a file")
    if not path.parent.exists():
        raise ValueError(f"output directory {str(path.parent)!r} does not exist")


def _run(args) -> int:
    if args.command is None:
        sol = solve(global_local(64, n_local=4, local_size=4, mask_ratio=0.5), 2000.0)
        print(solve_summary(sol))
        return 0
    if args.command in ("solve", "train"):
        _check_out(args.out)
    if args.command == "solve":
        sol = solve(_model_from(args), args.t_max, method=args.method)
        print(solve_summary(sol))
        if args.out is not None:
            sol.save(args.out)
            print(f"  saved {args.out}")
        return 0
    if args.command == "train":
        model = _model_from(args)
        if args.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {args.seeds}")
        for seed in range(args.seeds):
            run = train_transformer(model, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                    seed=seed, record_every=args.record_every)
            path = _seed_path(args.out, seed, args.seeds)
            run.save(path)
            print(f"seed {seed}: t = {run.t[-1]:g}, final batch loss {run.loss[-1]:.6g}, "
                  f"{run.steps / run.wall_time:.0f} steps/s, saved {path}")
        return 0
    if args.command == "compare":
        comparison = compare(Solution.load(args.solution), [TrainRun.load(p) for p in args.runs])
        print(comparison.table())
        return 0 if comparison.ok(args.tol) else 1
    if args.command == "verify":
        model = _model_from(args)
        mc = None
        if args.mc:
            mc = dict(steps=args.mc_steps, lr=args.mc_lr, batch_size=args.mc_batch_size,
                      seeds=args.mc_seeds, record_every=max(1, args.mc_steps // 20))
        report = verify(model, t_max=args.t_max, method=args.method, mc=mc)
        print(f"gradflow verify: {model!r}")
        print(report.table())
        return 0 if report.passed else 1
    if args.command == "sweep":
        from .sweep import sweep_from_file
        ds = sweep_from_file(args.grid, args.out, scheduler=args.scheduler)
        failed = int((ds["error"].values != "").sum())
        print(f"{ds.attrs['points']} points ({ds.attrs['computed']} computed now, {failed} failed): "
              f"{args.out / 'sweep.nc'}")
        return 0
    if args.command == "bench":
        from .bench import main as bench_main
        bench_main(quick=args.quick, json_path=args.json)
        return 0
    if args.command == "figures":
        from .figures import make_figures
        start = time.perf_counter()
        results = make_figures(args.out, quick=args.quick)
        for res in results.values():
            print("  " + ", ".join(str(p) for p in res.paths))
        print(f"{len(results)} figures in {time.perf_counter() - start:.1f} s")
        return 0
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError) as exc:     # bad input, or a file we cannot read or write
        print(f"gradflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
