"""Vector datasets for P7: loading, validation, document split, windows, synthetic data.

Two on-disk shapes are accepted (NPZ, loaded with ``allow_pickle=False``):

* chunk-level (preferred): ``vectors`` (M, D) float16/float32 plus document boundaries as
  ``doc_ids`` (M,) grouped integers or ``offsets`` (n_docs + 1,). Optional ``val_doc_mask``
  (n_docs,) bool fixes the validation documents; optional ``metadata`` is a JSON string.
* window-level, as the original scripts wrote it: ``contexts`` (N, K, D) + ``targets`` (N, D)
  (or the Wikipedia keys ``context_sequences`` / ``target_vectors``), optional ``val_mask`` (N,).

Both become one representation: a row table of vectors and, per split, a :class:`WindowSet`
of window start rows. A window of context K starting at row s reads rows s .. s+K-1 and its
target is row s+K, so any K is served from the same table without copying vectors K times.
Window-level files are stored as pseudo-documents of K+1 rows (context then target), which
lets a smaller K be cut from the end of each stored window.

``python -m tune_p7.data inspect FILE`` runs :mod:`tune_p7.inspection` (``data/__main__.py``),
so this package never imports the report that reads it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tune_p7.progress import Progress, silent

DEFAULT_DATASET = Path(__file__).resolve().parent.parent / "datasets" / "austen-minilm.npz"
WINDOW_KEYS = (("contexts", "targets"), ("context_sequences", "target_vectors"))
ZERO_NORM = 1e-6  # rows whose L2 norm is below this are treated as all-zero (failed encodes)
# Rows per block wherever the whole table is read (checks, signals): bounds the float32
# temporaries at ~100 MB for 768-d vectors, whatever the table's size.
BLOCK_ROWS = 32768


class DataError(ValueError):
    """Bad input data; the message is one sentence naming the file, key and fix."""


@dataclass(frozen=True)
class WindowSet:
    """Windows of one split, as start rows into a shared vector table.

    vectors: (M, D) float16/float32 table shared by all splits (never copied per split).
    starts: (N,) int64, first context row of each window; the target is row start + context.
    context: K, the number of context chunks.
    doc_start, doc_end: (N,) int64 row range of each window's document, or None when the
        source file does not know documents (window-level data): then there are no
        same-document hard negatives and no in-document retrieval.
    """

    vectors: np.ndarray
    starts: np.ndarray
    context: int
    doc_start: np.ndarray | None
    doc_end: np.ndarray | None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def knows_documents(self) -> bool:
        return self.doc_start is not None

    def subset(self, index: np.ndarray) -> "WindowSet":
        """The windows at positions ``index`` (same table)."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return WindowSet(self.vectors, self.starts[index], self.context,
                         pick(self.doc_start), pick(self.doc_end))

    def evenly_spaced(self, limit: int) -> "WindowSet":
        """At most ``limit`` windows, evenly spaced over the set (all when limit is 0 or
        the set is no larger): the same windows on every call, so an evaluation subset is
        fixed across epochs and trials."""
        if limit <= 0 or len(self) <= limit:
            return self
        return self.subset(evenly_spaced(len(self), limit))


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """Sorted positions of at most ``limit`` of range(count), evenly spaced, first and last
    included (all of them when limit is 0 or count is no larger)."""
    if limit <= 0 or count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


@dataclass(frozen=True)
class Dataset:
    """A validated dataset: a vector table, its documents and their train/validation split.

    vectors: (M, D) table. offsets: (n_docs + 1,) int64 document row ranges.
    val_docs: (n_docs,) bool, True for validation documents.
    max_context: largest K the data can give (None: any K, chunk-level data).
    source: file name (or "synthetic") used in messages. metadata: provenance dict.
    """

    vectors: np.ndarray
    offsets: np.ndarray
    val_docs: np.ndarray
    max_context: int | None
    knows_documents: bool
    source: str
    metadata: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def windows(self, context: int, split: str) -> WindowSet:
        """All windows of ``context`` chunks in ``split`` ("train" or "val").

        Stride 1 inside each document, never across a boundary; a document with fewer than
        context + 1 chunks gives none. Raises DataError when the split would be empty.
        """
        self.check_context(context)
        docs = np.flatnonzero(self.val_docs if split == "val" else ~self.val_docs)
        lo, hi = self.offsets[docs], self.offsets[docs + 1]
        first = lo if self.max_context is None else lo + (self.max_context - context)
        counts = np.maximum(hi - first - context, 0)
        window_doc = np.repeat(np.arange(len(docs)), counts)
        step = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = (first[window_doc] + step).astype(np.int64)
        if len(starts) == 0:
            raise DataError(f"{self.source}: the {split} split has no window of {context} "
                            f"context chunks; use a smaller --context or more documents.")
        if not self.knows_documents:
            return WindowSet(self.vectors, starts, context, None, None)
        return WindowSet(self.vectors, starts, context,
                         lo[window_doc].astype(np.int64), hi[window_doc].astype(np.int64))

    def check_context(self, context: int) -> None:
        """Raise DataError unless both splits can give windows of ``context`` chunks."""
        if context < 2:
            raise DataError(f"{self.source}: context {context} is too small; P7 needs at "
                            f"least 2 context chunks (the directional gate compares the last two).")
        if self.max_context is not None and context > self.max_context:
            raise DataError(f"{self.source}: the file holds windows of {self.max_context} "
                            f"context chunks, so K={context} cannot be cut from it; use "
                            f"--context {self.max_context} or less, or a chunk-level file.")
        lengths = np.diff(self.offsets)
        usable = lengths >= (context + 1 if self.max_context is None else self.max_context + 1)
        for split, mask in (("train", ~self.val_docs), ("val", self.val_docs)):
            if not np.any(usable & mask):
                raise DataError(f"{self.source}: no {split} document has the {context + 1} "
                                f"chunks a window of K={context} needs; use a smaller "
                                f"--context, a different --val-fraction, or more documents.")


def load_dataset(source: str | Path, val_fraction: float = 0.2, split_seed: int = 0,
                 keep_file_split: bool = True, val_source: str | Path | None = None,
                 progress: Progress = silent) -> Dataset:
    """Load and validate ``source``: an NPZ path, "default" (shipped) or "synthetic".

    val_fraction: share of documents (windows, for window-level files) held out for
    validation when the file fixes no split. split_seed: seed of that split.
    val_source: a second file of the same D and shape (chunk- or window-level) that is the
    whole validation split; every document of ``source`` then trains (the original scripts'
    --train-npz/--val-npz pair). progress(message) is told as each long step starts.
    Raises DataError with one sentence naming file, key and fix.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be between 0 and 1 (exclusive).")
    with _small_pages():
        if val_source is None:
            return _load_source(source, val_fraction, split_seed, keep_file_split, progress)
        train = _load_source(source, val_fraction, split_seed, keep_file_split, progress,
                             whole_file_split=False)
        validation = _load_source(val_source, val_fraction, split_seed, keep_file_split,
                                  progress, whole_file_split=True)
        return join_validation(train, validation)


@contextlib.contextmanager
def _small_pages():
    """numpy's large arrays in ordinary pages while the table is read, then as before.

    numpy asks the kernel for transparent huge pages on every array of 4 MB or more; where
    the kernel has to compact memory to back them, filling the fresh table costs far more
    than reading it (benchmarks/README.md, "Scale": most of a 1M-chunk inspect on a VM).
    The table is read once, front to back, so huge pages buy nothing there.
    """
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    previous = multiarray.multiarray._set_madvise_hugepage(False)
    try:
        yield
    finally:
        multiarray.multiarray._set_madvise_hugepage(previous)


def _load_source(source, val_fraction, split_seed, keep_file_split, progress,
                 whole_file_split: bool | None = None) -> Dataset:
    """One file (or "default"/"synthetic") as a Dataset; see chunk_dataset's whole_file_split."""
    if str(source) == "synthetic":
        vectors, offsets = make_synthetic()
        return chunk_dataset(vectors, offsets, name="synthetic", val_fraction=val_fraction,
                             split_seed=split_seed, metadata={"corpus": "synthetic"},
                             whole_file_split=whole_file_split)
    path = DEFAULT_DATASET if str(source) == "default" else Path(source)
    size = f" ({path.stat().st_size / 1e9:.2f} GB)" if path.exists() else ""
    progress(f"reading {path.name}{size}")
    arrays = _read_npz(path)
    name = path.name
    metadata = _metadata(arrays, name)
    progress(f"checking {name}: NaN/inf, zero rows, document boundaries")
    if "vectors" in arrays:
        val_docs = arrays.get("val_doc_mask") if keep_file_split else None
        return chunk_dataset(arrays["vectors"], arrays.get("offsets"), arrays.get("doc_ids"),
                             name, val_fraction, split_seed, val_docs, metadata,
                             whole_file_split)
    for context_key, target_key in WINDOW_KEYS:
        if context_key in arrays:
            return _window_dataset(arrays, context_key, target_key, name, metadata,
                                   val_fraction, split_seed, keep_file_split, whole_file_split)
    raise DataError(f"{name}: found keys {sorted(arrays)}, but a dataset needs 'vectors' with "
                    f"'doc_ids' or 'offsets' (chunk-level) or 'contexts' + 'targets' "
                    f"(window-level); re-save it with those keys.")


def join_validation(train: Dataset, validation: Dataset) -> Dataset:
    """One Dataset whose train split is all of ``train`` and validation all of ``validation``.

    Both must have the same D and shape (chunk-level, or window-level of the same stored K);
    the tables are concatenated once (mixed dtypes become float32).
    """
    if validation.dim != train.dim:
        raise DataError(f"{validation.source}: vectors have D={validation.dim} but "
                        f"{train.source} has D={train.dim}; --val-data must be embedded with "
                        f"the same encoder as --data.")
    if (validation.knows_documents, validation.max_context) != (train.knows_documents,
                                                                train.max_context):
        raise DataError(f"{validation.source}: is {_shape_name(validation)} but {train.source} "
                        f"is {_shape_name(train)}; give --val-data in the same shape as --data.")
    vectors = np.concatenate([train.vectors, validation.vectors])
    offsets = np.concatenate([train.offsets, validation.offsets[1:] + len(train.vectors)])
    return Dataset(vectors, offsets, np.concatenate([train.val_docs, validation.val_docs]),
                   train.max_context, train.knows_documents,
                   f"{train.source} + {validation.source}", train.metadata)


def _shape_name(dataset: Dataset) -> str:
    if dataset.knows_documents:
        return "chunk-level"
    return f"window-level with K={dataset.max_context}"


def check_source(source: str | Path) -> None:
    """Raise DataError unless ``source`` is "default", "synthetic" or an existing file that
    starts as an NPZ does: the checks that take no time, so a caller can make them before
    slow work (Ray's start) instead of after it."""
    if str(source) in ("default", "synthetic"):
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass an existing .npz file, 'default' or "
                        f"'synthetic' to --data.")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # every NPZ is a zip archive
            raise DataError(f"{path}: not an NPZ archive; save the arrays with numpy.savez "
                            f"(a single .npy or text file is not enough).")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    check_source(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable NPZ file ({error}); save it with "
                        f"numpy.savez.") from None
    except ValueError as error:
        raise DataError(f"{path}: holds pickled objects ({error}); save plain numeric arrays "
                        f"with numpy.savez.") from None


def _metadata(arrays: dict, name: str) -> dict:
    if "metadata" not in arrays:
        return {}
    try:
        return json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError:
        raise DataError(f"{name}: key 'metadata' is not a JSON string; store "
                        f"json.dumps(dict) or drop the key.") from None


def _check_vectors(array: np.ndarray, name: str, key: str, rank: int) -> np.ndarray:
    """Validate an embedding array: rank, float dtype, non-empty, finite, no zero rows.

    Checked in row blocks (see :func:`row_blocks`), so a float16 table is never cast to
    float32 as a whole; float16/float32 arrays are returned as they are (no copy).
    """
    if array.ndim != rank:
        raise DataError(f"{name}: key '{key}' has shape {array.shape} but must have rank "
                        f"{rank}; re-save it with the documented shape.")
    if array.size == 0:
        raise DataError(f"{name}: key '{key}' is empty; the file holds no vectors.")
    if array.dtype not in (np.float16, np.float32):
        if not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{name}: key '{key}' has dtype {array.dtype}; store float16 "
                            f"or float32 vectors.")
        array = array.astype(np.float32)
    rows = array.reshape(-1, array.shape[-1])
    norms = row_norms(rows)
    # A row with NaN or inf has a NaN or inf norm; so may a finite float32 row whose squares
    # overflow, so only the rows the norms point at are checked element by element.
    suspects = np.flatnonzero(~np.isfinite(norms))
    non_finite = suspects[~np.isfinite(rows[suspects]).all(axis=1)]
    if len(non_finite):
        raise DataError(f"{name}: key '{key}' has {len(non_finite)} rows with NaN or inf "
                        f"(first at row {non_finite[0]}); re-embed those chunks or drop them.")
    zero = np.flatnonzero(norms < ZERO_NORM)
    if len(zero):
        raise DataError(f"{name}: key '{key}' has {len(zero)} all-zero rows (first at rows "
                        f"{zero[:5].tolist()}), the mark of a failed encoder batch; re-embed "
                        f"those chunks or drop them.")
    return array


def row_blocks(count: int, block: int | None = None) -> list[slice]:
    """Slices covering range(count) in blocks of ``block`` rows (default BLOCK_ROWS)."""
    block = block or BLOCK_ROWS
    return [slice(start, min(start + block, count)) for start in range(0, count, block)]


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """(M,) float32 L2 norm of each row of an (M, D) table, computed in float32 blocks."""
    norms = np.empty(len(vectors), dtype=np.float32)
    for block in row_blocks(len(vectors)):
        rows = device_table(vectors[block], "cpu").float()
        norms[block] = torch.linalg.vector_norm(rows, dim=1).numpy()  # one pass, no temporaries
    return norms


def _offsets(arrays: dict, num_rows: int, name: str) -> np.ndarray:
    """Document row ranges from 'offsets' or grouped 'doc_ids'."""
    if "offsets" in arrays:
        offsets = np.asarray(arrays["offsets"])
        if (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0
                or offsets[-1] != num_rows or np.any(np.diff(offsets) < 0)):
            raise DataError(f"{name}: key 'offsets' must be a non-decreasing 1-D array from 0 "
                            f"to the number of rows ({num_rows}); rebuild it from the "
                            f"document lengths.")
        return offsets.astype(np.int64)
    if "doc_ids" not in arrays:
        raise DataError(f"{name}: key 'vectors' needs document boundaries; add 'doc_ids' "
                        f"(one id per row) or 'offsets'.")
    doc_ids = np.asarray(arrays["doc_ids"])
    if doc_ids.shape != (num_rows,):
        raise DataError(f"{name}: key 'doc_ids' has shape {doc_ids.shape} but 'vectors' has "
                        f"{num_rows} rows; give one document id per row.")
    change = np.flatnonzero(doc_ids[1:] != doc_ids[:-1]) + 1
    starts = np.concatenate([[0], change])
    if len(np.unique(doc_ids[starts])) != len(starts):
        raise DataError(f"{name}: key 'doc_ids' is not grouped: a document's rows must be "
                        f"contiguous; sort the rows by document (stable) and keep chunk order.")
    return np.concatenate([starts, [num_rows]]).astype(np.int64)


def chunk_dataset(vectors: np.ndarray, offsets: np.ndarray | None = None,
                  doc_ids: np.ndarray | None = None, name: str = "arrays",
                  val_fraction: float = 0.2, split_seed: int = 0,
                  val_docs: np.ndarray | None = None, metadata: dict | None = None,
                  whole_file_split: bool | None = None) -> Dataset:
    """A validated chunk-level Dataset from in-memory arrays.

    vectors (M, D) float16/float32; document boundaries as offsets (n_docs + 1,) or grouped
    doc_ids (M,); val_docs (n_docs,) bool fixes the validation documents, else a seeded
    split of val_fraction of the documents. whole_file_split True (False) makes every
    document validation (training), for a file given as a whole split (--val-data).
    """
    vectors = _check_vectors(vectors, name, "vectors", rank=2)
    boundaries = {key: value for key, value in (("offsets", offsets), ("doc_ids", doc_ids))
                  if value is not None}
    offsets = _offsets(boundaries, len(vectors), name)
    num_docs = len(offsets) - 1
    if whole_file_split is not None:
        val_docs = np.full(num_docs, whole_file_split)
    elif val_docs is not None:
        val_docs = np.asarray(val_docs)
        if val_docs.shape != (num_docs,) or val_docs.dtype != bool:
            raise DataError(f"{name}: key 'val_doc_mask' must be bool with one entry per "
                            f"document ({num_docs}); fix it or drop the key.")
    else:
        val_docs = split_documents(num_docs, val_fraction, split_seed, name)
    return Dataset(vectors, offsets, val_docs, None, True, name, metadata or {})


def split_documents(num_docs: int, val_fraction: float, seed: int, name: str) -> np.ndarray:
    """(num_docs,) bool mask of validation documents: a seeded shuffle, at least one each."""
    if num_docs < 2:
        raise DataError(f"{name}: has {num_docs} document; a train/validation split by "
                        f"document needs at least 2.")
    num_val = min(max(1, round(num_docs * val_fraction)), num_docs - 1)
    mask = np.zeros(num_docs, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_docs)[:num_val]] = True
    return mask


def _window_dataset(arrays, context_key, target_key, name, metadata, val_fraction,
                    split_seed, keep_file_split, whole_file_split=None):
    if target_key not in arrays:
        raise DataError(f"{name}: has '{context_key}' but no '{target_key}'; save the "
                        f"target vectors under '{target_key}'.")
    contexts = _check_vectors(arrays[context_key], name, context_key, rank=3)
    targets = _check_vectors(arrays[target_key], name, target_key, rank=2)
    num, stored_context, dim = contexts.shape
    if targets.shape != (num, dim):
        raise DataError(f"{name}: '{target_key}' has shape {targets.shape} but "
                        f"'{context_key}' implies ({num}, {dim}); one target per window with "
                        f"the same dimension is needed.")
    if whole_file_split is not None:
        val_mask = np.full(num, whole_file_split)
    elif "val_mask" in arrays and keep_file_split:
        val_mask = np.asarray(arrays["val_mask"])
        if val_mask.shape != (num,) or val_mask.dtype != bool:
            raise DataError(f"{name}: key 'val_mask' must be bool with one entry per window "
                            f"({num}); fix it or drop the key.")
    else:
        warnings.warn(f"{name}: window-level file without documents; validation windows are "
                      f"drawn at random ({val_fraction:.0%}), so neighbouring windows of one "
                      f"document can land on both sides and flatter validation.", stacklevel=3)
        val_mask = split_documents(num, val_fraction, split_seed, name)
    # Each stored window becomes a pseudo-document of K+1 rows: context rows then target.
    table = np.concatenate([contexts, targets[:, None, :].astype(contexts.dtype)], axis=1)
    offsets = np.arange(num + 1, dtype=np.int64) * (stored_context + 1)
    return Dataset(table.reshape(-1, dim), offsets, val_mask, stored_context, False, name,
                   metadata)


def make_synthetic(num_docs: int = 300, min_chunks: int = 16, max_chunks: int = 40,
                   dim: int = 32, step: float = 0.35, turn: float = 0.15, noise: float = 0.03,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Documents as drifting paths on the unit sphere, with planted next-chunk structure.

    Each document starts at a random unit vector and moves along a heading that turns slowly
    (``turn`` mixes in a fresh random direction each step); ``step`` is the angle moved per
    chunk (radians), ``noise`` an isotropic jitter. The next chunk is therefore predictable
    from the direction of travel in the context, which a copy-last or context-mean
    predictor cannot use. Returns vectors (M, dim) float32 unit rows and offsets (n_docs+1,).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_chunks, max_chunks + 1, size=num_docs)
    documents = []
    for length in lengths:
        point = _unit(rng.standard_normal(dim))
        heading = _unit(_orthogonal(rng.standard_normal(dim), point))
        rows = []
        for _ in range(length):
            rows.append(_unit(point + noise * rng.standard_normal(dim)))
            point = _unit(np.cos(step) * point + np.sin(step) * heading)
            fresh = _unit(_orthogonal(rng.standard_normal(dim), point))
            heading = _unit(_orthogonal((1 - turn) * heading + turn * fresh, point))
        documents.append(np.stack(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(documents).astype(np.float32), offsets


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _orthogonal(vector: np.ndarray, unit_axis: np.ndarray) -> np.ndarray:
    return vector - (vector @ unit_axis) * unit_axis


class BatchSource:
    """A WindowSet whose vector table lives on a torch device; gathers unit-norm batches.

    table: (M, D) tensor of the WindowSet's vectors on the target device, in the stored dtype
    (float16 stays float16 until gathered). Pass the same table to the train and validation
    sources so a GPU holds the vectors once.
    """

    def __init__(self, windows: WindowSet, table: torch.Tensor):
        self.windows = windows
        self.table = table
        device = table.device
        self.starts = torch.as_tensor(windows.starts, device=device)
        self.offsets = torch.arange(windows.context + 1, device=device)
        known = windows.knows_documents
        self.doc_start = torch.as_tensor(windows.doc_start, device=device) if known else None
        self.doc_end = torch.as_tensor(windows.doc_end, device=device) if known else None

    def __len__(self) -> int:
        return len(self.windows)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 vectors of table rows (any shape) -> (*rows.shape, D)."""
        return F.normalize(self.table[rows].float(), dim=-1)

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B,) long -> contexts (B, K, D), targets (B, D); unit rows, float32."""
        window_rows = self.starts[positions][:, None] + self.offsets  # (B, K + 1)
        vectors = self.rows(window_rows)
        return vectors[:, :-1], vectors[:, -1]

    def hard_negatives(self, positions: torch.Tensor,
                       uniform: torch.Tensor) -> torch.Tensor | None:
        """(B, H, D) random chunks of each window's own document, never its target.

        uniform: (B, H) draws in [0, 1) on the table's device, one per negative (the caller
        draws them, e.g. a whole epoch's at once). None when documents are unknown or H is 0.
        """
        if uniform.shape[1] == 0 or self.doc_start is None:
            return None
        start, end = self.doc_start[positions], self.doc_end[positions]
        target = self.starts[positions] + self.windows.context
        # Draw from the document's other rows, then step over the target row.
        rows = start[:, None] + (uniform * (end - start - 1)[:, None]).long()
        rows = rows + (rows >= target[:, None]).long()
        return self.rows(rows)


def device_table(vectors: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """The (M, D) vector table as a tensor on ``device`` without a copy on CPU."""
    with warnings.catch_warnings():
        # Arrays shared through Ray's object store are read-only; we never write to them.
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(vectors).to(device)
