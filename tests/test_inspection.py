"""`python -m tune_p7.data inspect`: numbers on a crafted dataset equal hand-computed values."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tune_p7.data import load_dataset
from tune_p7.inspection import inspect_dataset, main


def circle_file(tmp_path, documents=4, length=12, step=0.2):
    """Documents that walk a great circle in their own plane, `step` radians per chunk."""
    rows = []
    for doc in range(documents):
        angles = step * np.arange(length)
        plane = np.zeros((length, 2 * documents + 2), np.float32)
        plane[:, 2 * doc], plane[:, 2 * doc + 1] = np.cos(angles), np.sin(angles)
        rows.append(plane)
    vectors = np.concatenate(rows)
    vectors[5] = vectors[4]  # one exact duplicate row
    path = tmp_path / "circle.npz"
    np.savez(path, vectors=vectors, offsets=np.arange(documents + 1) * length)
    return path


def test_report_numbers_equal_hand_computed_values(tmp_path):
    dataset = load_dataset(circle_file(tmp_path), val_fraction=0.25)
    report = inspect_dataset(dataset, contexts=(5,))
    assert (report["documents"], report["chunks"], report["validation_documents"]) == (4, 48, 1)
    assert report["duplicate_rows"] == 1 and report["zero_rows"] == 0
    val_curve = report["lag_cosine"]["val"]
    assert val_curve[:3] == pytest.approx(np.cos(0.2 * np.arange(1, 4)), abs=1e-5)
    part = report["contexts"]["5"]
    assert part["windows"] == {"train": 3 * 7, "val": 7}
    assert part["signals"]["val"]["recency"] == pytest.approx(np.cos(0.2) - np.cos(1.0), abs=1e-5)
    assert part["baselines"]["copy_last"]["val_margin"] == pytest.approx(np.cos(0.2) - 1, abs=1e-5)
    assert part["parity"]["coherence"] == pytest.approx(
        part["signals"]["val"]["coherence"] - part["signals"]["train"]["coherence"])


def test_context_too_large_is_reported_not_fatal(tmp_path):
    report = inspect_dataset(load_dataset(circle_file(tmp_path)), contexts=(5, 12))
    assert "error" in report["contexts"]["12"] and "windows" in report["contexts"]["5"]


def test_cli_json_and_exit_code_2_for_a_bad_file(tmp_path, capsys):
    assert main(["inspect", str(circle_file(tmp_path)), "--format", "json", "--context", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["contexts"]["3"]["windows"]["val"] > 0
    missing = subprocess.run([sys.executable, "-m", "tune_p7.data", "inspect",
                              str(tmp_path / "none.npz")], capture_output=True, text=True)
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_block_wise_lag_cosines_equal_the_per_document_definition(monkeypatch):
    import tune_p7.data
    from tune_p7.data import chunk_dataset
    from tune_p7.inspection import lag_cosines

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 15, size=30)
    vectors = rng.standard_normal((lengths.sum(), 6)).cumsum(axis=0).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    dataset = chunk_dataset(vectors, offsets, split_seed=2)
    monkeypatch.setattr(tune_p7.data, "BLOCK_ROWS", 16)  # pairs straddle block ends
    curves = lag_cosines(dataset, max_lag=12)
    unit = vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    for split, is_val in (("train", False), ("val", True)):
        for lag in range(1, 13):
            cosines = [unit[row] @ unit[row + lag] for doc in np.flatnonzero(dataset.val_docs == is_val)
                       for row in range(offsets[doc], offsets[doc + 1] - lag)]
            expected = np.mean(cosines) if cosines else np.nan
            assert curves[split][lag - 1] == pytest.approx(expected, abs=1e-5, nan_ok=True)
    assert np.isnan(curves["train"][-1]) or lengths.max() > 12


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_duplicate_rows_are_counted_exactly_across_blocks(dtype, monkeypatch):
    from tune_p7 import inspection

    monkeypatch.setattr(inspection, "DUPLICATE_BLOCK", 3)
    rows = np.random.default_rng(1).standard_normal((20, 8)).astype(dtype)
    rows[[7, 15, 19]] = rows[2]   # one row four times: 3 repeats
    rows[11] = rows[0]            # another twice: 1 repeat
    rows[12] = rows[13]           # and a third: 1 repeat
    near = rows[3].copy()
    near[0] = np.nextafter(near[0], dtype(np.inf))  # one ulp apart: not a duplicate
    rows[4] = near
    assert inspection.duplicate_rows(rows) == 5


def test_inspect_reports_its_long_steps_on_stderr(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tune_p7.data", "inspect",
                           str(circle_file(tmp_path)), "--format", "json", "--context", "3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    json.loads(done.stdout)  # stdout is the report only
    steps = [line.split("] ", 1)[1] for line in done.stderr.splitlines()]
    assert steps[0].startswith("reading circle.npz (") and "checking circle.npz" in steps[1]
    assert steps[-1] == "signals and trivial predictors for K=3"
