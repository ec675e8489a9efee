"""Data models from real images: photographs cut into patches and segmented into the paper's areas.

``segment(image, grid, n_areas)`` turns a photograph into an (H, W) label map at patch
resolution with exactly ``n_areas`` 4-connected areas whose boundaries follow the image;
``data_model(images, ...)`` makes one cluster per image, with amplitudes read from the image;
``sample_images(names)`` returns photographs that ship inside scikit-image (nothing is downloaded).

How a label map is made
-----------------------
1. **Patch features.** The image is cut into ``grid`` patches (edges at ``round(i * H / gh)``, so
   every patch holds at least one pixel); each patch is described by its mean colour (grey: its
   mean intensity), rescaled by the image's intensity range to [0, 1]. So a uint8 image and the
   same image as floats, or any affine rescaling ``a * x + b`` (a > 0), give the same areas.
   An RGBA image is composited over white first (alpha scaled by the dtype's range; float alpha
   must lie in [0, 1]).
2. **Initial segments**, by ``method``:

   * ``"slic"`` (default): scikit-image SLIC on the grid of patch means (one "pixel" per patch),
     ``n_segments = n_areas``, ``compactness`` 0.05 (colours in [0, 1]), no smoothing;
   * ``"slic-pixels"``: SLIC on the photograph's pixels (downsampled to at most 256 pixels a
     side), each patch taking its majority label;
   * ``"felzenszwalb"``: Felzenszwalb's graph segmentation of the patch means (scale 1), which
     over-segments and leaves the count to the repair step;
   * ``"voronoi"``: random Voronoi cells of ``n_areas`` seed patches drawn with ``seed`` (a
     baseline that ignores the image).

3. **Repair to exactly n_areas 4-connected areas.** Every segment is split into its 4-connected
   components. Then adjacent areas are merged, the pair whose merge increases the within-area
   sum of squares least first (Ward's criterion, ``n_a n_b / (n_a + n_b) |mu_a - mu_b|^2`` on the
   patch features), and any pair with an area smaller than ``min_area`` (default 2: a single
   patch has no target, docs/model.md section 5) before any other, until at most ``n_areas``
   remain and none is too small; a merge of two connected neighbours stays connected. While
   there are too few, the area with the largest within-area sum of squares is cut in two along
   one edge of its minimum spanning tree (edge weights: feature distances of neighbouring
   patches), the edge whose cut gains most by Ward's criterion with both parts >= ``min_area``:
   both parts are connected, since tree edges join neighbours. The features used by the repair
   append the patch's position (row / gh, col / gw) with weight 0.05, so that a uniform region
   is cut in space and ties are rare; remaining ties are broken by label order. Labels are
   finally numbered by first appearance in row-major order.

Which method follows the image
------------------------------
Measured by the fraction of the variance of the patch means left within areas (sum over areas
of the within-area sum of squares / total sum of squares: 0 when every area is uniform; lower
follows the image better), at 14 x 14 patches and 8 areas, on the 19 shipped photographs of
:data:`SAMPLE_NAMES` and on 20 LFW faces (``lfw:0``, ``lfw:10``, ..., ``lfw:190``)::

    method                        photographs: mean  median  best on    faces: mean
    slic (patch means), default                0.237   0.204     8             0.101
    felzenszwalb (patch means)                 0.246   0.208    10             0.101
    slic-pixels (majority vote)                0.332   0.238     1             0.124
    voronoi (random, mean of 20 seeds)         0.723   0.725     0             0.593

(``gradflow.analysis.areas.segmentation_quality().table()`` reprints the photograph columns.)
Segmenting the grid of patch means follows the image far better than random partitions and
better than segmenting pixels and voting per patch. SLIC and Felzenszwalb are within 0.01 of
each other: at 14 x 14 both over-segment (about 60 and 170 connected pieces) and the Ward repair
decides most boundaries (the score is the repair's own criterion, so it favours neither).
Felzenszwalb is best on more photographs (10 of 19 against 8), SLIC has the lower mean and
median (it fails less badly where it loses) and is the default.

Amplitudes
----------
``amplitudes="contrast"``: area j's amplitude is the RMS contrast of its pixels against the
whole image, ``c_j = sqrt(mean over the pixels of the area's patches and over the channels of
(x - m)^2)`` with m the image's mean colour (per channel), computed on the intensities rescaled as
in step 1; the c_j are divided by their mean over the image's areas (so they average 1) and then
clipped to [0.05, 20], so that no amplitude is 0. An image with no contrast at all (constant)
gets 1 everywhere. Each area's amplitude is a point mass at that value. ``amplitudes="unit"``
sets every amplitude to 1.
"""
from __future__ import annotations

import heapq
import os
from collections.abc import Mapping, Sequence

import numpy as np

from .._validate import (
    choice,
    fmt,
    is_int,
    nonnegative_int,
    positive_int,
    real,
    suggest,
)
from ..errors import FileFormatError, InvalidInputError
from .amplitude import Amplitude
from .datamodel import Cluster, DataModel

METHODS = ("slic", "slic-pixels", "felzenszwalb", "voronoi")
AMPLITUDE_RULES = ("contrast", "unit")
AMPLITUDE_RANGE = (0.05, 20.0)   # contrast amplitudes are clipped here: none is 0, none dominates
POSITION_WEIGHT = 0.05           # weight of (row / gh, col / gw) beside the colour in the repair step
MIN_AREA = 2                     # default smallest area: a single patch has no target (ceiling 0)
SLIC_COMPACTNESS = 0.05          # SLIC's colour-space trade-off for colours in [0, 1]
PIXEL_SIDE = 256                 # "slic-pixels" downsamples to at most this many pixels a side

# photographs and scans whose files ship inside scikit-image's wheel (skimage/data/): loading them
# reads a file from the installed package. Names whose data scikit-image would download are left out.
_SKIMAGE_FILES = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png", "cell": "cell.png",
    "chelsea": "chelsea.png", "clock": "clock_motion.png", "coffee": "coffee.png", "coins": "coins.png",
    "grass": "grass.png", "gravel": "gravel.png", "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png", "logo": "logo.png", "moon": "moon.png",
    "motorcycle": "motorcycle_left.png", "page": "page.png", "retina": "retina.jpg",
    "rocket": "rocket.jpg", "text": "text.png",
}
SAMPLE_NAMES = tuple(_SKIMAGE_FILES)
LFW_FILE = "lfw_subset.npy"      # 200 faces, 25 x 25 grey: names "lfw:0" .. "lfw:199"
N_FACES = 200
# what `sample_images()` and `gradflow images` take by default: photographs and scientific images (no text
# scans, no drawings)
DEFAULT_SAMPLES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "motorcycle", "coins", "moon",
                   "clock", "brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
                   "retina", "cell")


# ---- shipped images ----------------------------------------------------------------------------
def _skimage_data_dir() -> str:
    import skimage.data
    return os.path.dirname(skimage.data.__file__)


def sample_names() -> tuple[str, ...]:
    """Names :func:`sample_images` accepts: the photographs, then ``"lfw:0"`` .. ``"lfw:199"``."""
    return SAMPLE_NAMES + tuple(f"lfw:{i}" for i in range(N_FACES))


def _load_sample(name: str) -> np.ndarray:
    folder = _skimage_data_dir()
    if isinstance(name, str) and name.startswith("lfw:"):
        index = name[4:]
        if not (index.isdigit() and int(index) < N_FACES):
            raise InvalidInputError(f"names: a face is 'lfw:0' .. 'lfw:{N_FACES - 1}', got {name!r}")
        path = os.path.join(folder, LFW_FILE)
        if not os.path.isfile(path):
            raise InvalidInputError(f"names: {name!r} is not available: scikit-image ships no {LFW_FILE} here")
        return np.load(path)[int(index)]
    if name not in _SKIMAGE_FILES:
        raise InvalidInputError(f"names: unknown sample image {name!r}{suggest(name, SAMPLE_NAMES)}; "
                                f"known: {', '.join(SAMPLE_NAMES)} and 'lfw:0' .. 'lfw:{N_FACES - 1}'")
    path = os.path.join(folder, _SKIMAGE_FILES[name])
    if not os.path.isfile(path):       # read the shipped file itself: nothing may be downloaded
        raise InvalidInputError(f"names: {name!r} is not available: its file {_SKIMAGE_FILES[name]} does not "
                                f"ship with this scikit-image")
    from skimage.io import imread
    return np.asarray(imread(path))


def sample_images(names=None) -> dict[str, np.ndarray]:
    """Images that ship inside scikit-image: nothing is downloaded.

    Parameters
    ----------
    names : str or sequence of str, optional
        Any of :data:`SAMPLE_NAMES` (``astronaut``, ``camera``, ``coffee``, ``chelsea``, ``rocket``,
        ``motorcycle``, ...) and faces of scikit-image's LFW subset as ``"lfw:0"`` ..
        ``"lfw:199"`` (25 x 25 grey). Default: the 16 photographs of :data:`DEFAULT_SAMPLES`.

    Returns
    -------
    dict name -> ndarray
        In the order asked, as stored (uint8 grey, RGB or RGBA; the faces float in [0, 1]).
    """
    if names is None:
        names = DEFAULT_SAMPLES
    elif isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise InvalidInputError("names must name at least one image, got none")
    for n in names:
        if not isinstance(n, str):
            raise InvalidInputError(f"names must be strings, got {fmt(n)}")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"names must not repeat, got {fmt(names)}")
    return {n: _load_sample(n) for n in names}


def read_image(path) -> np.ndarray:
    """An image file read with scikit-image (``skimage.io.imread``); FileFormatError naming the
    file when it is missing or not an image."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileFormatError(f"image file {path!r} does not exist")
    from skimage.io import imread
    try:
        return np.asarray(imread(path))
    except Exception as exc:            # imageio / PIL / tifffile raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"image file {path!r} is not an image scikit-image can read: {first}") from None


# ---- images in, patch features out -------------------------------------------------------------
def _check_grid(grid) -> tuple[int, int]:
    try:
        gh, gw = grid
    except (TypeError, ValueError):
        raise InvalidInputError(f"grid must be a pair of positive integers (H, W), got {fmt(grid)}") from None
    if not (is_int(gh) and is_int(gw) and gh >= 1 and gw >= 1):
        raise InvalidInputError(f"grid must be a pair of positive integers (H, W), got {fmt(grid)}")
    return int(gh), int(gw)


def _check_n_areas(n_areas, grid) -> int:
    P = grid[0] * grid[1]
    if not is_int(n_areas) or not (1 <= n_areas <= P):
        raise InvalidInputError(f"n_areas must be an integer in 1..P = {P} (the patches of grid {grid}), "
                                f"got {fmt(n_areas)}")
    return int(n_areas)


def image_array(image, name: str = "image") -> np.ndarray:
    """(H, W, C) float64 intensities of a grey (H, W), grey (H, W, 1), RGB or RGBA image.

    Values are kept as given (no rescaling); RGBA is composited over white, its alpha scaled by
    the dtype's range (uint8 by 255; float alpha must lie in [0, 1]). Bad input raises
    InvalidInputError naming ``name``.
    """
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be an array of pixel values, got {fmt(image)}") from None
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must hold real pixel values, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InvalidInputError(f"{name} must be grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4), "
                                f"got {arr.ndim} dimensions (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise InvalidInputError(f"{name} must have 1, 3 or 4 channels in its last axis, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidInputError(f"{name} must not be empty, got shape {arr.shape}")
    full = 1.0
    if arr.dtype.kind in "iu" and arr.dtype != np.bool_:
        full = float(np.iinfo(arr.dtype).max)
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0].tolist()
        raise InvalidInputError(f"{name} must be finite, got NaN or infinity at pixel {bad}")
    if out.ndim == 2:
        out = out[:, :, None]
    if out.shape[2] == 4:
        alpha = out[:, :, 3:] / full
        if alpha.min() < 0 or alpha.max() > 1:
            raise InvalidInputError(f"{name}: alpha must lie in [0, 1] for a float RGBA image, got "
                                    f"[{alpha.min():g}, {alpha.max():g}]")
        out = out[:, :, :3] * alpha + full * (1.0 - alpha)
    return np.ascontiguousarray(out)


def patch_edges(n_pixels: int, n_patches: int) -> np.ndarray:
    """(n_patches + 1,) pixel edges of the patches along one axis: every patch holds >= 1 pixel."""
    return np.round(np.linspace(0, n_pixels, n_patches + 1)).astype(np.int64)


def _check_size(img: np.ndarray, grid, name: str) -> None:
    if img.shape[0] < grid[0] or img.shape[1] < grid[1]:
        raise InvalidInputError(f"{name} must be at least as large as the grid {grid} (one pixel per patch), "
                                f"got {img.shape[0]} x {img.shape[1]} pixels")


def _normalised(img: np.ndarray) -> np.ndarray:
    """Intensities rescaled by the image's range to [0, 1] (a constant image becomes 0)."""
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _block_reduce(img: np.ndarray, grid, reducer) -> np.ndarray:
    """(gh, gw, C) ``reducer`` of every patch's pixels (axis 0 of a (pixels, C) array)."""
    ys, xs = patch_edges(img.shape[0], grid[0]), patch_edges(img.shape[1], grid[1])
    out = np.empty((grid[0], grid[1], img.shape[2]))
    for r in range(grid[0]):
        for c in range(grid[1]):
            out[r, c] = reducer(img[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].reshape(-1, img.shape[2]))
    return out


def patch_means(image, grid=(14, 14)) -> np.ndarray:
    """(gh, gw, C) mean colour of every patch, intensities rescaled by the image's range to [0, 1]."""
    grid = _check_grid(grid)
    img = image_array(image)
    _check_size(img, grid, "image")
    return _block_reduce(_normalised(img), grid, lambda block: block.mean(axis=0))


# ---- segmentation --------------------------------------------------------------------------------
def connected_components(labels: np.ndarray) -> np.ndarray:
    """Every label's 4-connected components as labels of their own (numbered by first appearance)."""
    from scipy import ndimage
    out = np.full(labels.shape, -1, dtype=np.int64)
    structure = ndimage.generate_binary_structure(2, 1)
    count = 0
    for lab in np.unique(labels):
        comp, n = ndimage.label(labels == lab, structure=structure)
        out[comp > 0] = comp[comp > 0] - 1 + count
        count += n
    return relabel(out)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 0..N-1 numbered by first appearance in row-major order."""
    flat = labels.ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()].reshape(labels.shape)


def is_connected(labels: np.ndarray) -> bool:
    """True when every label of the map forms one 4-connected region."""
    return int(connected_components(labels).max()) == int(labels.max())


def _adjacent_pairs(labels: np.ndarray) -> set:
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        diff = a != b
        for x, y in zip(a[diff].tolist(), b[diff].tolist()):
            pairs.add((min(x, y), max(x, y)))
    return pairs


def _merge(labels: np.ndarray, features: np.ndarray, n_areas: int, min_area: int) -> np.ndarray:
    """Merge adjacent areas by Ward's criterion until at most ``n_areas`` remain and none is
    smaller than ``min_area`` (a pair with an area below ``min_area`` goes before any other)."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    f = features.reshape(flat.size, -1)
    size = np.bincount(flat, minlength=n).astype(np.float64)
    total = np.stack([np.bincount(flat, weights=f[:, i], minlength=n) for i in range(f.shape[1])], axis=1)
    alive = np.ones(n, dtype=bool)
    neighbours = {i: set() for i in range(n)}
    for a, b in _adjacent_pairs(labels):
        neighbours[a].add(b)
        neighbours[b].add(a)

    def key(a, b):
        d = total[a] / size[a] - total[b] / size[b]
        small = min(size[a], size[b]) < min_area     # rank 0: such pairs merge first
        return (0 if small else 1, size[a] * size[b] / (size[a] + size[b]) * float(d @ d), a, b,
                version[a], version[b])

    version = np.zeros(n, dtype=np.int64)       # heap entries of areas changed since they were pushed are stale
    heap = [key(a, b) for a in range(n) for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    remaining = n
    parent = np.arange(n)
    while heap and remaining > 1:
        rank, _, a, b, va, vb = heap[0]
        if not (alive[a] and alive[b]) or va != version[a] or vb != version[b]:
            heapq.heappop(heap)
            continue
        if remaining <= n_areas and rank == 1:      # few enough areas, and none is too small
            break
        heapq.heappop(heap)
        alive[b] = False                            # b joins a (a < b): the merged area keeps a
        parent[b] = a
        size[a] += size[b]
        total[a] += total[b]
        version[a] += 1
        for x in neighbours.pop(b):
            neighbours[x].discard(b)
            if x != a:
                neighbours[x].add(a)
                neighbours[a].add(x)
        for x in neighbours[a]:
            heapq.heappush(heap, key(min(a, x), max(a, x)))
        remaining -= 1
    while True:                                     # follow merge chains to the surviving label
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    return relabel(parent[labels])


def _best_cut(members: np.ndarray, f: np.ndarray, shape, min_area: int):
    """The two parts of an area (flat patch indices ``members``) that cut one edge of its minimum
    spanning tree (edge weights: feature distances of neighbouring patches) with the largest
    Ward gain n1 n2 / (n1 + n2) |mu1 - mu2|^2, both parts >= ``min_area``; None if there is none.
    Both parts are 4-connected: tree edges join neighbouring patches."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

    m = members.size
    local = {int(p): i for i, p in enumerate(members)}
    rows, cols, weights = [], [], []
    for i, p in enumerate(members.tolist()):
        r, c = divmod(p, shape[1])
        for rr, cc in ((r, c + 1), (r + 1, c)):
            q = rr * shape[1] + cc
            if rr < shape[0] and cc < shape[1] and q in local:
                rows.append(i)
                cols.append(local[q])
                # sparse graphs drop zero weights: keep equal neighbours joined
                weights.append(float(np.sqrt(((f[p] - f[q]) ** 2).sum())) + 1e-9)
    graph = coo_matrix((weights, (rows, cols)), shape=(m, m)).tocsr()
    tree = minimum_spanning_tree(graph)
    tree = tree + tree.T
    order, pred = breadth_first_order(tree, 0, directed=False, return_predecessors=True)
    size = np.ones(m)
    total = f[members].copy()
    for i in order[::-1][:-1]:                  # subtree sizes and feature sums, leaves first
        size[pred[i]] += size[i]
        total[pred[i]] += total[i]
    grand = total[0]
    best, best_gain = None, -1.0
    for i in order[1:]:                         # cutting the edge above i separates i's subtree
        n1, n2 = size[i], m - size[i]
        if n1 < min_area or n2 < min_area:
            continue
        d = total[i] / n1 - (grand - total[i]) / n2
        gain = n1 * n2 / m * float(d @ d)
        if gain > best_gain:
            best, best_gain = i, gain
    if best is None:
        return None
    inside = np.zeros(m, dtype=bool)            # the subtree below the cut edge
    for i in order:
        if i == best or (pred[i] >= 0 and inside[pred[i]]):
            inside[i] = True
    return members[inside]


def _split(labels: np.ndarray, features: np.ndarray, min_area: int) -> np.ndarray:
    """Split one area in two connected parts: the area with the largest within-area sum of
    squares that has a valid cut (both parts >= ``min_area``; if no area has one, >= 1)."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    f = features.reshape(flat.size, -1)
    areas = []
    for j in range(n):
        members = np.flatnonzero(flat == j)
        if members.size >= 2:
            sse = float(((f[members] - f[members].mean(axis=0)) ** 2).sum())
            areas.append((-sse, -members.size, j, members))
    areas.sort(key=lambda a: a[:3])
    for least in (min_area, 1):
        for *_, j, members in areas:
            part = _best_cut(members, f, labels.shape, least)
            if part is not None:
                out = flat.copy()
                out[part] = n
                return out.reshape(labels.shape)
    raise AssertionError("an area of two or more patches always has a cut")


def exact_areas(labels, features, n_areas: int, min_area: int = 1) -> np.ndarray:
    """Exactly ``n_areas`` 4-connected areas from any label map (the repair step of the module
    docstring): split into connected components, merge by Ward's criterion (areas smaller than
    ``min_area`` first), split along a minimum spanning tree; labels numbered by first
    appearance in row-major order.

    ``features`` is (H, W, D): the patch descriptors the merge and split compare.
    ``min_area`` is lowered to P // n_areas when n_areas areas of that size cannot fit.
    """
    labels = connected_components(np.asarray(labels))
    min_area = max(1, min(min_area, labels.size // n_areas))
    labels = _merge(labels, features, n_areas, min_area)
    while int(labels.max()) + 1 < n_areas:
        labels = _split(labels, features, min_area)
    return relabel(labels)


def _repair_features(means: np.ndarray) -> np.ndarray:
    gh, gw = means.shape[:2]
    rows, cols = np.mgrid[:gh, :gw]
    pos = np.stack([rows / max(gh, 1), cols / max(gw, 1)], axis=-1) * POSITION_WEIGHT
    return np.concatenate([means, pos], axis=-1)


def _initial_segments(img: np.ndarray, means: np.ndarray, grid, n_areas: int, method: str, seed: int,
                      compactness: float) -> np.ndarray:
    gh, gw = grid
    if method == "voronoi":
        rng = np.random.default_rng(seed)
        centres = rng.choice(gh * gw, size=n_areas, replace=False)
        cy, cx = np.divmod(centres, gw)
        rows, cols = np.mgrid[:gh, :gw]
        d = (rows[..., None] - cy) ** 2 + (cols[..., None] - cx) ** 2
        return np.argmin(d, axis=-1)        # Voronoi cells of grid points are connected
    if method == "felzenszwalb":
        from skimage.segmentation import felzenszwalb
        channel = -1 if means.shape[2] > 1 else None
        return felzenszwalb(means if channel is not None else means[:, :, 0], scale=1.0, sigma=0.0,
                            min_size=1, channel_axis=channel)
    from skimage.segmentation import slic
    if method == "slic":
        source = means
    else:                                   # "slic-pixels"
        step = max(1, int(np.ceil(max(img.shape[:2]) / PIXEL_SIDE)))
        source = _normalised(img)[::step, ::step]
        if source.shape[0] < gh or source.shape[1] < gw:
            source = _normalised(img)
    channel = -1 if source.shape[2] > 1 else None
    seg = slic(source if channel is not None else source[:, :, 0], n_segments=n_areas,
               compactness=compactness, sigma=0, start_label=0, channel_axis=channel,
               convert2lab=False, enforce_connectivity=False)
    if method == "slic":
        return seg
    # each patch takes its majority pixel label (ties: the smallest label)
    n = int(seg.max()) + 1
    votes = _block_reduce(seg[:, :, None].astype(np.float64), grid,
                          lambda block: np.bincount(block[:, 0].astype(np.int64), minlength=n)[None, :].argmax())
    return votes[:, :, 0].astype(np.int64)


def segment(image, grid=(14, 14), n_areas: int = 8, *, method: str = "slic", seed: int = 0,
            min_area: int = MIN_AREA, compactness: float = SLIC_COMPACTNESS) -> np.ndarray:
    """Segment a photograph into ``n_areas`` areas at patch resolution.

    Parameters
    ----------
    image : array_like
        Grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4), uint8, other integers, bool or float; at
        least one pixel per patch.
    grid : (int, int)
        Patches (rows, columns); the image is cut into this grid (patch sizes differ by at most
        one pixel when the image does not divide evenly).
    n_areas : int
        Number of areas, 1 <= n_areas <= gh * gw.
    method : {"slic", "slic-pixels", "felzenszwalb", "voronoi"}
        Initial segmentation (module docstring); "slic" on the patch means follows the image best.
    seed : int
        Seed of the random "voronoi" baseline (the other methods are deterministic).
    min_area : int
        Smallest area in patches (default 2: a single-patch area has no target, docs/model.md
        section 5); lowered to P // n_areas when n_areas such areas cannot fit.
    compactness : float
        SLIC's trade-off between colour (intensities in [0, 1]) and position; larger is more
        compact.

    Returns
    -------
    (gh, gw) int64 array
        Labels 0..n_areas-1, numbered by first appearance in row-major order; every area is
        4-connected. The same input gives the same labels.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((28, 28)); img[:, 12:] = 1.0          # two colours, edge at patch column 6
    >>> segment(img, grid=(14, 14), n_areas=2)[0].tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    """
    grid = _check_grid(grid)
    n_areas = _check_n_areas(n_areas, grid)
    method = choice("method", method, METHODS)
    seed = nonnegative_int("seed", seed)
    min_area = positive_int("min_area", min_area)
    compactness = real("compactness", compactness, low=0.0, low_open=True)
    img = image_array(image)
    _check_size(img, grid, "image")
    means = _block_reduce(_normalised(img), grid, lambda block: block.mean(axis=0))
    initial = _initial_segments(img, means, grid, n_areas, method, seed, compactness)
    return exact_areas(initial, _repair_features(means), n_areas, min_area)


# ---- amplitudes and the data model ---------------------------------------------------------------
def area_amplitudes(image, labels, rule: str = "contrast") -> np.ndarray:
    """(N,) amplitude of every area of ``labels`` (a (gh, gw) label map of ``image``).

    ``"contrast"``: RMS of the area's pixels around the image's mean colour (intensities
    rescaled by the image's range), divided by the mean over the areas, clipped to [0.05, 20];
    all 1 for an image without contrast. ``"unit"``: all 1.
    """
    rule = choice("amplitudes", rule, AMPLITUDE_RULES)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise InvalidInputError(f"labels must be a 2-d integer label map, got {fmt(labels)}")
    n = int(labels.max()) + 1
    if rule == "unit":
        return np.ones(n)
    img = _normalised(image_array(image))
    _check_size(img, labels.shape, "image")
    centred = img - img.reshape(-1, img.shape[2]).mean(axis=0)
    # per patch: sum of squared deviations and the number of (pixel, channel) values
    sq = _block_reduce(centred ** 2, labels.shape, lambda block: block.sum(axis=0)).sum(axis=-1)
    count = _block_reduce(np.ones(img.shape[:2] + (1,)), labels.shape, lambda block: block.sum(axis=0))[..., 0]
    count = count * img.shape[2]
    flat = labels.ravel()
    rms = np.sqrt(np.bincount(flat, weights=sq.ravel(), minlength=n) /
                  np.bincount(flat, weights=count.ravel(), minlength=n))
    if rms.mean() <= 0:
        return np.ones(n)
    return np.clip(rms / rms.mean(), *AMPLITUDE_RANGE)


def _image_list(images) -> list:
    if isinstance(images, Mapping):
        return list(images.values())
    if isinstance(images, np.ndarray):
        return [images]                     # one image
    if isinstance(images, Sequence) and not isinstance(images, str) and len(images) > 0:
        return list(images)
    raise InvalidInputError(f"images must be an image array, a sequence of them or a mapping name -> image, "
                            f"got {fmt(images)}")


def data_model(images, grid=(14, 14), n_areas: int = 8, mask_ratio: float = 0.5, amplitudes: str = "contrast",
               probs=None, *, method: str = "slic", seed: int = 0, min_area: int = MIN_AREA,
               labels=None) -> DataModel:
    """A data model with one cluster per image: its areas from :func:`segment`, its amplitudes
    from the image.

    Parameters
    ----------
    images : array, sequence of arrays, or mapping name -> array
        The photographs (any form :func:`segment` accepts).
    grid, n_areas, method, seed, min_area
        As for :func:`segment`.
    mask_ratio : float
        Mask probability gamma.
    amplitudes : {"contrast", "unit"}
        Rule of :func:`area_amplitudes`; point masses.
    probs : sequence of float, optional
        Cluster probabilities (default uniform).
    labels : sequence of (gh, gw) label maps, optional
        Use these areas instead of segmenting (one per image).

    Returns
    -------
    DataModel
        ``grid`` set; cluster k is image k and ``model.clusters[k].areas.reshape(grid)`` its label
        map. Deterministic: the same images give the same model.
    """
    grid = _check_grid(grid)
    imgs = _image_list(images)
    names = [repr(str(n)) for n in images] if isinstance(images, Mapping) else [str(k) for k in range(len(imgs))]
    choice("amplitudes", amplitudes, AMPLITUDE_RULES)
    if probs is not None:
        try:
            probs = [float(p) for p in probs]
        except (TypeError, ValueError):
            raise InvalidInputError(f"probs must be a sequence of numbers, got {fmt(probs)}") from None
        if len(probs) != len(imgs):
            raise InvalidInputError(f"probs must have one entry per image ({len(imgs)}), got {fmt(probs)}")
        for k, p in enumerate(probs):
            if not (np.isfinite(p) and p >= 0):
                raise InvalidInputError(f"probs[{k}] must be a finite number >= 0, got {p!r}")
    if labels is not None:
        maps = [np.asarray(m) for m in labels]
        if len(maps) != len(imgs) or any(m.shape != grid for m in maps):
            raise InvalidInputError(f"labels must hold one {grid} label map per image ({len(imgs)})")
    clusters = []
    for k, img in enumerate(imgs):
        try:                            # say which image a bad one is
            lab = segment(img, grid, n_areas, method=method, seed=seed, min_area=min_area) if labels is None \
                else maps[k]
            amps = area_amplitudes(img, lab, amplitudes)
        except InvalidInputError as err:
            raise type(err)(f"image {names[k]}: {err}") from None
        clusters.append(Cluster(lab, prob=None if probs is None else probs[k],
                                amplitudes={j: Amplitude.point(float(a)) for j, a in enumerate(amps)}))
    return DataModel(grid=grid, clusters=clusters, mask_ratio=mask_ratio)


def area_boundaries(labels) -> np.ndarray:
    """(n, 2, 2) segments [(x0, y0), (x1, y1)] in patch units (x = column, y = row, patch (r, c)
    spanning [c, c + 1] x [r, r + 1]) between neighbouring patches of different areas."""
    lab = np.asarray(labels)
    segs = []
    rows, cols = np.nonzero(lab[:, 1:] != lab[:, :-1])        # right edge of patch (r, c)
    segs += [[(c + 1, r), (c + 1, r + 1)] for r, c in zip(rows.tolist(), cols.tolist())]
    rows, cols = np.nonzero(lab[1:, :] != lab[:-1, :])        # bottom edge of patch (r, c)
    segs += [[(c, r + 1), (c + 1, r + 1)] for r, c in zip(rows.tolist(), cols.tolist())]
    return np.asarray(segs, dtype=np.float64).reshape(-1, 2, 2)


__all__ = ["AMPLITUDE_RULES", "DEFAULT_SAMPLES", "METHODS", "SAMPLE_NAMES", "area_amplitudes", "area_boundaries",
           "connected_components",
           "data_model", "exact_areas", "image_array", "is_connected", "patch_edges", "patch_means", "read_image",
           "relabel",
           "sample_images", "sample_names", "segment"]
