"""Figures: drawing only (the science they show is computed in the layers below).

``make_figures(out_dir, quick=False)`` writes the paper's six figures as PNG and PDF.
"""
from .paper import FIGURES, FigureResult, make_figures

__all__ = ["FIGURES", "FigureResult", "make_figures"]
