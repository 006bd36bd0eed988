"""Datasets, views, sampling and collation for training and evaluation.

A :class:`DetectionDataset` yields, for index ``i``, a sample dict::

    {"image_id": int,
     "views": {name: View(image float[3, H, W] in [0, 1], target Target (boxes in that view's pixels),
                          map BoxMap from the base frame to that view)},
     "orig_size": (H0, W0)}

Every view starts from the same *base* (the file image after the shared geometric transforms,
e.g. resize + flip) and applies its own transform (e.g. colour jitter for Co-mining's second
branch, the strong view of a student). Randomness comes from a generator seeded by
``(seed, epoch, index)``: a sample is reproducible, whichever worker or process loads it.

Hidden truth (annotations erased by ``minedet data sparsify`` / ``split-semi``) is never part of
a sample: it is only reachable through :meth:`DetectionDataset.hidden_target`, for measurement.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from minedet.data.coco import CocoData
from minedet.data.images import read_rgb
from minedet.data.transforms import BoxMap, Compose
from minedet.errors import MinedetError
from minedet.structures import Target


@dataclass(frozen=True)
class View:
    image: torch.Tensor
    target: Target
    map: BoxMap


def coco_target(data: CocoData, image_id: int, anns: Sequence[dict] | None = None, *, crowd: bool = False) -> Target:
    """The one conversion of COCO annotation records to a :class:`Target`: boxes xywh -> xyxy in the pixels of the
    image file, ``category_id`` -> label ``0..K-1`` (``data``'s categories).

    Args:
        data: the dataset whose categories name the labels (and whose annotations are the default records).
        image_id: the image the records belong to (the Target's ``image_id``).
        anns: the records to convert (e.g. a hidden truth's, or the boxes a reviewer rejected); default: the
            image's annotations in ``data``.
        crowd: keep crowd regions (``iscrowd=1``). Training targets and hidden truth leave them out (a crowd is
            no instance to learn or to find); mining keeps them as known boxes (a box over a crowd region is not
            a missing instance).

    A record with a ``score`` (a mined box) sets the ``pseudo`` flag: ``True`` on the boxes marked ``"mined"``.
    """
    anns = data.anns_by_image.get(image_id, []) if anns is None else anns
    anns = [a for a in anns if crowd or not a.get("iscrowd", 0)]
    if not anns:
        return Target.empty(image_id)
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]
    labels = torch.tensor([data.label_of(a["category_id"]) for a in anns], dtype=torch.int64)
    flags = {}
    if any("score" in a for a in anns):  # mined boxes carry a score (minedet mine)
        flags["pseudo"] = torch.tensor([bool(a.get("mined", False)) for a in anns])
    return Target(boxes, labels, flags=flags, image_id=image_id)


def load_image(path: Path, *, root: str | Path | None = None, file: str | None = None,
               record: str | None = None) -> torch.Tensor:
    """RGB float[3, H, W] in [0, 1]; a missing or undecodable file, or one linked from out of ``root``, is a
    MinedetError (:func:`minedet.data.images.read_rgb`, the one decoder guard)."""
    arr = read_rgb(path, root=root, file=file, record=record)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class DetectionDataset(Dataset):
    """Images + targets of a COCO dataset, each as one or more views.

    Args:
        data: the validated COCO data (:func:`minedet.data.coco.load_coco`).
        image_root: directory the ``file_name`` entries are relative to.
        base: shared geometric transforms (resize, flip) applied once per sample.
        views: name -> transform applied to the base; default one identity view ``"o"``.
        seed: base seed for the per-sample generators.
        with_targets: False for unlabelled data (targets are empty, never the hidden truth).
        hidden: the hidden-truth COCO data (erased annotations), used only by
            :meth:`hidden_target` for measurement.
        skip_bad_images: an undecodable image is replaced by the next one (counted in
            ``self.bad_images``, one warning line on stderr per bad file) instead of stopping the
            run (``data.strict`` turns this off). With DataLoader workers each worker counts in
            its own copy of the dataset.
    """

    def __init__(
        self,
        data: CocoData,
        image_root: str | Path,
        *,
        base: Compose | None = None,
        views: dict[str, Compose] | None = None,
        seed: int = 0,
        with_targets: bool = True,
        hidden: CocoData | None = None,
        skip_bad_images: bool = True,
    ) -> None:
        self.data = data
        self.image_root = Path(image_root)
        self.base = base or Compose([])
        self.views = views or {"o": Compose([])}
        self.seed = seed
        self.with_targets = with_targets
        self.hidden = hidden
        self.skip_bad_images = skip_bad_images
        self.bad_images = 0
        self._warned: set[int] = set()
        self.ids = [int(im["id"]) for im in data.images]

    def __len__(self) -> int:
        return len(self.ids)

    def generator(self, key: int) -> torch.Generator:
        """The generator of sample ``key`` (= epoch * len + index): seeded by (seed, epoch, index)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + key * 7919 + 12345) % (2**62))

    def target(self, image_id: int) -> Target:
        """The training target of an image (empty for unlabelled data)."""
        return coco_target(self.data, image_id) if self.with_targets else Target.empty(image_id)

    def hidden_target(self, image_id: int) -> Target:
        """The erased annotations of an image (measurement only; never fed to training)."""
        if self.hidden is None:
            return Target.empty(image_id)
        return coco_target(self.hidden, image_id)

    def rejected_target(self, image_id: int) -> Target:
        """The boxes a reviewer rejected on an image (the file's top-level ``"rejected"`` list): known
        non-objects, in the file image's pixels. Never part of a sample's target."""
        recs = self.data.rejected_by_image.get(image_id)
        return coco_target(self.data, image_id, recs) if recs else Target.empty(image_id)

    def load(self, index: int) -> torch.Tensor:
        info = self.data.images[index]
        return load_image(self.image_root / info["file_name"], root=self.image_root, file=str(self.data.path),
                          record=f"image id={info['id']}")

    def __getitem__(self, key: int) -> dict:
        """``key`` = epoch * len(self) + index (what :class:`InfiniteSampler` yields); a plain index
        is epoch 0."""
        index = key % len(self)
        g = self.generator(key)
        tries = 0
        while True:
            try:
                image = self.load(index)
                break
            except MinedetError as e:
                if not self.skip_bad_images or tries >= 10:
                    raise
                self.bad_images += 1
                if index not in self._warned:
                    self._warned.add(index)
                    print(f"minedet: warning: {e}; skipped (bad images so far: {self.bad_images})", file=sys.stderr)
                tries += 1
                index = (index + 1) % len(self)
        image_id = self.ids[index]
        orig = (int(image.shape[-2]), int(image.shape[-1]))
        base_img, base_t, base_map = self.base(image, self.target(image_id), g)
        views = {}
        for name, tf in self.views.items():
            img, t, m = tf(base_img, base_t, g)
            views[name] = View(img, t, base_map.then(m))
        return {"image_id": image_id, "views": views, "orig_size": orig, "index": index}


@dataclass
class StreamBatch:
    """One stream's samples of a step, collated.

    Attributes:
        image_ids: the COCO image id of each sample.
        orig_sizes: each file image's ``(H0, W0)``.
        views: view name -> one :class:`View` per sample (same order).
    """

    image_ids: list[int]
    orig_sizes: list[tuple[int, int]]
    views: dict[str, list[View]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def map_views(self, fn) -> "StreamBatch":
        """A copy with ``fn(view)`` applied to every view (e.g. moving it to a device)."""
        return StreamBatch(list(self.image_ids), list(self.orig_sizes),
                           {n: [fn(v) for v in vs] for n, vs in self.views.items()})


Batch = dict  # {stream name: StreamBatch}: what a method's training_step receives


def collate(samples: list[dict]) -> StreamBatch:
    """List of samples -> :class:`StreamBatch`."""
    names = samples[0]["views"].keys()
    return StreamBatch([s["image_id"] for s in samples], [s["orig_size"] for s in samples],
                       {n: [s["views"][n] for s in samples] for n in names})


class InfiniteSampler(Sampler[int]):
    """Endless, seeded shuffled indices; rank ``r`` of ``world`` takes every world-th index.

    The sequence depends only on ``(seed, n)``; ``start`` skips the first ``start`` indices of this
    rank so a resumed run sees exactly the samples an uninterrupted run would have.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0, shuffle: bool = True) -> None:
        if n <= 0:
            raise MinedetError("the dataset has no images to sample")
        self.n, self.seed, self.rank, self.world, self.start, self.shuffle = n, seed, rank, world, start, shuffle

    def _global(self) -> Iterator[int]:
        epoch = 0
        while True:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                yield from (epoch * self.n + i for i in torch.randperm(self.n, generator=g).tolist())
            else:
                yield from range(epoch * self.n, (epoch + 1) * self.n)
            epoch += 1

    def __iter__(self) -> Iterator[int]:
        it = self._global()
        k = 0
        for i, idx in enumerate(it):
            if i % self.world != self.rank:
                continue
            if k >= self.start:
                yield idx
            k += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


def infinite_loader(dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0, world: int = 1,
                    start_batches: int = 0, workers: int = 0, pin_memory: bool = False) -> Iterator[dict]:
    """An endless iterator of collated batches of ``batch_size`` (per process)."""
    sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world=world, start=start_batches * batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=workers > 0, drop_last=True,
    )
    return _one_line_errors(iter(loader))


def _one_line_errors(it: Iterator[dict]) -> Iterator[dict]:
    """Pass batches through; a MinedetError raised in a DataLoader worker comes back from torch
    with the worker's whole traceback as its message, so re-raise it as the original one line."""
    while True:
        try:
            batch = next(it)
        except MinedetError as e:
            msg = str(e)
            if "DataLoader worker" in msg and "MinedetError: " in msg:
                raise MinedetError(msg.rsplit("MinedetError: ", 1)[1].strip()) from None
            raise
        yield batch
