"""Fused majority vote over candidate label maps and each candidate's F-mIoU against it (HIAST §4.5, Alg. 3).

HIAST selects a hyperparameter by letting every candidate model label the same fixed subset of target training
images, fusing the labels by pixelwise majority vote (Fig. 6) and scoring each candidate by its mIoU against the
fused labels (F-mIoU). The paper leaves two details open; raysel fixes them as follows:

* **Ties** go to the **lowest class id** (what ``np.bincount(...).argmax()`` and ``scipy.stats.mode`` give).
* **Averaging**: intersections and unions are accumulated over the whole subset (one confusion matrix per
  candidate), then :func:`raysel.metrics.miou` takes the mean over classes, skipping classes absent from both the
  fused labels and the candidate (raysel's metric convention; HIAST's metric code would count them as 0).

The counting is exact, vectorized and streamed in pixel chunks (~4 MiB of labels), so memory stays O(n × chunk)
however many images there are. It avoids per-(candidate, pixel) work where it can:

0. **Runs.** Consecutive pixels where no candidate's label changes form a run; one representative pixel weighted
   by the run length gives identical votes and counts (:func:`pixel_runs`). Label maps are piecewise constant,
   so this shrinks everything below by the mean run length (skipped when runs are short, e.g. noise).
1. **Reference agreement.** One vectorized compare of all candidates with a reference candidate (the one that
   has agreed most with the fused labels so far) and a column sum give, per pixel, the reference label's votes.
   Where every candidate agrees the pixel is *unanimous*; where the reference holds a strict majority its label
   *is* the plurality winner and no tie is possible.
2. **Exact plurality** only for the remaining *contested* pixels, gathered into a small array: pairwise agreement
   counts (cheapest for n ≤ 2C+1) or per-class counts otherwise.
3. **Confusion counts.** A unanimous pixel adds one to the diagonal entry of its class in *every* candidate's
   matrix, so one histogram of the fused labels covers all of them (8-bit values packed three to a bin index, see
   :func:`small_histogram`). Only the *mixed* (non-unanimous) pixels are gathered and histogrammed per candidate,
   two candidates per ``np.bincount`` call (index ``(fused·C + a)·C + b``).

The result equals ``scipy.stats.mode`` + :func:`raysel.metrics.confusion_matrix` exactly (tested); only the amount
of work depends on how much the candidates agree. ``benchmarks/voting_speed.py`` measures it.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol, Sequence, Union

import numpy as np

from raysel.metrics import IGNORE_INDEX, iou_per_class, miou, pixel_accuracy

# Bytes of candidate labels per chunk: large enough that per-call overhead on the small gathered arrays
# (contested/mixed pixels) stays negligible, small enough to stay in the last-level cache.
CHUNK_BYTES = 1 << 22
MIN_CHUNK_PIXELS = 1 << 12
MAX_CLASSES = 255  # labels are uint8 and 255 is the ignore value
# Run-length compression is used when it keeps at most this fraction of a chunk's pixels.
RUN_FRACTION = 0.5
# Above this fraction of mixed (or contested) pixels, all pixels are processed instead of a gathered subset.
DENSE_FRACTION = 0.75
# From this many contested pixels on, the pairwise vote uses symmetric row compares (less work, more calls).
PAIRWISE_SYMMETRIC_PIXELS = 1 << 14


def _as_label_array(labels: np.ndarray, what: str) -> np.ndarray:
    """Return ``labels`` as a uint8 array, rejecting values that do not fit (class ids must be < 255)."""
    array = np.asarray(labels)
    if array.dtype == np.uint8:
        return array
    if array.size and (array.min() < 0 or array.max() >= MAX_CLASSES):
        raise ValueError(f"{what}: class ids must lie in [0, {MAX_CLASSES}); got {array.min()}..{array.max()}")
    return array.astype(np.uint8)


def _chunk_pixels(num_candidates: int) -> int:
    """Pixels per chunk so that the chunk's candidate labels fit ``CHUNK_BYTES``."""
    return max(MIN_CHUNK_PIXELS, CHUNK_BYTES // max(num_candidates, 1))


# --------------------------------------------------------------------------------------------------------------
# Exact plurality vote on a (small) gathered set of pixels
# --------------------------------------------------------------------------------------------------------------


def _plurality_pairwise(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plurality label and its vote count per column of ``labels [n, m]`` (uint8, n < 256); ties → lowest id.

    Each candidate counts how many candidates share its label; the packed key ``count·256 + (255 − label)`` is
    maximal for the most-voted label and, among equally voted labels, for the lowest id. Few columns: one
    ``[n, m]`` compare and column sum per candidate (few calls); many columns: the ``n(n−1)/2`` symmetric row
    compares (less work).
    """
    num_candidates, num_pixels = labels.shape
    if num_pixels >= PAIRWISE_SYMMETRIC_PIXELS:
        counts = np.ones((num_candidates, num_pixels), dtype=np.uint8)
        equal = np.empty(num_pixels, dtype=np.bool_)
        for i in range(num_candidates):
            for j in range(i + 1, num_candidates):
                np.equal(labels[i], labels[j], out=equal)
                counts[i] += equal.view(np.uint8)
                counts[j] += equal.view(np.uint8)
    else:
        counts = np.empty((num_candidates, num_pixels), dtype=np.uint8)
        equal_all = np.empty((num_candidates, num_pixels), dtype=np.bool_)
        for i in range(num_candidates):
            np.equal(labels, labels[i], out=equal_all)
            equal_all.sum(axis=0, dtype=np.uint8, out=counts[i])
    key = counts.astype(np.uint16)
    key <<= 8
    key |= 255 - labels
    best = key.max(axis=0)
    return (255 - (best & 255)).astype(np.uint8), (best >> 8).astype(np.uint16)


def _plurality_per_class(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Plurality label and vote count per column of ``labels [n, m]`` by counting each class (``n·C`` compares).

    Classes are visited in increasing id and only a strictly larger count replaces the current winner, so ties go
    to the lowest class id. Used when n is large compared with C (pairwise counting would cost more).
    """
    num_pixels = labels.shape[1]
    best_label = np.zeros(num_pixels, dtype=np.uint8)
    best_count = np.zeros(num_pixels, dtype=np.uint16)
    count = np.empty(num_pixels, dtype=np.uint16)
    for class_id in range(num_classes):
        np.sum(labels == class_id, axis=0, dtype=np.uint16, out=count)
        better = count > best_count
        best_label[better] = class_id
        np.maximum(best_count, count, out=best_count)
    return best_label, best_count


def plurality_vote(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact plurality vote over axis 0 of ``labels [n, m]``: (winner uint8, its vote count); ties → lowest id."""
    num_candidates = labels.shape[0]
    if num_candidates < 256 and num_candidates <= 2 * num_classes + 1:
        return _plurality_pairwise(labels)
    return _plurality_per_class(labels, num_classes)


# --------------------------------------------------------------------------------------------------------------
# One chunk: vote, then confusion counts
# --------------------------------------------------------------------------------------------------------------


class _ChunkVoter:
    """Scratch buffers and the per-chunk vote of a fixed number of candidates (reused across chunks)."""

    def __init__(self, num_candidates: int, num_classes: int) -> None:
        self.num_candidates = num_candidates
        self.num_classes = num_classes
        self._count_dtype = np.uint16 if num_candidates >= 256 else np.uint8
        self._equal = np.empty((num_candidates, _chunk_pixels(num_candidates)), dtype=np.bool_)
        self.scratch = self._equal  # reusable [n, chunk] bool buffer (used by pixel_runs before each vote)

    def vote(self, chunk: np.ndarray, reference: int, min_votes: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vote over ``chunk [n, m]``: (fused labels [m], mixed pixel indices, candidate labels there [n, mixed]).

        *Mixed* pixels are those where not every candidate agrees; everywhere else the fused label is unanimous.
        Fused labels are ``IGNORE_INDEX`` where the winner has fewer than ``min_votes`` votes.
        """
        num_candidates, num_pixels = chunk.shape
        # Agreement of every candidate with the reference, summed over candidates: two calls over the chunk.
        equal = self._equal[:, :num_pixels]
        np.equal(chunk, chunk[reference], out=equal)
        votes = equal.sum(axis=0, dtype=self._count_dtype)
        fused = chunk[reference].copy()
        mixed = np.flatnonzero(votes < num_candidates)
        if mixed.size > DENSE_FRACTION * num_pixels:
            # Little agreement (noise-like labels): gathering would cost more than treating every pixel as mixed.
            mixed, mixed_labels, mixed_votes = np.arange(num_pixels), chunk, votes
        else:
            mixed_labels, mixed_votes = chunk.take(mixed, axis=1), votes[mixed]
        # The reference label wins outright where it holds a strict majority; the rest is decided exactly.
        contested = np.flatnonzero(mixed_votes <= num_candidates // 2)
        if contested.size > DENSE_FRACTION * mixed.size:
            fused[mixed], mixed_votes = plurality_vote(mixed_labels, self.num_classes)
        elif contested.size:
            labels, counts = plurality_vote(mixed_labels.take(contested, axis=1), self.num_classes)
            fused[mixed[contested]] = labels
            mixed_votes[contested] = counts
        if min_votes > num_candidates:
            fused.fill(IGNORE_INDEX)
        elif min_votes > 0:
            fused[mixed[mixed_votes < min_votes]] = IGNORE_INDEX
        return fused, mixed, mixed_labels


def small_histogram(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Counts of each value in ``[0, num_bins)`` of a 1-D uint8 array (int64 ``[num_bins]``).

    ``np.bincount`` costs a few ns per element (it converts to intp and scatters one element at a time), so ``k``
    values are packed into one uint16 index ``(v₁·B + v₂)·B + …`` with B^k ≤ 8192 bins (fits L1/L2) and the
    joint histogram is marginalised: about k× fewer scattered elements for a few cheap vectorized multiply-adds.
    """
    group = 1
    while num_bins ** (group + 1) <= 8192 and group < 4:
        group += 1
    length = values.size // group
    if group == 1 or length < 256:
        return np.bincount(values, minlength=num_bins)[:num_bins].astype(np.int64)
    index = values[:length].astype(np.uint16)
    for part in range(1, group):
        index *= np.uint16(num_bins)
        index += values[part * length:(part + 1) * length]
    joint = np.bincount(index, minlength=num_bins ** group).reshape((num_bins,) * group)
    counts = np.zeros(num_bins, dtype=np.int64)
    for axis in range(group):
        counts += joint.sum(axis=tuple(a for a in range(group) if a != axis))
    tail = values[group * length:]
    if tail.size:
        counts += np.bincount(tail, minlength=num_bins)[:num_bins]
    return counts


def _weighted_counts(values: np.ndarray, weights: np.ndarray | None, num_bins: int) -> np.ndarray:
    """int64 counts of ``values`` in ``[0, num_bins)`` (larger values dropped), each counted ``weights`` times.

    ``np.bincount`` sums weights in float64, exact for integer totals below 2**53.
    """
    counts = np.bincount(values, weights=weights, minlength=num_bins)[:num_bins]
    return counts.astype(np.int64) if weights is None else np.rint(counts).astype(np.int64)


def pixel_runs(chunk: np.ndarray, max_fraction: float, scratch: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Run-length view of ``chunk [n, m]``: (first column of each run, run lengths), or None if not worth it.

    A run is a stretch of consecutive pixels (in the flattened order) where *every* candidate's label stays the
    same; all its pixels vote identically and add to the same confusion bins, so one representative column
    weighted by the run length gives exactly the same counts. Predictions are piecewise constant (networks
    predict at stride 4–8 and upsample), so runs are long and the vote and counting shrink by the mean run
    length. Returns None when the runs would keep more than ``max_fraction`` of the columns (no gain).
    ``scratch`` is an optional reusable bool buffer of at least ``[n, m − 1]``.
    """
    num_candidates, num_pixels = chunk.shape
    if num_pixels < 2:
        return None
    if scratch is None:
        scratch = np.empty((num_candidates, num_pixels - 1), dtype=np.bool_)
    differs = scratch[:, :num_pixels - 1]
    np.not_equal(chunk[:, 1:], chunk[:, :-1], out=differs)
    changed = np.empty(num_pixels, dtype=np.bool_)
    changed[0] = True
    np.logical_or.reduce(differs, axis=0, out=changed[1:])
    starts = np.flatnonzero(changed)
    if starts.size > max_fraction * num_pixels:
        return None
    return starts, np.diff(starts, append=num_pixels)


class _ConfusionCounter:
    """Per-candidate confusion counts against the fused labels, kept in a cheap-to-update factored form.

    * ``shared_diagonal [C]``: unanimous pixels, which add one to the same diagonal entry of every candidate;
    * ``pair_counts [n//2, C³]``: joint counts (fused, candidate 2p, candidate 2p+1) on mixed pixels, one
      ``np.bincount`` per pair of candidates (used while C³ ≤ 2¹⁶ bins, i.e. C ≤ 40);
    * ``single_counts [n, C²]``: (fused, candidate) counts for the candidates not covered by a pair.

    :meth:`matrices` marginalises them into ``[n, C, C]`` confusion matrices (rows: fused, columns: candidate).
    """

    def __init__(self, num_candidates: int, num_classes: int) -> None:
        self.num_candidates = num_candidates
        self.num_classes = num_classes
        num_pairs = num_candidates // 2 if num_classes ** 3 <= (1 << 16) else 0
        self.shared_diagonal = np.zeros(num_classes, dtype=np.int64)
        self.pair_counts = np.zeros((num_pairs, num_classes ** 3), dtype=np.int64)
        self.singles = list(range(2 * num_pairs, num_candidates))
        self.single_counts = np.zeros((num_candidates, num_classes * num_classes), dtype=np.int64)
        # Flat bins of the joint (fused, a, b) counts where a (or b) equals the fused label: the agreement.
        classes = np.arange(num_classes)
        grid_f, grid_other = np.meshgrid(classes, classes, indexing="ij")
        self._agree_first = ((grid_f * num_classes + grid_f) * num_classes + grid_other).ravel()
        self._agree_second = ((grid_f * num_classes + grid_other) * num_classes + grid_f).ravel()
        self._single_diagonal = classes * num_classes + classes

    def add(self, fused: np.ndarray, mixed: np.ndarray, mixed_labels: np.ndarray, may_ignore: bool = False,
            weights: np.ndarray | None = None) -> None:
        """Add one chunk: fused labels ``[m]`` (255 = ignored when ``may_ignore``), mixed pixels and their labels.

        ``weights`` (run lengths) make each column count as that many pixels (see :func:`pixel_runs`).
        """
        num_classes = self.num_classes
        if weights is not None:
            self.shared_diagonal += _weighted_counts(fused, weights, num_classes)
        elif may_ignore:
            # Ignored pixels (255) are folded into an extra bin C and dropped, which avoids a boolean gather.
            self.shared_diagonal += small_histogram(np.minimum(fused, num_classes), num_classes + 1)[:num_classes]
        else:
            self.shared_diagonal += small_histogram(fused, num_classes)
        if mixed.size == 0:
            return
        mixed_fused = fused[mixed]
        mixed_weights = None if weights is None else weights[mixed]
        if may_ignore and (mixed_fused == IGNORE_INDEX).any():
            keep = mixed_fused != IGNORE_INDEX
            mixed_fused, mixed_labels = mixed_fused[keep], mixed_labels[:, keep]
            mixed_weights = None if mixed_weights is None else mixed_weights[keep]
        if mixed_weights is None:
            self.shared_diagonal -= small_histogram(mixed_fused, num_classes)
        else:
            self.shared_diagonal -= _weighted_counts(mixed_fused, mixed_weights, num_classes)
        if len(self.pair_counts):
            # uint16 index (fused·C + a)·C + b: cheap to build; one bincount serves candidates a and b.
            base = mixed_fused.astype(np.uint16)
            base *= np.uint16(num_classes * num_classes)
            index = np.empty(mixed_fused.size, dtype=np.uint16)
            for pair in range(len(self.pair_counts)):
                np.multiply(mixed_labels[2 * pair], np.uint16(num_classes), out=index, dtype=np.uint16)
                index += base
                index += mixed_labels[2 * pair + 1]
                self.pair_counts[pair] += _weighted_counts(index, mixed_weights, num_classes ** 3)
        if self.singles:
            base = mixed_fused.astype(np.intp) * num_classes
            for candidate in self.singles:
                self.single_counts[candidate] += _weighted_counts(base + mixed_labels[candidate], mixed_weights,
                                                                  num_classes * num_classes)

    def agreement(self) -> np.ndarray:
        """Pixels on which each candidate agreed with the fused label so far (the matrices' traces, cheaply)."""
        totals = np.full(self.num_candidates, self.shared_diagonal.sum(), dtype=np.int64)
        for pair, counts in enumerate(self.pair_counts):
            totals[2 * pair] += counts[self._agree_first].sum()
            totals[2 * pair + 1] += counts[self._agree_second].sum()
        for candidate in self.singles:
            totals[candidate] += self.single_counts[candidate][self._single_diagonal].sum()
        return totals

    def matrices(self) -> np.ndarray:
        """The ``[n, C, C]`` int64 confusion matrices (rows: fused label, columns: candidate label)."""
        num_classes = self.num_classes
        result = self.single_counts.reshape(self.num_candidates, num_classes, num_classes).copy()
        for pair, counts in enumerate(self.pair_counts):
            joint = counts.reshape(num_classes, num_classes, num_classes)
            result[2 * pair] += joint.sum(axis=2)
            result[2 * pair + 1] += joint.sum(axis=1)
        diagonal = np.arange(num_classes)
        result[:, diagonal, diagonal] += self.shared_diagonal
        return result


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


class FusedVoteAccumulator:
    """Streaming fused vote + per-candidate confusion matrices against the fused labels (HIAST F-mIoU).

    Feed it ``[n, ...]`` stacks of candidate labels (one image, several images or any pixel chunk) with
    :meth:`update`; read :meth:`miou` (F-mIoU, segmentation) or :meth:`accuracy` (fused-vote agreement, the
    classification analogue). ``min_votes`` > 0 marks pixels whose winning label got fewer votes as ignored (no
    fused label, excluded from every candidate's counts) — the basis of the ``confident_fmiou`` selector.
    """

    def __init__(self, num_candidates: int, num_classes: int, min_votes: int = 0, compress_runs: bool = True) -> None:
        if num_candidates < 1:
            raise ValueError("the fused vote needs at least one candidate")
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must lie in [1, {MAX_CLASSES}]; got {num_classes}")
        self.num_candidates = num_candidates
        self.num_classes = num_classes
        self.min_votes = int(min_votes)
        self.compress_runs = compress_runs
        self._counter = _ConfusionCounter(num_candidates, num_classes)
        self._voter = _ChunkVoter(num_candidates, num_classes)
        self._chunk = _chunk_pixels(num_candidates)

    @property
    def confusion_matrices(self) -> np.ndarray:
        """``[n, C, C]`` int64 confusion matrices of the candidates against the fused labels (rows: fused)."""
        return self._counter.matrices()

    def update(self, stack: np.ndarray | Sequence[np.ndarray], return_fused: bool = False) -> np.ndarray | None:
        """Vote over ``stack [n, ...]`` and add each candidate's counts; optionally return the fused labels.

        The returned fused array has the per-candidate shape, dtype uint8, and ``IGNORE_INDEX`` where fewer than
        ``min_votes`` candidates agreed.
        """
        labels = _as_label_array(np.asarray(stack), "candidate labels")
        if labels.shape[0] != self.num_candidates:
            raise ValueError(f"expected labels of {self.num_candidates} candidates, got {labels.shape[0]}")
        item_shape = labels.shape[1:]
        flat = labels.reshape(self.num_candidates, -1)
        if flat.size and flat.max() >= self.num_classes:
            raise ValueError(f"candidate labels must lie in [0, {self.num_classes}); got max {flat.max()}")
        fused_all = np.empty(flat.shape[1], dtype=np.uint8) if return_fused else None
        # The candidate that agreed most with the fused labels so far is most often the majority: fewest
        # contested pixels. Any choice gives the same result.
        reference = int(np.argmax(self._counter.agreement()))
        for start in range(0, flat.shape[1], self._chunk):
            chunk = flat[:, start:start + self._chunk]
            runs = pixel_runs(chunk, RUN_FRACTION, self._voter.scratch) if self.compress_runs else None
            if runs is not None:
                starts, lengths = runs
                fused, mixed, mixed_labels = self._voter.vote(chunk.take(starts, axis=1), reference, self.min_votes)
                self._counter.add(fused, mixed, mixed_labels, self.min_votes > 0, weights=lengths.astype(np.float64))
                if fused_all is not None:
                    fused_all[start:start + chunk.shape[1]] = np.repeat(fused, lengths)
                continue
            fused, mixed, mixed_labels = self._voter.vote(chunk, reference, self.min_votes)
            self._counter.add(fused, mixed, mixed_labels, may_ignore=self.min_votes > 0)
            if fused_all is not None:
                fused_all[start:start + chunk.shape[1]] = fused
        return None if fused_all is None else fused_all.reshape(item_shape)

    def iou_per_class(self) -> np.ndarray:
        """``[n, C]`` per-class IoU of each candidate against the fused labels (NaN: class absent from both)."""
        return np.stack([iou_per_class(matrix) for matrix in self.confusion_matrices])

    def miou(self) -> np.ndarray:
        """Each candidate's F-mIoU (raysel.metrics.miou of its accumulated confusion matrix)."""
        return np.array([miou(matrix) for matrix in self.confusion_matrices])

    def accuracy(self) -> np.ndarray:
        """Each candidate's agreement with the fused labels (fraction of non-ignored pixels/images)."""
        return np.array([pixel_accuracy(matrix) for matrix in self.confusion_matrices])


class StreamedLabelMaps(Protocol):
    """One candidate's labels read in image batches, not held in memory (a prediction file's ``StreamedLabels``)."""

    shape: tuple[int, ...]

    def batches(self, images_per_batch: int) -> Iterator[np.ndarray]:
        """Consecutive uint8 ``[k, ...]`` batches of at most ``images_per_batch`` images, in order."""


LabelMaps = Union[np.ndarray, StreamedLabelMaps]


def _is_streamed(labels: object) -> bool:
    return hasattr(labels, "batches") and not isinstance(labels, np.ndarray)


def _stack_label_maps(label_maps: np.ndarray | Sequence[LabelMaps], stream: bool = False) -> list[LabelMaps]:
    """Check the candidates' labels share one shape; return uint8 arrays (streamed maps stay so with ``stream``)."""
    maps = [m if stream and _is_streamed(m) else _as_label_array(m, f"candidate {i}")
            for i, m in enumerate(label_maps)]
    if not maps:
        raise ValueError("no candidate label maps given")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"candidate label maps differ in shape: {sorted(shapes)}")
    return maps


def _image_batches(maps: list[LabelMaps]) -> Iterable[np.ndarray]:
    """Yield ``[n, pixels]`` stacks of a few images at a time (axis 0 indexes images): memory O(n × batch)."""
    shape = tuple(maps[0].shape)
    if not shape:
        raise ValueError("candidate labels need at least one dimension (images)")
    pixels_per_item = int(np.prod(shape[1:], dtype=np.int64)) or 1
    items_per_batch = max(1, _chunk_pixels(len(maps)) // pixels_per_item)
    for parts in zip(*(_batches_of(m, items_per_batch) for m in maps)):
        yield np.stack([part.reshape(-1) for part in parts])


def _batches_of(labels: LabelMaps, items_per_batch: int) -> Iterator[np.ndarray]:
    """Consecutive ``[k, ...]`` batches of one candidate's labels (read from disk when streamed)."""
    if _is_streamed(labels):
        yield from labels.batches(items_per_batch)
    else:
        yield from (labels[start:start + items_per_batch] for start in range(0, labels.shape[0], items_per_batch))


def fused_vote(label_maps: np.ndarray | Sequence[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Pixelwise majority vote of ``n`` candidates' label maps (``[n, ...]`` or a list); ties → lowest class id.

    Streams a few images at a time, so extra memory is O(n × image). Returns uint8 labels of one candidate's shape.
    """
    maps = _stack_label_maps(label_maps)
    largest = max(int(m.max()) if m.size else 0 for m in maps)
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"candidate labels must lie in [0, {num_classes}); got max {largest}")
    voter = _ChunkVoter(len(maps), num_classes)
    chunk_size = _chunk_pixels(len(maps))
    pieces = []
    for stack in _image_batches(maps):
        for start in range(0, stack.shape[1], chunk_size):
            fused, _, _ = voter.vote(stack[:, start:start + chunk_size], reference=0)
            pieces.append(fused)
    fused_all = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.uint8)
    return fused_all.reshape(maps[0].shape)


def fused_vote_accumulator(label_maps: np.ndarray | Sequence[LabelMaps], num_classes: int,
                           min_votes: int = 0) -> FusedVoteAccumulator:
    """Run :class:`FusedVoteAccumulator` over all images of the candidates' label maps, a few images at a time
    (label maps with a ``batches`` method, e.g. large prediction files, are read from disk batch by batch)."""
    maps = _stack_label_maps(label_maps, stream=True)
    accumulator = FusedVoteAccumulator(len(maps), num_classes, min_votes=min_votes)
    for stack in _image_batches(maps):
        accumulator.update(stack)
    return accumulator


def fmiou_scores(label_maps: np.ndarray | Sequence[np.ndarray], num_classes: int, min_votes: int = 0) -> np.ndarray:
    """Each candidate's F-mIoU: mIoU against the fused vote, intersections/unions summed over all images."""
    return fused_vote_accumulator(label_maps, num_classes, min_votes).miou()


def fused_agreement_scores(label_maps: np.ndarray | Sequence[np.ndarray], num_classes: int,
                           min_votes: int = 0) -> np.ndarray:
    """Each candidate's accuracy against the fused vote (the classification analogue of F-mIoU)."""
    return fused_vote_accumulator(label_maps, num_classes, min_votes).accuracy()
