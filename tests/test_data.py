"""Data loading, validation messages, windows and the document split."""

import warnings

import numpy as np
import pytest
import torch

from tune_p7.data import (BatchSource, DataError, chunk_dataset, device_table, load_dataset,
                          make_synthetic)
from tune_p7.train import main as train_main


def unit_rows(count, dim=8, seed=0):
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_windows_never_cross_documents_and_k5_k7_come_from_one_file(chunk_file):
    lengths = [6, 9, 3, 12, 8, 10]  # the 3-chunk document gives no window at K=5
    doc_ids = np.repeat(np.arange(len(lengths)), lengths)
    path = chunk_file(vectors=unit_rows(len(doc_ids)), doc_ids=doc_ids)
    dataset = load_dataset(path, val_fraction=0.34, split_seed=3)
    for context in (5, 7):
        total = 0
        for split in ("train", "val"):
            windows = dataset.windows(context, split)
            target_rows = windows.starts + context
            # Every context row and the target lie inside the window's own document.
            assert np.all(windows.starts >= windows.doc_start)
            assert np.all(target_rows < windows.doc_end)
            assert np.all(doc_ids[windows.starts] == doc_ids[target_rows])
            total += len(windows)
        assert total == sum(max(length - context, 0) for length in lengths)


def test_split_is_by_document_and_seeded(small_synthetic):
    train = small_synthetic.windows(5, "train")
    val = small_synthetic.windows(5, "val")
    train_docs, val_docs = set(train.doc_start.tolist()), set(val.doc_start.tolist())
    assert train_docs and val_docs and not train_docs & val_docs
    vectors, offsets = make_synthetic(num_docs=30, dim=8, seed=2)
    from tune_p7.data import chunk_dataset

    first = chunk_dataset(vectors, offsets, val_fraction=0.3, split_seed=5).val_docs
    again = chunk_dataset(vectors, offsets, val_fraction=0.3, split_seed=5).val_docs
    other = chunk_dataset(vectors, offsets, val_fraction=0.3, split_seed=6).val_docs
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.sum() == 9


def test_window_level_file_gives_its_k_or_less_and_refuses_more(chunk_file):
    contexts = unit_rows(40 * 5).reshape(40, 5, 8)
    targets = unit_rows(40, seed=1)
    path = chunk_file(contexts=contexts, targets=targets)
    with pytest.warns(UserWarning, match="documents"):
        dataset = load_dataset(path)
    windows = dataset.windows(3, "train")
    source = BatchSource(windows, device_table(dataset.vectors, "cpu"))
    got_contexts, got_targets = source.batch(torch.arange(len(windows)))
    stored = (windows.starts // 6)  # pseudo-document index = stored window index
    assert torch.allclose(got_contexts, torch.as_tensor(contexts[stored, 2:]), atol=1e-6)
    assert torch.allclose(got_targets, torch.as_tensor(targets[stored]), atol=1e-6)
    with pytest.raises(DataError, match="K=7 cannot be cut"):
        dataset.windows(7, "train")


def test_wikipedia_keys_and_a_kept_split(chunk_file):
    val_mask = np.arange(20) % 4 == 0
    path = chunk_file(context_sequences=unit_rows(100).reshape(20, 5, 8),
                      target_vectors=unit_rows(20, seed=3), val_mask=val_mask)
    dataset = load_dataset(path)
    assert np.array_equal(dataset.val_docs, val_mask)
    assert len(dataset.windows(5, "val")) == 5


def test_hard_negatives_come_from_the_same_document_and_never_the_target(small_synthetic):
    windows = small_synthetic.windows(5, "train")
    source = BatchSource(windows, device_table(small_synthetic.vectors, "cpu"))
    positions = torch.arange(len(windows))
    generator = torch.Generator().manual_seed(0)
    start, end = source.doc_start[positions], source.doc_end[positions]
    target = source.starts[positions] + 5
    uniform = torch.rand(len(positions), 6, generator=generator)
    rows = start[:, None] + (uniform * (end - start - 1)[:, None]).long()
    rows = rows + (rows >= target[:, None]).long()
    negatives = source.hard_negatives(positions, uniform)
    assert torch.allclose(negatives, source.rows(rows))
    assert torch.all((rows >= start[:, None]) & (rows < end[:, None]))
    assert not torch.any(rows == target[:, None])


BAD_INPUTS = {
    "missing file": (None, "file not found"),
    "not an npz": ("garbage", "not an NPZ archive"),
    "missing keys": ({"embeddings": unit_rows(10)}, "needs 'vectors'"),
    "no boundaries": ({"vectors": unit_rows(10)}, "needs document boundaries"),
    "wrong rank": ({"vectors": unit_rows(10).ravel(), "offsets": np.array([0, 80])},
                   "must have rank 2"),
    "empty": ({"vectors": np.zeros((0, 8), np.float32), "offsets": np.array([0])}, "is empty"),
    "nan": ({"vectors": np.where(np.arange(80).reshape(10, 8) == 17, np.nan, unit_rows(10)),
             "offsets": np.array([0, 5, 10])}, "NaN or inf"),
    "zero rows": ({"vectors": np.vstack([unit_rows(8), np.zeros((2, 8))]).astype(np.float32),
                   "offsets": np.array([0, 5, 10])}, "2 all-zero rows"),
    "ungrouped doc ids": ({"vectors": unit_rows(10), "doc_ids": np.array([0, 0, 1, 1, 0] * 2)},
                          "not grouped"),
    "doc ids length": ({"vectors": unit_rows(10), "doc_ids": np.zeros(7)}, "one document id per row"),
    "dimension mismatch": ({"contexts": unit_rows(50).reshape(10, 5, 8),
                            "targets": unit_rows(10, dim=6)}, "same dimension"),
    "too few chunks for K": ({"vectors": unit_rows(12), "offsets": np.array([0, 4, 8, 12])},
                             "chunks a window of K=5 needs"),
    "one document": ({"vectors": unit_rows(12), "offsets": np.array([0, 12])},
                     "at least 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_sentence_and_exit_code_2(case, tmp_path, capsys):
    content, message = BAD_INPUTS[case]
    path = tmp_path / "data.npz"
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, str):
        path.write_text(content)
    out = tmp_path / "out"
    code = train_main(["--data", str(path), "--out", str(out), "--epochs", "1"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert message in error and "data.npz" in error
    assert error.count("\n") == 0 and "Traceback" not in error
    assert not out.exists(), "nothing may be written for bad input"


def test_zero_rows_are_reported_with_where(chunk_file):
    vectors = unit_rows(20)
    vectors[[3, 11]] = 0
    with pytest.raises(DataError, match=r"2 all-zero rows \(first at rows \[3, 11\]\)"):
        load_dataset(chunk_file(vectors=vectors, offsets=np.array([0, 10, 20])))


def test_synthetic_documents_are_unit_paths_with_forward_structure():
    vectors, offsets = make_synthetic(num_docs=10, dim=16, seed=4)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    first_doc = vectors[offsets[0]:offsets[1]]
    # Neighbours are close, and similarity decays with distance along the path.
    lag1 = np.mean(np.sum(first_doc[1:] * first_doc[:-1], axis=1))
    lag4 = np.mean(np.sum(first_doc[4:] * first_doc[:-4], axis=1))
    assert lag1 > 0.85 and lag4 < lag1 - 0.2


def test_block_wise_checks_name_the_first_bad_row_across_blocks(chunk_file, monkeypatch):
    import tune_p7.data

    monkeypatch.setattr(tune_p7.data, "BLOCK_ROWS", 4)  # rows 0-3, 4-7, ... checked apart
    vectors = unit_rows(20).astype(np.float16)
    vectors[[9, 17], 2] = np.inf
    with pytest.raises(DataError, match=r"key 'vectors' has 2 rows with NaN or inf "
                                        r"\(first at row 9\)"):
        load_dataset(chunk_file(vectors=vectors, offsets=np.array([0, 10, 20])))
    contexts = unit_rows(30).reshape(6, 5, 8)
    contexts[4, 1] = 0  # row 4 * 5 + 1 of the flattened contexts, in the sixth block
    with pytest.raises(DataError, match=r"key 'contexts' has 1 all-zero rows "
                                        r"\(first at rows \[21\]\)"):
        load_dataset(chunk_file(contexts=contexts, targets=unit_rows(6)))


def test_a_finite_row_whose_norm_overflows_is_not_called_non_finite(chunk_file):
    # The check finds NaN/inf rows through their norms; 1e30 squared overflows float32 too.
    vectors = unit_rows(20)
    vectors[3] *= 1e30
    vectors[7, 1] = np.nan
    with pytest.raises(DataError, match=r"has 1 rows with NaN or inf \(first at row 7\)"):
        load_dataset(chunk_file(vectors=vectors, offsets=np.array([0, 10, 20])))
    vectors[7, 1] = 0.5
    assert load_dataset(chunk_file(vectors=vectors, offsets=np.array([0, 10, 20]))).dim == 8


def test_a_float16_table_stays_float16_and_uncopied(chunk_file):
    vectors = unit_rows(20).astype(np.float16)
    dataset = load_dataset(chunk_file(vectors=vectors, offsets=np.array([0, 10, 20])))
    assert dataset.vectors.dtype == np.float16
    in_memory = chunk_dataset(vectors, np.array([0, 10, 20]))
    assert in_memory.vectors is vectors


def test_the_table_is_read_without_huge_pages_and_the_setting_comes_back(chunk_file):
    multiarray = (getattr(np, "_core", None) or np.core).multiarray  # numpy 2 / numpy 1
    before = multiarray._set_madvise_hugepage(True)
    seen = []
    try:
        load_dataset(chunk_file(vectors=unit_rows(20), offsets=np.array([0, 10, 20])),
                     progress=lambda message: seen.append(multiarray._get_madvise_hugepage()))
        assert seen and not any(seen)  # off while reading and checking
        assert multiarray._get_madvise_hugepage()  # as it was
    finally:
        multiarray._set_madvise_hugepage(before)


def test_val_data_makes_the_second_file_the_whole_validation_split(chunk_file):
    train_file = chunk_file("train.npz", vectors=unit_rows(30), offsets=np.array([0, 10, 20, 30]),
                            val_doc_mask=np.array([False, True, False]))  # the file's own split
    val_vectors = unit_rows(16, seed=5).astype(np.float16)
    val_file = chunk_file("val.npz", vectors=val_vectors, offsets=np.array([0, 8, 16]))
    dataset = load_dataset(train_file, val_source=val_file)
    assert dataset.val_docs.tolist() == [False, False, False, True, True]
    assert len(dataset.windows(5, "train")) == 3 * 5 and len(dataset.windows(5, "val")) == 2 * 3
    np.testing.assert_array_equal(dataset.vectors[30:], val_vectors.astype(np.float32))
    assert dataset.vectors.dtype == np.float32  # float32 + float16 -> float32


def test_val_data_pairs_two_window_level_files_as_the_original_did(chunk_file):
    pair = [chunk_file(f"{split}.npz", contexts=unit_rows(4 * count, seed=seed).reshape(count, 4, 8),
                       targets=unit_rows(count, seed=seed + 1))
            for split, count, seed in (("train", 12, 1), ("val", 5, 3))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random split is drawn, so no warning about one
        dataset = load_dataset(pair[0], val_source=pair[1])
    assert (len(dataset.windows(4, "train")), len(dataset.windows(4, "val"))) == (12, 5)
    assert len(dataset.windows(3, "val")) == 5  # a smaller K is still cut from each window


@pytest.mark.parametrize("other, message", [
    ({"vectors": unit_rows(16, dim=6), "offsets": np.array([0, 8, 16])},
     "vectors have D=6 but train.npz has D=8"),
    ({"contexts": unit_rows(20).reshape(4, 5, 8), "targets": unit_rows(4)},
     "is window-level with K=5 but train.npz is chunk-level"),
])
def test_val_data_of_another_shape_is_one_sentence_and_exit_2(chunk_file, tmp_path, capsys,
                                                              other, message):
    train_file = chunk_file("train.npz", vectors=unit_rows(30), offsets=np.array([0, 10, 20, 30]))
    val_file = chunk_file("val.npz", **other)
    out = tmp_path / "out"
    code = train_main(["--data", str(train_file), "--val-data", str(val_file), "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and error.startswith("error: val.npz:")
    assert error.count("\n") == 0 and not out.exists()
