"""Masked autoencoding of real image patches: the data and the trainer of the ladder's top rung
``mae-pixels`` (docs/model.md section 6).

The data (:func:`mae_data`; no torch is needed for it)
------------------------------------------------------
1. **Pixels.** Every image (a name that :func:`gradflow.images.sample_images` knows: a shipped
   photograph, or an LFW face ``"lfw:N"``; or an array) is read as (H, W, C) intensities
   (``images.image_array``), centre-cropped to the grid's aspect ratio, resized with
   ``skimage.transform.resize`` (linear, anti-aliased) to (gh * patch, gw * patch) pixels,
   made grey (``skimage.color.rgb2gray``) or RGB (a grey image repeated over three channels) as
   ``channels`` asks, and rescaled by its range to [0, 1]. This *prepared* image is what the
   transformer sees and what is segmented.
2. **Patches.** Position p = r gw + c (row-major, the model's positions) is the patch x patch
   block of rows r patch .. (r + 1) patch - 1 and columns c patch .. (c + 1) patch - 1,
   flattened in (row, column, channel) order: u_p in R^D, D = patch^2 C
   (:func:`image_patches`; :func:`assemble_patches` puts them back).
3. **The data model** is ``gradflow.images.data_model(prepared images, grid, n_areas,
   mask_ratio)``: one cluster per image, its areas ``images.segment`` of the prepared image,
   its amplitudes the areas' RMS contrasts. Its flow is what the rung is compared with.
4. **Contents.** The content of patch p is x_p = (u_p - m) / (rbar sqrt(D)), with m the image's
   mean colour and rbar the mean over the image's areas of their RMS contrast (the normaliser
   of ``images.area_amplitudes``). So the RMS of ||x_p|| over an area's patches is that area's
   amplitude in the data model (before its clipping to [0.05, 20]): the contents are on the
   scale of the model's z_q v_f, but they are real pixels, different from patch to patch.

Training samples are drawn as for every rung (``BatchSampler`` of the data model on
``default_rng(seed)``): an image (a cluster, uniform) and a Bernoulli(gamma) mask per sample.
The network, its loss and its records are :class:`gradflow.training.pytorch.PatchMAE` and
:func:`train_mae`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._validate import choice, fmt, instance, is_int, positive_int
from ..errors import InvalidInputError
from ..model import DataModel
from ..model import images as image_models

CHANNELS = ("grey", "rgb")
DEFAULT_IMAGES = ("astronaut", "camera", "coffee", "chelsea")   # four shipped photographs
DEFAULTS = dict(grid=(14, 14), n_areas=8, patch=8, channels="grey", dim=64)


def check_grid(grid) -> tuple[int, int]:
    """(gh, gw) from an int (square) or a pair of positive integers."""
    return image_models._check_grid((grid, grid) if is_int(grid) else grid)


def image_dict(images) -> dict:
    """name -> array from None (the four default photographs), names ("a,b" or a sequence of
    names of ``images.sample_images``), an array, a sequence of arrays or a mapping."""
    if images is None:
        images = DEFAULT_IMAGES
    if isinstance(images, str):
        images = [s.strip() for s in images.split(",") if s.strip()]
    if isinstance(images, Mapping):
        out = dict(images)
    elif isinstance(images, np.ndarray):
        out = {"image": images}
    elif isinstance(images, Sequence) and len(images) > 0:
        if all(isinstance(x, str) for x in images):
            out = image_models.sample_images(list(images))
        elif not any(isinstance(x, str) for x in images):
            out = {f"image{k}": x for k, x in enumerate(images)}
        else:
            raise InvalidInputError(f"images must be names or arrays, not a mix, got {fmt(images)}")
    else:
        raise InvalidInputError(f"images must be image names, an array, a sequence of arrays or a mapping name -> "
                                f"array, got {fmt(images)}")
    if not out:
        raise InvalidInputError("images must hold at least one image")
    return out


def prepare_image(image, grid, patch: int, channels: str, name: str = "image") -> np.ndarray:
    """(gh * patch, gw * patch, C) float64 in [0, 1]: centre-cropped to the grid's aspect ratio,
    resized (linear, anti-aliased), grey or RGB, rescaled by its range (module docstring, step 1)."""
    from skimage.color import rgb2gray
    from skimage.transform import resize

    img = image_models.image_array(image, name)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    H, W = img.shape[:2]
    gh, gw = grid
    if W * gh > H * gw:                     # too wide: crop columns
        w = max(1, round(H * gw / gh))
        img = img[:, (W - w) // 2:(W - w) // 2 + w]
    elif W * gh < H * gw:                   # too tall: crop rows
        h = max(1, round(W * gh / gw))
        img = img[(H - h) // 2:(H - h) // 2 + h]
    if channels == "grey":
        img = rgb2gray(img)[:, :, None] if img.shape[2] == 3 else img
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = resize(img, (gh * patch, gw * patch, img.shape[2]), order=1, mode="reflect", anti_aliasing=True)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def image_patches(image: np.ndarray, grid, patch: int) -> np.ndarray:
    """(P, patch * patch * C) pixel patches of an (gh * patch, gw * patch, C) image, row-major
    positions, each flattened in (row, column, channel) order."""
    gh, gw = grid
    C = image.shape[2]
    if image.shape[:2] != (gh * patch, gw * patch):
        raise InvalidInputError(f"image must be {gh * patch} x {gw * patch} pixels for grid {grid} and patch {patch}, "
                                f"got {image.shape[0]} x {image.shape[1]}")
    blocks = image.reshape(gh, patch, gw, patch, C).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(gh * gw, patch * patch * C)


def assemble_patches(patches: np.ndarray, grid, patch: int) -> np.ndarray:
    """The image of :func:`image_patches` back from its (P, patch * patch * C) patches."""
    gh, gw = grid
    C = patches.shape[1] // (patch * patch)
    blocks = np.asarray(patches).reshape(gh, gw, patch, patch, C).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(gh * patch, gw * patch, C)


@dataclass(eq=False)
class MAEData:
    """The data of the MAE rung (module docstring).

    names : image names; images : (K, gh * patch, gw * patch, C) prepared images in [0, 1];
    contents : (K, P, D) patch contents x_p; labels : (K, gh, gw) the areas (``model``'s);
    model : the data model of the prepared images; grid, patch, channels as asked.
    """

    names: list
    images: np.ndarray
    contents: np.ndarray
    labels: np.ndarray
    model: DataModel
    grid: tuple
    patch: int
    channels: str

    @property
    def n_pixels(self) -> int:
        return self.contents.shape[2]

    def digest(self) -> str:
        """Hash of the pixels and areas: two MAEData with the same digest train alike."""
        h = hashlib.sha256(np.ascontiguousarray(self.images, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update(self.model.fingerprint().encode())
        return h.hexdigest()[:16]


def mae_data(images=None, grid=DEFAULTS["grid"], n_areas: int = DEFAULTS["n_areas"], mask_ratio: float = 0.5, *,
             patch: int = DEFAULTS["patch"], channels: str = DEFAULTS["channels"]) -> MAEData:
    """Prepared images, patch contents, areas and data model of the MAE rung (module docstring).

    Parameters
    ----------
    images : names, array(s) or mapping name -> array, optional
        Default: the photographs astronaut, camera, coffee, chelsea shipped with scikit-image;
        ``"lfw:0,lfw:1"`` takes LFW faces.
    grid : int or (int, int)
        Patches per side (default 14 x 14).
    n_areas, mask_ratio : int, float
        Areas per image (``images.segment``) and the mask probability gamma.
    patch : int
        Pixels per patch side (the prepared image is grid x patch pixels).
    channels : {"grey", "rgb"}
    """
    grid = check_grid(grid)
    patch = positive_int("patch", patch)
    choice("channels", channels, CHANNELS)
    named = image_dict(images)
    prepared = np.stack([prepare_image(img, grid, patch, channels, name=f"images[{name!r}]")
                         for name, img in named.items()])
    model = image_models.data_model(list(prepared), grid, n_areas, mask_ratio)
    labels = np.stack([cl.areas.reshape(grid) for cl in model.clusters])
    C = prepared.shape[3]
    contents = np.stack([_contents(image_patches(img, grid, patch), lab.ravel(), C)
                         for img, lab in zip(prepared, labels)])
    return MAEData(names=list(named), images=prepared, contents=contents, labels=labels, model=model, grid=grid,
                   patch=patch, channels=channels)


def _contents(patches: np.ndarray, labels: np.ndarray, n_channels: int) -> np.ndarray:
    """(P, D) contents x_p = (u_p - m) / (rbar sqrt(D)) (module docstring, step 4)."""
    P, D = patches.shape
    by_channel = patches.reshape(P, -1, n_channels)
    centred = (by_channel - by_channel.mean(axis=(0, 1))).reshape(P, D)
    n = int(labels.max()) + 1
    ms = np.bincount(labels, weights=(centred ** 2).mean(axis=1), minlength=n) / np.bincount(labels, minlength=n)
    rbar = np.sqrt(ms).mean()
    return centred / (rbar * np.sqrt(D)) if rbar > 0 else centred


def train_mae(images=None, *, steps: int, lr: float, grid=DEFAULTS["grid"], n_areas: int = DEFAULTS["n_areas"],
              mask_ratio: float = 0.5, patch: int = DEFAULTS["patch"], channels: str = DEFAULTS["channels"],
              dim: int = DEFAULTS["dim"], attention: str = "merged", mask_token: bool = False,
              embedding_lr: float | None = None, batch_size: int = 256, seed: int = 0, optimizer: str = "sgd", init_scale: float | None = None,
              record_every: int = 100, record_steps=None, eval_size: int = 2048, dtype: str = "float32",
              device=None, progress=None, data: MAEData | None = None):
    """Train a one-layer MAE on pixel patches of real images (the ladder's rung ``mae-pixels``).

    The data is :func:`mae_data` (images, grid, n_areas, mask_ratio, patch, channels), or
    ``data`` when given; the network is ``gradflow.training.pytorch.PatchMAE`` (``dim``,
    ``attention``, ``mask_token``, ``init_scale``); training, records and divergence are those of
    :func:`gradflow.train_torch` (``optimizer``, ``batch_size``, ``seed``, ``record_every``,
    ``record_steps``, ``eval_size``, ``dtype``, ``device``, ``progress``).

    Q (or W_Q, W_K) and the positional embeddings take steps of ``lr``, and the run's time is
    t = lr x step, the flow's clock for Q; the linear maps on contents (patch embedding, mask
    token, decoder) take ``embedding_lr``, by default lr / (gamma P) with SGD and lr with Adam
    (``gradflow.training.pytorch.content_lr`` says why).

    Returns
    -------
    TrainRun
        On the data model of the images (``run.model``), with the measured own-segment
        attention (``attention_by_area``, ``masked_mass``, ``target_attention``) and
        ``eval_loss``; ``E`` holds the learned positional embeddings (d, P) at the end and ``V``
        the learned embedding of every area's mean content (d, F). Needs PyTorch.
    """
    if data is None:
        data = mae_data(images, grid, n_areas, mask_ratio, patch=patch, channels=channels)
    else:
        instance("data", data, MAEData)
    try:
        from .pytorch import train_patch_mae
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ModuleNotFoundError("train_mae needs PyTorch: pip install 'gradflow[torch]'", name="torch") from None
    return train_patch_mae(data, steps=steps, lr=lr, dim=dim, attention=attention, mask_token=mask_token,
                           embedding_lr=embedding_lr, batch_size=batch_size, seed=seed, optimizer=optimizer, init_scale=init_scale,
                           record_every=record_every, record_steps=record_steps, eval_size=eval_size, dtype=dtype,
                           device=device, progress=progress)


__all__ = ["CHANNELS", "DEFAULT_IMAGES", "MAEData", "assemble_patches", "image_dict", "image_patches", "mae_data",
           "prepare_image", "train_mae"]
