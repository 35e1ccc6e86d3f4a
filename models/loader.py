"""Images for training, streamed from disk through a ``torch.utils.data.DataLoader`` with worker processes.

Memory stays bounded whatever the dataset size: a worker decodes (OpenCV), resizes to the model input size
(``cv2.INTER_AREA``, the runtime's interpolation) and augments one image at a time; the main process only ever
holds a few batches. For small datasets an in-memory cache at model size (decoded once, up front) makes epochs
cheaper: :func:`choose_cache` keeps it to datasets under a memory budget.

Determinism: the epoch's order is seeded by ``(seed, e)`` and the augmentation of a batch by ``(seed, e, its first
row)`` (the DataLoader hands a worker whole batches, :meth:`ImageSet.__getitems__`), so a run gives the same batches
whatever the number of workers or the cache, and a resumed run (``models.train`` ``--resume``) continues exactly
where the interrupted one stopped. Reseeding once a batch, not once an image, keeps the cost of this at ~0.2 ms a
batch.

Unreadable images do not stop an epoch: :class:`ImageSet` returns them as ``ok=False`` rows, the training loop
drops them from the batch and counts them, and :func:`models.data.check_unreadable` applies ``max_bad_fraction``
once every image has been seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from models.data import load_image

log = logging.getLogger(__name__)


def default_workers(cached: bool = False) -> int:
    """Worker processes: none for a dataset cached in memory on a machine of up to 4 cores (augmenting in the main
    process beats shipping images between processes there); otherwise one per core but one (at most 8)."""
    cores = os.cpu_count() or 1
    if cached and cores <= 4:
        return 0
    return max(0, min(8, cores - 1))


def choose_cache(mode: str, n_images: int, img_size: int, max_bytes: float) -> bool:
    """Whether to decode the dataset into memory: ``memory`` yes, ``none`` no, ``auto`` when it fits ``max_bytes``."""
    if mode == "memory":
        return True
    if mode == "none":
        return False
    return n_images * img_size * img_size * 3 <= max_bytes


def decode_all(paths: Sequence[str], img_size: int, threads: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``paths`` at model size into one uint8 RGB array; returns ``(images, ok)`` (``ok[i]`` False: unreadable).
    OpenCV releases the GIL, so ``threads`` decode in parallel."""
    from tqdm.auto import tqdm

    images = np.zeros((len(paths), img_size, img_size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)

    def one(i: int) -> None:
        img = load_image(paths[i], img_size)
        if img is not None:
            images[i] = img
            ok[i] = True

    n_threads = threads or max(1, (os.cpu_count() or 1))
    with ThreadPoolExecutor(n_threads) as pool:
        for _ in tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="caching images", unit="img",
                      disable=not progress, leave=False):
            pass
    return images, ok


class ImageSet(torch.utils.data.Dataset):
    """Rows ``(image uint8 HWC, label, index, ok)`` of one split; decoded on demand or read from ``cache``.

    ``transform``: an albumentations ``Compose`` (or None), reseeded per row by ``(seed, epoch, index)``; call
    :meth:`set_epoch` before each epoch (the loader's workers are re-created each epoch and see the new value).
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, img_size: int, transform=None, seed: int = 0,
                 cache: tuple[np.ndarray, np.ndarray] | None = None):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.img_size = img_size
        self.transform = transform if transform is not None and len(transform.transforms) else None
        self.seed = seed
        self.epoch = 0
        self.cache = cache

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def _reseed(self, i: int) -> None:
        self.transform.set_random_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))

    def __getitems__(self, idxs: Sequence[int]) -> list:
        """A whole batch (what the DataLoader asks a worker for): augmentation seeded once, by its first row."""
        if self.transform is not None and len(idxs):
            self._reseed(int(idxs[0]))
        return [self._row(int(i)) for i in idxs]

    def __getitem__(self, i: int):
        if self.transform is not None:
            self._reseed(i)
        return self._row(i)

    def _row(self, i: int):
        if self.cache is not None:
            img, ok = self.cache[0][i], bool(self.cache[1][i])
        else:
            img = load_image(self.paths[i], self.img_size)
            ok = img is not None
            if img is None:
                img = np.zeros((self.img_size, self.img_size, 3), dtype=np.uint8)
        if ok and self.transform is not None:
            img = self.transform(image=img)["image"]
        return np.ascontiguousarray(img), int(self.labels[i]), i, ok


def collate(rows) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Stack rows into ``(uint8 NHWC images, int64 labels, indices, ok)`` (unreadable rows are kept, flagged)."""
    imgs = torch.from_numpy(np.stack([r[0] for r in rows]))
    labels = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    return imgs, labels, np.array([r[2] for r in rows], dtype=np.int64), np.array([r[3] for r in rows], dtype=bool)


class EpochOrder(torch.utils.data.Sampler):
    """The row order of one epoch: a permutation seeded by ``(seed, epoch)``, or weighted draws with replacement
    (``weights``: per-row sampling weights, e.g. 1 / class count: class-balanced batches)."""

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.p is None:
            return iter(rng.permutation(self.n).tolist())
        return iter(rng.choice(self.n, size=self.n, replace=True, p=self.p).tolist())


def make_loader(dataset: ImageSet, batch_size: int, workers: int, sampler: torch.utils.data.Sampler | None = None,
                drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (in order unless ``sampler``), ``workers`` decoding processes."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last, num_workers=workers,
        collate_fn=collate, pin_memory=torch.cuda.is_available(), persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def iter_images(dataset: ImageSet, batch_size: int, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(images uint8 NHWC, labels, ok)`` batches of ``dataset`` in order, un-augmented (evaluation)."""
    for x, y, _, ok in make_loader(dataset, batch_size, workers):
        yield x.numpy(), y.numpy(), ok
