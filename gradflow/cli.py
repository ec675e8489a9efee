"""Command line: a thin layer over the Python API.

``python -m gradflow`` (or ``gradflow`` with no command) solves the default preset and prints a
summary; ``gradflow solve`` and ``gradflow verify`` take the model options below. User errors
print one line to stderr and exit with status 2; ``verify`` exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .observables import phases
from .presets import PRESETS, balanced, global_local
from .solver import solve
from .verify import verify


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line and exits 2 (its own convention too)."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _add_model_options(p: argparse.ArgumentParser, t_max: float) -> None:
    p.add_argument("--preset", default="global_local", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--P", type=int, default=64, help="number of patches")
    p.add_argument("--mask-ratio", type=float, default=0.5, help="mask probability gamma")
    p.add_argument("--n-local", type=int, default=4, help="local areas per cluster (global_local)")
    p.add_argument("--local-size", type=int, default=4, help="patches per local area (global_local)")
    p.add_argument("--n-clusters", type=int, default=1)
    p.add_argument("--t-max", type=float, default=t_max, help="length of the flow")
    p.add_argument("--method", default="exact", help="exact or meanfield")


def build_model(preset: str, P: int, mask_ratio: float, n_local: int = 4, local_size: int = 4,
                n_clusters: int = 1):
    """The DataModel the command line describes (ValueError on bad options)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset == "global_local":
        return global_local(P, n_local=n_local, local_size=local_size, mask_ratio=mask_ratio,
                            n_clusters=n_clusters)
    side = int(round(np.sqrt(P))) if P > 0 else 0
    if side * side != P or side % 2:
        raise ValueError(f"P must be an even square for the balanced preset (four square areas), got {P}")
    return balanced((side, side), (side // 2, side // 2), mask_ratio, n_clusters=n_clusters)


def _model_from(args):
    return build_model(args.preset, args.P, args.mask_ratio, args.n_local, args.local_size, args.n_clusters)


def solve_summary(sol) -> str:
    """What `python -m gradflow` prints: phases reached, loss, area attention, wall time."""
    model = sol.model
    ph = phases(sol)
    frac = sol.area_attention[-1] / model.ceiling()
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
    lines += [f"  area attention / ceiling at t_max: min {frac.min():.4f}, mean {frac.mean():.4f}, max {frac.max():.4f}",
              f"  wall time {sol.wall_time:.2f} s ({sol.nfev} gradient evaluations, "
              f"{sol.reduction.n_classes} classes)"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="gradflow", description="Exact gradient-flow dynamics of attention (arXiv 2403.02233).")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    s = sub.add_parser("solve", help="solve a preset's gradient flow and print a summary")
    _add_model_options(s, 2000.0)
    v = sub.add_parser("verify", help="check the paper's claims on a preset; exit 1 if a check fails")
    _add_model_options(v, 1e4)
    v.add_argument("--mc", action="store_true", help="also train Monte-Carlo transformers")
    v.add_argument("--mc-steps", type=int, default=2000)
    v.add_argument("--mc-lr", type=float, default=0.05)
    v.add_argument("--mc-batch-size", type=int, default=256)
    v.add_argument("--mc-seeds", type=int, default=2)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command is None:
            start = time.perf_counter()
            sol = solve(global_local(64, n_local=4, local_size=4, mask_ratio=0.5), 2000.0)
            print(solve_summary(sol))
            print(f"  total {time.perf_counter() - start:.2f} s")
            return 0
        model = _model_from(args)
        if args.command == "solve":
            print(solve_summary(solve(model, args.t_max, method=args.method)))
            return 0
        if args.command == "verify":
            mc = None
            if args.mc:
                mc = dict(steps=args.mc_steps, lr=args.mc_lr, batch_size=args.mc_batch_size,
                          seeds=args.mc_seeds, record_every=max(1, args.mc_steps // 20))
            report = verify(model, t_max=args.t_max, method=args.method, mc=mc)
            print(f"gradflow verify: {model!r}")
            print(report.table())
            return 0 if report.passed else 1
    except ValueError as exc:
        print(f"gradflow: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
