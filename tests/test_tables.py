"""Reading your own data: CSV, .npz and Parquet tables, every path and every bad-file error
(each one line naming the file, the row and the column), and the atomic CSV writer."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from gpumlp.data.tables import TableError, read_table, table_format, write_csv
from gpumlp.exceptions import FileFormatError
from gpumlp.data.user_data import infer_task, load_user_data


def write(path, text: str | bytes):
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode) as handle:
        handle.write(text)
    return path


# ------------------------------------------------------------------------------------- CSV
def test_csv_features_and_targets_of_every_kind(tmp_path):
    path = write(tmp_path / "t.csv", "a, b ,label\n1,2.5,cat\n-3,1e3,dog\n\n")
    table = read_table(path, target="label")
    assert table.X.dtype == np.float64 and table.X.tolist() == [[1.0, 2.5], [-3.0, 1000.0]]
    assert table.y.tolist() == ["cat", "dog"] and table.feature_names == ["a", "b"]
    ints = read_table(write(tmp_path / "i.csv", "x,y\n1,3\n2,4\n"), target="y")
    assert ints.y.dtype.kind == "i" and ints.y.tolist() == [3, 4]
    floats = read_table(write(tmp_path / "f.csv", "x,y\n1,3.5\n2,4\n"), target="y")
    assert floats.y.dtype == np.float64 and floats.y.tolist() == [3.5, 4.0]


def test_csv_without_target_needs_numbers_everywhere(tmp_path):
    path = write(tmp_path / "t.csv", "a,b\n1,2\n3,4\n")
    table = read_table(path)
    assert table.y is None and table.X.tolist() == [[1, 2], [3, 4]]


def test_csv_feature_selection_by_name_ignores_other_columns(tmp_path):
    path = write(tmp_path / "t.csv", "id,b,label,a\nx1,2,yes,1\nx2,4,no,3\n")
    table = read_table(path, features=["a", "b"])
    assert table.X.tolist() == [[1, 2], [3, 4]] and table.feature_names == ["a", "b"]
    with pytest.raises(TableError, match=r"t.csv: no column 'c', a feature the model was "
                                         r"trained on; columns: 'id', 'b', 'label', 'a'"):
        read_table(path, features=["a", "c"])


def test_csv_utf8_byte_order_mark_quoted_fields_and_crlf(tmp_path):
    path = write(tmp_path / "t.csv", '\ufeffa,"the label"\r\n"1.5","yes,\nreally"\r\n'
                                     '2,"no"\r\n3,x\r\n'.encode())
    table = read_table(path, target="the label")
    assert table.feature_names == ["a"] and table.y.tolist() == ["yes,\nreally", "no", "x"]
    bad = write(tmp_path / "b.csv", 'a,label\r\n1,"x\ny"\r\n3,y\r\nz,w\r\n'.encode())
    with pytest.raises(TableError, match=r"b.csv, line 5, column 'a': 'z' is not a number"):
        read_table(bad, target="label")  # a quoted field over two lines: lines still count
    bad = write(tmp_path / "c.csv", 'a,label\n1,x\n"1\n2",y\n'.encode())
    with pytest.raises(TableError, match=r"c.csv, line 3, column 'a': '1\\n2' is not a"):
        read_table(bad, target="label")  # the record's first line


@pytest.mark.parametrize("text, message", [
    ("a,b,label\n1,2,x\n3,abc,y\n", r"t.csv, line 3, column 'b': 'abc' is not a number"),
    ("a,b,label\n1,,x\n", r"t.csv, line 2, column 'b': empty \(a missing value\)"),
    ("a,b,label\n1,nan,x\n", r"t.csv, line 2, column 'b': 'nan' is not a finite number"),
    ("a,b,label\n1,-inf,x\n", r"t.csv, line 2, column 'b': '-inf' is not a finite number"),
    ("a,b,label\n1,2,x\n1,2\n", r"t.csv, line 3: 2 fields, but the header has 3"),
    ("a,b,label\n1,2,x,9\n", r"t.csv, line 2: 4 fields, but the header has 3"),
    ("a,b,label\n1,2, \n", r"t.csv, line 2, column 'label': empty target cell"),
    ("a,b,c\n1,2,3\n", r"t.csv: no column 'label' \(the target\); columns: 'a', 'b', 'c'"),
    ("", r"t.csv: empty file; a CSV file needs a header row"),
    ("a,b,label\n", r"t.csv: no data rows"),
    ("a,a,label\n1,2,3\n", r"t.csv, line 1: column name 'a' appears twice"),
    ("a,,label\n1,2,3\n", r"t.csv, line 1: column 2 has no name"),
    ("label\nx\n", r"t.csv: no feature columns \(only the target 'label'\)"),
    ("a,label\n1,2\n2,nan\n", r"t.csv, column 'label': target 'nan' \(data row 2\) is not a "
                              r"finite number"),
])
def test_csv_bad_files_name_file_line_and_column(tmp_path, text, message):
    path = write(tmp_path / "t.csv", text)
    with pytest.raises(TableError, match=message) as caught:
        read_table(path, target="label")
    assert "\n" not in str(caught.value)


def test_csv_not_utf8_and_overlong_fields_and_lines(tmp_path, monkeypatch):
    from gpumlp.data import tables

    with pytest.raises(TableError, match=r"t.csv, line 3: not UTF-8 text \(byte 3 of the line"):
        read_table(write(tmp_path / "t.csv", b"a,label\n1,2\n1,\xff\n"), target="label")
    huge = "a,label\n" + "1" * (2 << 20) + ",1\n"
    with pytest.raises(TableError, match=r"big.csv, line 2: field larger than field limit"):
        read_table(write(tmp_path / "big.csv", huge), target="label")
    monkeypatch.setattr(tables, "MAX_LINE_BYTES", 64)
    long_line = "a,label\n1,2\n" + "1" * 100 + ",1\n"
    with pytest.raises(TableError, match=r"long.csv, line 3: longer than MAX_LINE_BYTES=64"):
        read_table(write(tmp_path / "long.csv", long_line), target="label")


@pytest.mark.parametrize("suffix", [".csv", ".npz", ".parquet"])
def test_special_missing_and_unknown_files_are_refused(tmp_path, suffix):
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / f"nothere{suffix}", target="y")
    (tmp_path / f"folder{suffix}").mkdir()
    with pytest.raises(FileFormatError, match=r"folder.*' is a directory, not a regular file"):
        read_table(tmp_path / f"folder{suffix}", target="y")
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)  # opening it would block forever: it must be refused before that
    with pytest.raises(FileFormatError, match=r"pipe.*' is a FIFO \(named pipe\), not a "
                                              "regular file"):
        read_table(fifo, target="y")
    with pytest.raises(TableError, match=r"'data.txt': unknown file type '.txt'; allowed: "
                                         r".csv, .npz, .parquet, .pq"):
        table_format("data.txt")
    assert table_format("A.CSV") == "csv" and table_format("b.pq") == "parquet"


# ------------------------------------------------------------------------------------- npz
def test_npz_arrays(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "d.npz", X=X, y=np.array([b"a", b"b", b"a", b"b"]))
    table = read_table(tmp_path / "d.npz", target="y")
    assert table.X.dtype == np.float64 and np.array_equal(table.X, X)
    assert table.y.tolist() == ["a", "b", "a", "b"] and table.feature_names == ["x0", "x1", "x2"]
    np.savez(tmp_path / "c.npz", X=X, y=np.arange(4.0)[:, None])
    assert read_table(tmp_path / "c.npz", target="y").y.shape == (4,)
    assert read_table(tmp_path / "c.npz").y is None


@pytest.mark.parametrize("arrays, message", [
    ({"Z": np.zeros((2, 2))}, r"d.npz: no array 'X' \(the features\); arrays: 'Z'"),
    ({"X": np.zeros((2, 2))}, r"d.npz: no array 'y' \(the target\); arrays: 'X'"),
    ({"X": np.zeros(3), "y": np.zeros(3)}, r"d.npz: array 'X' must be 2-D numbers"),
    ({"X": np.array([[1.0, 2.0], [3.0, np.nan]]), "y": np.zeros(2)},
     r"d.npz, row 1, column 1 of 'X': nan is not a finite number"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(2)},
     r"d.npz: array 'y' must be 1-D with one value per row of 'X' \(3\); got shape \(2,\)"),
    ({"X": np.zeros((2, 2)), "y": np.array([1.0, np.inf])},
     r"d.npz, row 1 of 'y': inf is not a finite number"),
    ({"X": np.zeros((2, 2)), "y": np.array([1 + 2j, 3j])}, r"d.npz: array 'y' has dtype"),
])
def test_npz_bad_files(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(TableError, match=message):
        read_table(tmp_path / "d.npz", target="y")


def test_npz_pickles_and_damaged_archives_are_refused(tmp_path):
    np.savez(tmp_path / "o.npz", X=np.array([[1, "a"]], dtype=object), y=np.zeros(1))
    with pytest.raises(TableError, match=r"o.npz: not a readable .npz file \(.*allow_pickle"):
        read_table(tmp_path / "o.npz", target="y")
    write(tmp_path / "bad.npz", b"PK\x03\x04 not really a zip")
    with pytest.raises(TableError, match=r"bad.npz: not a readable .npz file"):
        read_table(tmp_path / "bad.npz", target="y")


# --------------------------------------------------------------------------------- Parquet
def test_parquet_tables(tmp_path):
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    parquet.write_table(pa.table({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5],
                                  "label": ["x", "y", "x"]}), path)
    table = read_table(path, target="label")
    assert table.X.tolist() == [[1, 0.5], [2, 1.5], [3, 2.5]]
    assert table.y.tolist() == ["x", "y", "x"]
    assert read_table(path, features=["b"]).X.tolist() == [[0.5], [1.5], [2.5]]


@pytest.mark.parametrize("columns, message", [
    ({"a": [1.0, None, 3.0], "label": [1, 2, 3]},
     r"d.parquet, row 1, column 'a': empty \(a missing value\)"),
    ({"a": ["p", "q", "r"], "label": [1, 2, 3]},
     r"d.parquet, row 0, column 'a': 'p' is not a number \(the column holds string\)"),
    ({"a": [1.0, 2.0, float("nan")], "label": [1, 2, 3]},
     r"d.parquet, row 2, column 'a': nan is not a finite number"),
    ({"a": [1.0, 2.0, 3.0], "label": ["u", None, "v"]},
     r"d.parquet, row 1, column 'label': missing target \(null\)"),
    ({"a": [1.0, 2.0, 3.0], "other": [1, 2, 3]}, r"d.parquet: no column 'label' \(the target\)"),
])
def test_parquet_bad_files(tmp_path, columns, message):
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    parquet.write_table(pa.table(columns), tmp_path / "d.parquet")
    with pytest.raises(TableError, match=message):
        read_table(tmp_path / "d.parquet", target="label")


def test_damaged_parquet_is_refused(tmp_path):
    pytest.importorskip("pyarrow")
    write(tmp_path / "d.parquet", b"PAR1 damaged")
    with pytest.raises(TableError, match=r"d.parquet: not a readable Parquet file"):
        read_table(tmp_path / "d.parquet", target="label")


# --------------------------------------------------------------------------------- writing
def test_write_csv_to_a_path_and_to_a_stream(tmp_path):
    columns = [np.array(["a", "b"]), np.array([0.1, 1 / 3])]
    write_csv(tmp_path / "p.csv", ["prediction", "proba_x"], columns)
    assert (tmp_path / "p.csv").read_text() == ("prediction,proba_x\na,0.1\n"
                                                "b,0.3333333333333333\n")
    stream = io.StringIO()
    write_csv(stream, ["prediction"], [np.array([1, 2])])
    assert stream.getvalue() == "prediction\n1\n2\n"


def test_write_csv_is_atomic(tmp_path):
    target = write(tmp_path / "p.csv", "old content\n")

    class Broken:
        def tolist(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_csv(target, ["prediction"], [Broken()])
    assert target.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temporary left


# ------------------------------------------------------------------------ task and splits
def test_task_inference():
    assert infer_task(np.array(["a", "b"]), "t")[0] == "classify"
    assert infer_task(np.array([0, 1, 2, 1]), "t")[0] == "classify"
    assert infer_task(np.array([0.0, 1.0, 2.0]), "t")[0] == "classify"  # integral floats
    assert infer_task(np.array([0.5, 1.0]), "t") == (
        "regress", "target 't' holds non-integer numbers; --task classify treats them as "
                   "labels")
    many = np.arange(101)
    assert infer_task(many, "t")[0] == "regress"


def test_test_fraction_split_is_seeded_and_stratified(tmp_path):
    rows = "\n".join(f"{i},{'a' if i % 4 else 'b'}" for i in range(40))
    path = write(tmp_path / "t.csv", "x,label\n" + rows + "\n")
    data = load_user_data(path, "label", test_fraction=0.25, seed=3)
    assert data.task == "classify" and len(data.y_test) == 10 and len(data.y_train) == 30
    assert data.y_test.tolist().count("b") in (2, 3)  # a quarter of the 40 rows are 'b'
    again = load_user_data(path, "label", test_fraction=0.25, seed=3)
    assert np.array_equal(data.X_test, again.X_test)
    assert set(data.X_test[:, 0]).isdisjoint(data.X_train[:, 0])
    numbers = write(tmp_path / "n.csv", "x,z\n" + "\n".join(f"{i},{i / 3}" for i in range(40)))
    regress = load_user_data(numbers, "z", test_fraction=0.5)
    assert regress.task == "regress" and len(regress.y_test) == 20
    assert regress.y_train.dtype == np.float64
    assert load_user_data(numbers, "x").task == "classify"  # 40 integers: labels by default
    assert load_user_data(numbers, "x", task="regress").y_train.dtype == np.float64
    with pytest.raises(TableError, match=r"--task regress needs a numeric target, but 'label' "
                                         r"holds text such as 'b'"):
        load_user_data(path, "label", task="regress")


def test_a_test_file_must_have_the_training_columns(tmp_path):
    train = write(tmp_path / "train.csv", "a,b,y\n1,2,0.5\n3,4,1.5\n")
    test = write(tmp_path / "test.csv", "b,y\n2,0.5\n")
    with pytest.raises(TableError, match=r"test.csv: no column 'a', a feature the model was "
                                         r"trained on"):
        load_user_data(train, "y", test=test)
    with pytest.raises(TableError, match=r"--task classify needs class labels, but 'y' holds "
                                         r"non-integer numbers such as 0.5"):
        load_user_data(train, "y", task="classify")
