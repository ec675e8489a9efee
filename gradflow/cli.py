"""Command line: a thin layer over the Python API.

``python -m gradflow`` (or ``gradflow`` / ``gradflow solve``) solves a preset and prints a
summary. User errors print one line to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .presets import PRESETS, global_local
from .solver import solve


def _summary(sol, wall: float) -> str:
    model = sol.model
    frac = sol.area_attention[-1] / model.ceiling()
    t_half = []
    for k in range(model.n_clusters):
        for p in range(model.n_patches):
            crossed = np.flatnonzero(sol.area_attention[:, k, p] >= 0.5 * model.ceiling()[k, p])
            t_half.append(sol.t[crossed[0]] if crossed.size else np.inf)
    reached = np.isfinite(t_half)
    lines = [
        f"gradflow: {model!r}",
        f"  method {sol.method}, t_max {sol.t[-1]:g}, status {sol.status}: {sol.message}",
        f"  loss {sol.loss[0]:.6g} -> {sol.loss[-1]:.6g} (monotone: {bool(np.all(np.diff(sol.loss) <= 1e-12))})",
        f"  target mass reached half its ceiling for {reached.sum()}/{reached.size} (cluster, query) pairs"
        + (f", by t = {max(np.array(t_half)[reached]):.4g}" if reached.any() else ""),
        f"  area attention / ceiling at t_max: min {frac.min():.4f}, mean {frac.mean():.4f}, max {frac.max():.4f}",
        f"  wall time {wall:.2f} s ({sol.nfev} gradient evaluations, {sol.reduction.n_classes} classes)",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gradflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command")
    s = sub.add_parser("solve", help="solve a preset's gradient flow and print a summary")
    s.add_argument("--preset", default="global_local", help=f"one of {sorted(PRESETS)}")
    s.add_argument("--P", type=int, default=64, help="number of patches (global_local)")
    s.add_argument("--mask-ratio", type=float, default=0.5)
    s.add_argument("--t-max", type=float, default=2000.0)
    s.add_argument("--method", default="exact", help="exact or meanfield")
    return ap


def run_solve(preset: str = "global_local", P: int = 64, mask_ratio: float = 0.5,
              t_max: float = 2000.0, method: str = "exact") -> str:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset == "global_local":
        model = global_local(P, mask_ratio=mask_ratio)
    else:
        side = int(round(np.sqrt(P)))
        if side * side != P or side % 2:
            raise ValueError(f"P must be an even square for the balanced preset, got {P}")
        model = PRESETS[preset]((side, side), (side // 2, side // 2), mask_ratio)
    start = time.perf_counter()
    sol = solve(model, t_max, method=method)
    return _summary(sol, time.perf_counter() - start)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in (None, "solve"):
            kw = {} if args.command is None else dict(
                preset=args.preset, P=args.P, mask_ratio=args.mask_ratio, t_max=args.t_max,
                method=args.method)
            print(run_solve(**kw))
            return 0
    except ValueError as exc:
        print(f"gradflow: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
