"""Geometry of the shapes world: a signed-distance-like function per shape, and smooth-noise upsampling."""

from __future__ import annotations

import numpy as np


def shape_distance(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed-distance-like value (< 0 inside) of a unit-radius shape at local coordinates ``(u, v)``."""
    r = np.sqrt(u * u + v * v)
    if shape == 0:  # circle
        return r - 0.9
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.72
    if shape == 2:  # triangle (equilateral, point up)
        d = v - 0.5
        d = np.maximum(d, np.maximum(-0.866 * u - 0.5 * v - 0.5, 0.866 * u - 0.5 * v - 0.5))
        return d
    if shape == 3:  # five-pointed star
        theta = np.arctan2(u, -v)
        phase = np.mod(theta * 5.0 / (2.0 * np.pi), 1.0)
        tri = np.abs(phase - 0.5) * 2.0  # 1 at the points, 0 between them
        return 0.55 * (r - (0.42 + 0.58 * tri))
    if shape == 4:  # cross
        a = np.maximum(np.abs(u) - 0.28, np.abs(v) - 0.92)
        b = np.maximum(np.abs(u) - 0.92, np.abs(v) - 0.28)
        return np.minimum(a, b)
    if shape == 5:  # ring
        return np.abs(r - 0.68) - 0.25
    if shape == 6:  # diamond (tall rhombus)
        return (np.abs(u) / 0.55 + np.abs(v) - 1.0) * 0.48
    if shape == 7:  # hexagon
        d = np.abs(u)
        for ang in (np.pi / 3, 2 * np.pi / 3):
            d = np.maximum(d, np.abs(np.cos(ang) * u + np.sin(ang) * v))
        return d - 0.8
    if shape == 8:  # crescent
        return np.maximum(r - 0.95, 0.8 - np.sqrt((u - 0.42) ** 2 + (v + 0.12) ** 2))
    # heart: two lobes on top of a rhombus
    lobes = np.minimum(np.sqrt((u + 0.42) ** 2 + (v + 0.3) ** 2), np.sqrt((u - 0.42) ** 2 + (v + 0.3) ** 2)) - 0.48
    body = (np.abs(u) + np.abs(v + 0.05) - 0.9) * 0.7071
    return np.minimum(lobes, body)


def bilinear_matrix(n_low: int, n_high: int) -> np.ndarray:
    """Interpolation matrix ``[n_high, n_low]`` for smooth-noise upsampling."""
    pos = np.linspace(0, n_low - 1, n_high)
    lo = np.floor(pos).astype(int).clip(0, n_low - 2)
    w = pos - lo
    m = np.zeros((n_high, n_low), dtype=np.float32)
    m[np.arange(n_high), lo] = 1 - w
    m[np.arange(n_high), lo + 1] = w
    return m
