"""Pure 2D polygon geometry on pixel grids (no DICOM here): even-odd filling and marching squares.

Filling samples pixel centres with the even-odd rule, so holes, nested islands and self-intersecting
outlines come out as planning systems show them. Tracing (``mask_to_polygons``) is our own marching
squares with consistent orientation, so outer boundaries and holes come out as separate closed loops.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def fill_even_odd(polygons: Iterable[np.ndarray], shape_yx: tuple[int, int]) -> np.ndarray:
    """Fill closed polygons on a pixel grid with the even-odd rule, sampling pixel centres.

    All polygons are filled together, so overlapping ones XOR (holes, nested islands) and a
    self-intersecting outline fills like a planning system draws it.

    Args:
        polygons: (n, 2) vertex arrays in continuous index coordinates (i = column, j = row); pixel
            (j, i) has its centre at (i, j). The closing edge is implicit.
        shape_yx: (rows, columns) of the output.

    Returns:
        Boolean (rows, columns) mask.
    """
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    width = nx + 1  # one spare column collects crossings right of the last pixel
    cells = []
    for poly in polygons:
        p = np.asarray(poly, float)
        if len(p) < 3:
            continue
        x0, y0 = p[:, 0], p[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # Half-open rule (ylo <= row < yhi): a vertex exactly on a row is counted once, horizontal edges never.
        ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.clip(np.ceil(ylo), 0, ny).astype(np.int64)
        stop = np.clip(np.ceil(yhi), 0, ny).astype(np.int64)
        count = np.maximum(stop - first, 0)
        total = int(count.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(p)), count)
        offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        row = first[edge] + offset
        t = (row - y0[edge]) / (y1[edge] - y0[edge])
        x = x0[edge] + t * (x1[edge] - x0[edge])
        # A crossing at x toggles every pixel centre to its right (i > x): ray casting towards -x.
        start = np.clip(np.floor(x).astype(np.int64) + 1, 0, nx)
        cells.append(row * width + start)
    if not cells:
        return np.zeros((ny, nx), bool)
    toggles = np.bincount(np.concatenate(cells), minlength=ny * width).reshape(ny, width)
    return (np.cumsum(toggles, axis=1)[:, :nx] & 1).astype(bool)


# Work bound of the self-intersection check: candidate edge pairs tested at most (a real contour
# of n points yields about 10 n; an adversarial one stops here instead of running for minutes).
MAX_PAIR_TESTS = 20_000_000


def _runs_pairs(order_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All position pairs (p, q), p < q, within runs of equal values of a sorted array."""
    n = order_cells.size
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, order_cells[1:] != order_cells[:-1]])
    ends = np.r_[starts[1:], n]
    run_end = np.repeat(ends, ends - starts)
    after = run_end - np.arange(n) - 1  # later members of the same run
    total = int(after.sum())
    if total > MAX_PAIR_TESTS:
        raise OverflowError
    first = np.repeat(np.arange(n), after)
    offset = np.arange(total) - np.repeat(np.cumsum(after) - after, after)
    return first, first + 1 + offset


def polygon_self_intersects(poly: np.ndarray) -> bool:
    """Whether two non-adjacent edges of a closed polygon cross (proper crossings only).

    Edges are bucketed on a uniform grid about one edge long, and only edges sharing a cell are
    tested: O(n) for a real contour (80,000 points in well under a second), never quadratic.
    A pathological outline needing more than :data:`MAX_PAIR_TESTS` tests is reported as not
    self-intersecting (the check only feeds the import report; filling is the same either way).
    """
    p = np.asarray(poly, float)
    if p.ndim != 2 or len(p) == 0:
        return False
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(np.diff(p, axis=0) != 0, axis=1)  # repeated points make zero-length edges
    p = p[keep]
    if len(p) > 1 and np.all(p[0] == p[-1]):
        p = p[:-1]
    n = len(p)
    if n < 4 or not np.all(np.isfinite(p)):
        return False
    a, b = p, np.roll(p, -1, axis=0)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    extent = float(max((hi - lo.min(0)).max(), 1e-9))
    cell = max(2.0 * float(np.median(np.abs(b - a).max(1))), extent / n, 1e-9)
    while True:
        c0 = np.floor((lo - lo.min(0)) / cell).astype(np.int64)
        c1 = np.floor((hi - lo.min(0)) / cell).astype(np.int64)
        span = c1 - c0 + 1
        counts = span[:, 0] * span[:, 1]
        if int(counts.sum()) <= 8 * n + 1024:
            break
        cell *= 2  # long edges: coarser cells keep the bucket count linear
    edge = np.repeat(np.arange(n), counts)
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    cx = c0[edge, 0] + k % span[edge, 0]
    cy = c0[edge, 1] + k // span[edge, 0]
    key = cy * (int(c1[:, 0].max()) + 2) + cx
    order = np.argsort(key, kind="stable")
    try:
        first, second = _runs_pairs(key[order])
    except OverflowError:
        return False
    ii, jj = edge[order][first], edge[order][second]
    ii, jj = np.minimum(ii, jj), np.maximum(ii, jj)
    ok = (jj > ii + 1) & ~((ii == 0) & (jj == n - 1))  # adjacent edges share a vertex: not a crossing
    ok &= (lo[ii, 0] <= hi[jj, 0]) & (lo[jj, 0] <= hi[ii, 0]) & (lo[ii, 1] <= hi[jj, 1]) & (lo[jj, 1] <= hi[ii, 1])
    ii, jj = ii[ok], jj[ok]

    def orient(p0, p1, q):
        return (p1[..., 0] - p0[..., 0]) * (q[..., 1] - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (q[..., 0] - p0[..., 0])

    d1, d2 = orient(a[ii], b[ii], a[jj]), orient(a[ii], b[ii], b[jj])
    d3, d4 = orient(a[jj], b[jj], a[ii]), orient(a[jj], b[jj], b[ii])
    return bool(np.any((d1 * d2 < 0) & (d3 * d4 < 0)))


# Cell corners: 1 = top-left (y, x), 2 = top-right (y, x+1), 4 = bottom-right (y+1, x+1), 8 = bottom-left (y+1, x).
# Edge midpoints in doubled coordinates relative to the cell's top-left corner (2x, 2y).
_EDGE = {"T": (1, 0), "R": (2, 1), "B": (1, 2), "L": (0, 1)}
_CORNER = {1: (0, 0), 2: (2, 0), 4: (2, 2), 8: (0, 2)}
# Which edges each case connects; saddles (5, 10) keep diagonal foreground pixels apart, so each
# 4-connected island gets its own loop.
_PAIRS = {1: ["TL"], 2: ["TR"], 3: ["LR"], 4: ["RB"], 5: ["TL", "RB"], 6: ["TB"], 7: ["LB"], 8: ["LB"],
          9: ["TB"], 10: ["TR", "LB"], 11: ["RB"], 12: ["LR"], 13: ["TR"], 14: ["TL"]}


def _segment_table() -> dict[int, list]:
    """Directed segments per case, oriented so the foreground is always on the same side.

    That orientation gives every crossing point exactly one incoming and one outgoing segment, so
    loops link without search, and outer boundaries and holes run in opposite senses.
    """
    table = {}
    for case, pairs in _PAIRS.items():
        segs = []
        for pair in pairs:
            a, b = np.array(_EDGE[pair[0]], float), np.array(_EDGE[pair[1]], float)
            mid, d = (a + b) / 2, b - a
            # The corner nearest the segment on each side decides which side is foreground.
            sides = {}
            for bit, pos in _CORNER.items():
                cross = d[0] * (pos[1] - a[1]) - d[1] * (pos[0] - a[0])
                dist = np.linalg.norm(np.array(pos) - mid)
                side = cross > 0
                if side not in sides or dist < sides[side][0]:
                    sides[side] = (dist, bool(case & bit))
            if sides[True][1] == sides[False][1]:
                raise AssertionError(f"bad marching-squares table entry {case}")
            if not sides[True][1]:  # put the foreground on the positive-cross side
                a, b = b, a
            segs.append((tuple(int(v) for v in a), tuple(int(v) for v in b)))
        table[case] = segs
    return table


_SEGMENTS = _segment_table()


def mask_to_polygons(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D binary mask, holes included, in index coordinates (i, j).

    Marching squares at the 0.5 level through edge midpoints: every foreground pixel centre lies
    strictly inside the outlines and every background one strictly outside, so even-odd filling of
    the result gives back the mask exactly. Collinear vertices are removed.

    Returns:
        A list of (n, 2) float arrays (i = column, j = row), one per loop; outer boundaries and holes
        run in opposite directions.
    """
    m = np.asarray(mask2d).astype(bool)
    ny, nx = m.shape
    p = np.zeros((ny + 2, nx + 2), np.uint8)
    p[1:-1, 1:-1] = m
    case = p[:-1, :-1] * 1 + p[:-1, 1:] * 2 + p[1:, 1:] * 4 + p[1:, :-1] * 8
    width = 2 * (nx + 2) + 1
    starts, ends = [], []
    for c, segs in _SEGMENTS.items():
        yy, xx = np.nonzero(case == c)
        if yy.size == 0:
            continue
        for (ax, ay), (bx, by) in segs:
            starts.append((2 * yy + ay) * width + 2 * xx + ax)
            ends.append((2 * yy + by) * width + 2 * xx + bx)
    if not starts:
        return []
    s, e = np.concatenate(starts), np.concatenate(ends)
    nxt = dict(zip(s.tolist(), e.tolist()))
    loops = []
    seen = set()
    for start in s.tolist():
        if start in seen:
            continue
        loop, key = [], start
        while key not in seen:
            seen.add(key)
            loop.append(key)
            key = nxt[key]
        keys = np.asarray(loop)
        xy = np.stack([(keys % width) / 2.0 - 1.0, (keys // width) / 2.0 - 1.0], axis=1)
        loops.append(_drop_collinear(xy))
    return loops


def _drop_collinear(xy: np.ndarray) -> np.ndarray:
    d_in = xy - np.roll(xy, 1, axis=0)
    d_out = np.roll(xy, -1, axis=0) - xy
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    keep = np.abs(cross) > 1e-9
    return xy[keep] if keep.sum() >= 3 else xy



def _inside(point: np.ndarray, poly: np.ndarray) -> bool:
    """Even-odd ray casting of one point against one closed polygon."""
    x, y = float(point[0]), float(point[1])
    xs, ys = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(xs, -1), np.roll(ys, -1)
    crosses = (ys > y) != (yn > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = xs + (y - ys) * (xn - xs) / (yn - ys)
    return bool(np.count_nonzero(crosses & (x_at > x)) % 2)


def even_odd_area(polygons: Iterable[np.ndarray]) -> float:
    """The area the even-odd rule fills for non-crossing closed polygons (holes and islands), in the
    polygons' own units squared: each polygon's shoelace area, subtracted when it lies inside an odd
    number of the others (a hole), added otherwise.
    """
    polys = [np.asarray(p, float)[:, :2] for p in polygons]
    total = 0.0
    for k, p in enumerate(polys):
        x, y = p[:, 0], p[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        depth = sum(_inside(p[0], q) for m, q in enumerate(polys) if m != k)
        total += -area if depth % 2 else area
    return total
