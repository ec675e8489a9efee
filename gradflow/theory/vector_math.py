"""exp(x) for x <= 0 in a form LLVM can vectorise (no call into libm).

Numba compiles ``math.exp`` to a call of the C library's scalar exp: a loop that calls it is never
vectorised (llvmlite ships no vector math library). The hot key loops of the exact kernels take
one exponential per key and node, so they use this one: Cody-Waite reduction x = k ln 2 + r,
|r| <= ln 2 / 2, a degree-13 Taylor polynomial for e^r (truncation error < 4e-18) and 2^k built
from its exponent bits. Relative error <= 4e-16 against the C library for -708 <= x <= 0
(tests/test_kernels.py); 0 below -708 (the true value is < 3e-308).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LN2_HI = 6.93147180369123816490e-01     # ln 2 split so that k * LN2_HI is exact for |k| < 2^20
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e+00
EXP_FLOOR = -708.0                      # e^x below this is < 3.3e-308: returned as 0


@intrinsic
def _double_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(cache=True, inline="always", error_model="numpy")
def exp_nonpositive(x):
    """e^x for x <= 0, branch-free (vectorisable)."""
    y = max(x, EXP_FLOOR)
    k = math.floor(y * INV_LN2 + 0.5)
    r = (y - k * LN2_HI) - k * LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    scale = _double_from_bits((np.int64(k) + 1023) << 52)
    return 0.0 if x < EXP_FLOOR else p * scale


@intrinsic
def _bits_from_double(typingctx, x):
    """The int64 whose bits are the IEEE-754 pattern of the float64 ``x``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


SQRT2 = 1.4142135623730951
MANTISSA_BITS = (1 << 52) - 1
ONE_BITS = 1023 << 52                   # the exponent bits of 1.0


@njit(cache=True, inline="always", error_model="numpy")
def log_normal_positive(x):
    """log(x) for a normal positive float64 (x >= 2.3e-308), branch-free (vectorisable).

    x = 2^k m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with s = (m - 1) / (m + 1),
    |s| <= 0.172, summed to s^23 (truncation error < 1e-18): relative error <= 2e-16 against the
    C library away from x = 1, absolute <= 1e-16 near it (tests/test_kernels.py).
    """
    bits = _bits_from_double(x)
    k = (bits >> 52) - 1023
    m = _double_from_bits((bits & MANTISSA_BITS) | ONE_BITS)        # in [1, 2)
    high = m > SQRT2
    m = m * 0.5 if high else m
    kf = float(k) + (1.0 if high else 0.0)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = 1.0 / 23.0
    p = p * s2 + 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    return kf * LN2_HI + (2.0 * s + 2.0 * s * s2 * p + kf * LN2_LO)
