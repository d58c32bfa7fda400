"""Saving and loading models: exact round trips, atomic writes, and clear errors for files
that are not gpumlp models. No pickle anywhere: every file loads with allow_pickle=False."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor, Perceptron
from gpumlp import io as gio

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")


def mlp(cls, **params):
    options = dict(hidden_layer_sizes=(6, 5), backend="numpy", random_state=0, max_iter=4,
                   learning_rate_init=0.01)
    options.update(params)
    return cls(**options)


def assert_same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    assert pa.keys() == pb.keys()
    for key in pa:
        assert pa[key] == pb[key] and type(pa[key]) is type(pb[key]), key


def assert_same_model(original, loaded, X):
    assert type(loaded) is type(original)
    assert_same_params(original, loaded)
    if isinstance(original, Perceptron):
        for name in ("coef_", "intercept_"):
            a, b = getattr(original, name), getattr(loaded, name)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        assert (loaded.n_iter_, loaded.converged_) == (original.n_iter_, original.converged_)
        np.testing.assert_array_equal(loaded.decision_function(X), original.decision_function(X))
    else:
        pairs = zip(original.coefs_ + original.intercepts_, loaded.coefs_ + loaded.intercepts_)
        for a, b in pairs:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)  # bitwise
        assert loaded.loss_curve_ == original.loss_curve_
        assert loaded.n_iter_ == original.n_iter_
        assert loaded.best_loss_ == original.best_loss_
        assert loaded.validation_scores_ == original.validation_scores_
        assert loaded.best_validation_score_ == original.best_validation_score_
        assert loaded.out_activation_ == original.out_activation_
        assert loaded.n_features_in_ == original.n_features_in_
        if hasattr(original, "predict_proba"):
            np.testing.assert_array_equal(loaded.predict_proba(X), original.predict_proba(X))
    if hasattr(original, "classes_"):
        assert loaded.classes_.dtype == original.classes_.dtype
        np.testing.assert_array_equal(loaded.classes_, original.classes_)
    predicted = original.predict(X)
    np.testing.assert_array_equal(loaded.predict(X), predicted)
    assert loaded.predict(X).dtype == predicted.dtype


CASES = {
    "classifier-int": (lambda: mlp(MLPClassifier), "int"),
    "classifier-binary-str": (lambda: mlp(MLPClassifier), "str2"),
    "classifier-str": (lambda: mlp(MLPClassifier, dtype="float64"), "str3"),
    "classifier-early-stopping": (lambda: mlp(MLPClassifier, early_stopping=True), "int"),
    "classifier-multilabel": (lambda: mlp(MLPClassifier, dropout=0.2), "multilabel"),
    "regressor-1d": (lambda: mlp(MLPRegressor, solver="sgd"), "float"),
    "regressor-2d": (lambda: mlp(MLPRegressor, alpha=0.1), "float2"),
    "perceptron-int": (lambda: Perceptron(random_state=0, max_iter=5), "int"),
    "perceptron-str": (lambda: Perceptron(random_state=0, eta0=0.5, max_iter=20), "str3"),
}


def targets(kind, X, y):
    if kind == "int":
        return y
    if kind == "str2":
        return np.array(["no", "yes"])[(y > 0).astype(int)]
    if kind == "str3":
        return np.array(["ant", "bee", "cat"])[y]
    if kind == "multilabel":
        return np.stack([y == 0, y == 1, X[:, 0] > 0], axis=1).astype(int)
    if kind == "float":
        return X[:, 0] * 2 - X[:, 1]
    return np.stack([X[:, 0], X[:, 1] * X[:, 2]], axis=1)


@pytest.mark.parametrize("case", CASES)
def test_exact_round_trip(tmp_path, multiclass_data, case):
    make, kind = CASES[case]
    X, y = multiclass_data
    model = make().fit(X, targets(kind, X, y))
    path = tmp_path / "model.npz"
    gio.save(model, path)
    loaded = gpumlp.load(path)
    assert_same_model(model, loaded, X)
    # and the method spelling does the same
    model.save(str(tmp_path / "again.npz"))
    assert_same_model(model, gpumlp.load(tmp_path / "again.npz"), X)


@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=5), dict(hidden_layer_sizes=[5, 3]),
    dict(hidden_layer_sizes=(np.int64(4),)), dict(dtype=np.float64),
    dict(dtype=np.dtype("float32")), dict(random_state=np.int64(3)),
    dict(alpha=np.float32(0.5)), dict(max_iter=np.int64(2)),
], ids=lambda p: f"{next(iter(p))}={next(iter(p.values()))!r}")
def test_parameter_spellings_survive(tmp_path, binary_data, params):
    X, y = binary_data
    model = mlp(MLPClassifier, **params).fit(X, y)
    model.save(tmp_path / "m.npz")
    loaded = gpumlp.load(tmp_path / "m.npz")
    for key, value in model.get_params().items():
        assert loaded.get_params()[key] == value, key
    if not any(isinstance(v, np.generic) for v in params.values()):
        assert_same_params(model, loaded)  # same types too: a tuple stays a tuple, ...
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor, Perceptron])
def test_loaded_model_continues_with_partial_fit(tmp_path, multiclass_data, cls):
    X, y = multiclass_data
    target = X[:, 0] if cls is MLPRegressor else y
    model = (Perceptron(random_state=0, max_iter=2) if cls is Perceptron
             else mlp(cls)).fit(X, target)
    model.save(tmp_path / "m.npz")
    loaded = gpumlp.load(tmp_path / "m.npz")
    before_iter = loaded.n_iter_
    if cls is Perceptron:
        before = loaded.coef_.copy()
        loaded.partial_fit(X, target)  # classes are known: not needed again
        assert loaded.n_iter_ == 1 and loaded.t_ == model.t_ + len(X)
        assert not np.array_equal(loaded.coef_, before)
        np.testing.assert_array_equal(model.coef_, gpumlp.load(tmp_path / "m.npz").coef_)
        return
    before = [w.copy() for w in loaded.coefs_]
    for _ in range(3):
        loaded.partial_fit(X, target)
    assert loaded.n_iter_ == 1 and loaded.t_ == model.t_ + 3 * len(X)
    assert loaded.loss_curve_[:before_iter] == model.loss_curve_
    assert len(loaded.loss_curve_) == before_iter + 3
    assert all(np.isfinite(loaded.loss_curve_))
    assert any(not np.array_equal(a, b) for a, b in zip(loaded.coefs_, before))
    assert loaded.loss_curve_[-1] < model.loss_curve_[0]
    # the original model is untouched
    np.testing.assert_array_equal(model.coefs_[0], gpumlp.load(tmp_path / "m.npz").coefs_[0])


def test_file_is_plain_npz_without_pickle(tmp_path, binary_data):
    X, y = binary_data
    path = tmp_path / "m.npz"
    mlp(MLPClassifier).fit(X, np.array(["a", "b"])[y]).save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    assert all(a.dtype.kind != "O" for a in arrays.values())
    metadata_keys = [k for k, a in arrays.items() if a.dtype == np.uint8 and "meta" in k]
    assert len(metadata_keys) == 1
    metadata = json.loads(arrays[metadata_keys[0]].tobytes().decode())
    assert metadata["format"] == gio.FORMAT and metadata["version"] == gio.VERSION
    assert metadata["estimator"] == "MLPClassifier"
    assert "params" in metadata
    assert zipfile.is_zipfile(path)


def test_save_is_atomic(tmp_path, binary_data, monkeypatch):
    X, y = binary_data
    path = tmp_path / "model.npz"
    first = mlp(MLPClassifier).fit(X, y)
    first.save(path)
    good_bytes = path.read_bytes()

    def failing_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")  # some bytes reach the disk...
        raise OSError("disk full")  # ...then the write fails

    monkeypatch.setattr(np, "savez", failing_savez)
    second = mlp(MLPClassifier, random_state=1).fit(X, y)
    with pytest.raises(OSError, match="disk full"):
        second.save(path)
    with pytest.raises(OSError, match="disk full"):
        second.save(tmp_path / "new.npz")
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file, no new.npz
    np.testing.assert_array_equal(gpumlp.load(path).predict_proba(X), first.predict_proba(X))


def test_save_creates_parent_directories(tmp_path, binary_data):
    X, y = binary_data
    path = tmp_path / "a" / "b" / "m.npz"
    mlp(MLPClassifier).fit(X, y).save(path)
    assert gpumlp.load(path).n_features_in_ == X.shape[1]


# ------------------------------------------------------------------------- corrupt files
def _saved(path, X, y):
    mlp(MLPClassifier).fit(X, y).save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(arrays.pop(gio._META).tobytes().decode())
    return arrays, metadata


def _rewrite(path, arrays, metadata):
    encoded = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    np.savez(path, **arrays, **{gio._META: encoded})


def make_random_bytes(path, X, y):
    path.write_bytes(np.random.default_rng(0).bytes(2048))


def make_truncated_zip(path, X, y):
    mlp(MLPClassifier).fit(X, y).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_empty_file(path, X, y):
    path.write_bytes(b"")


def make_npy_array(path, X, y):
    with open(path, "wb") as handle:
        np.save(handle, X)


def make_foreign_npz(path, X, y):
    np.savez(path, weights=X, labels=y)


def make_wrong_format(path, X, y):
    arrays, metadata = _saved(path, X, y)
    metadata["format"] = "someone-elses-model"
    _rewrite(path, arrays, metadata)


def make_wrong_version(path, X, y):
    arrays, metadata = _saved(path, X, y)
    metadata["version"] = gio.VERSION + 1
    _rewrite(path, arrays, metadata)


def make_bad_json(path, X, y):
    arrays, _ = _saved(path, X, y)
    np.savez(path, **arrays, **{gio._META: np.frombuffer(b"{not json", dtype=np.uint8)})


def make_json_list(path, X, y):
    arrays, _ = _saved(path, X, y)
    np.savez(path, **arrays, **{gio._META: np.frombuffer(b"[1, 2]", dtype=np.uint8)})


def make_unknown_estimator(path, X, y):
    arrays, metadata = _saved(path, X, y)
    metadata["estimator"] = "os.system"
    _rewrite(path, arrays, metadata)


def make_wrong_parameter_count(path, X, y):
    arrays, metadata = _saved(path, X, y)
    arrays["params"] = arrays["params"][:-3]
    _rewrite(path, arrays, metadata)


def make_missing_state(path, X, y):
    arrays, metadata = _saved(path, X, y)
    del metadata["state"]
    _rewrite(path, arrays, metadata)


@pytest.mark.parametrize("make", [
    make_random_bytes, make_truncated_zip, make_empty_file, make_npy_array, make_foreign_npz,
    make_wrong_format, make_wrong_version, make_bad_json, make_json_list,
    make_unknown_estimator, make_wrong_parameter_count, make_missing_state,
], ids=lambda f: f.__name__[5:])
def test_bad_files_raise_value_error_naming_the_path(tmp_path, binary_data, make):
    X, y = binary_data
    path = tmp_path / "suspect.npz"
    make(path, X, y)
    with pytest.raises(ValueError) as info:
        gpumlp.load(path)
    assert str(path) in str(info.value)


def test_wrong_version_message_names_both_versions(tmp_path, binary_data):
    X, y = binary_data
    path = tmp_path / "old.npz"
    make_wrong_version(path, X, y)
    with pytest.raises(ValueError, match=rf"version {gio.VERSION + 1}.*version {gio.VERSION}"):
        gpumlp.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        gpumlp.load(tmp_path / "absent.npz")


def test_invalid_backend_override_names_the_backend(tmp_path, binary_data):
    X, y = binary_data
    mlp(MLPClassifier).fit(X, y).save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"backend='tpu'"):
        gpumlp.load(tmp_path / "m.npz", backend="tpu")
    assert gpumlp.load(tmp_path / "m.npz", backend="numpy").network_.backend.name == "numpy"


def test_saving_an_unfitted_model_raises(tmp_path):
    with pytest.raises(AttributeError, match="not fitted"):
        MLPClassifier().save(tmp_path / "m.npz")
    with pytest.raises(AttributeError, match="not fitted"):
        MLPRegressor().save(tmp_path / "r.npz")
    with pytest.raises(TypeError, match="fitted"):
        Perceptron().save(tmp_path / "p.npz")
    with pytest.raises(TypeError, match="fitted gpumlp estimator"):
        gio.save(object(), tmp_path / "o.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ files as users expect them
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640, 0o664])
def test_save_keeps_an_existing_files_mode(tmp_path, binary_data, umask_022, mode):
    X, y = binary_data
    path = tmp_path / "m.npz"
    path.write_bytes(b"old content")
    os.chmod(path, mode)
    mlp(MLPClassifier).fit(X, y).save(path)
    assert os.stat(path).st_mode & 0o7777 == mode
    assert gpumlp.load(path).n_features_in_ == X.shape[1]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_umask_default_not_0600(tmp_path, binary_data, umask):
    X, y = binary_data
    model = mlp(MLPClassifier).fit(X, y)
    old = os.umask(umask)
    try:
        model.save(tmp_path / "new.npz")
        with open(tmp_path / "plain", "wb"):  # what open() gives, for comparison
            pass
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new.npz").st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(tmp_path / "new.npz").st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_save_writes_through_a_symlink_and_keeps_it(tmp_path, binary_data, umask_022):
    X, y = binary_data
    store = tmp_path / "store"
    store.mkdir()
    target = store / "model-v1.npz"
    mlp(MLPClassifier).fit(X, y).save(target)
    os.chmod(target, 0o640)
    link = tmp_path / "current.npz"
    os.symlink(os.path.relpath(target, tmp_path), link)  # relative, as deployments do
    second = mlp(MLPClassifier, random_state=1).fit(X, y)
    second.save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, tmp_path)
    assert os.stat(target).st_mode & 0o777 == 0o640
    np.testing.assert_array_equal(gpumlp.load(target).predict_proba(X), second.predict_proba(X))
    assert sorted(os.listdir(tmp_path)) == ["current.npz", "store"]
    assert os.listdir(store) == ["model-v1.npz"]  # no temporary file left beside the target


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_save_through_a_chain_of_links_and_a_dangling_link(tmp_path, binary_data):
    X, y = binary_data
    model = mlp(MLPClassifier).fit(X, y)
    final = tmp_path / "final.npz"
    os.symlink(final, tmp_path / "middle.npz")  # dangling until the save
    os.symlink(tmp_path / "middle.npz", tmp_path / "first.npz")
    model.save(tmp_path / "first.npz")
    assert (tmp_path / "first.npz").is_symlink() and (tmp_path / "middle.npz").is_symlink()
    assert final.is_file() and not final.is_symlink()
    np.testing.assert_array_equal(gpumlp.load(final).predict(X), model.predict(X))


def test_failed_save_through_a_symlink_leaves_the_target_intact(tmp_path, binary_data,
                                                              monkeypatch):
    if not hasattr(os, "symlink"):
        pytest.skip("symbolic links")
    X, y = binary_data
    target = tmp_path / "target.npz"
    mlp(MLPClassifier).fit(X, y).save(target)
    before = target.read_bytes()
    os.symlink(target, tmp_path / "link.npz")

    def failing_savez(file, *args, **kwargs):
        file.write(b"PK half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        mlp(MLPClassifier, random_state=2).fit(X, y).save(tmp_path / "link.npz")
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "target.npz"]


@pytest.mark.parametrize("cls", [MLPClassifier, Perceptron])
@pytest.mark.parametrize("labels", [["ant", "bee", "cat"], ["no", "yes"], [3, 7, 11]],
                         ids=["str3", "str2", "int3"])
def test_object_dtype_labels_round_trip(tmp_path, multiclass_data, cls, labels):
    """Labels from a pandas column arrive as an object array; they save without pickle and
    come back as the same object array."""
    X, y = multiclass_data
    y_obj = np.empty(len(y), dtype=object)
    y_obj[:] = [labels[i % len(labels)] for i in y]
    model = (Perceptron(random_state=0, max_iter=5) if cls is Perceptron
             else mlp(MLPClassifier)).fit(X, y_obj)
    assert model.classes_.dtype == object
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        assert archive["classes"].dtype.kind in "Ui"  # fixed width on disk, no pickle
    loaded = gpumlp.load(tmp_path / "m.npz")
    assert loaded.classes_.dtype == object
    assert loaded.classes_.tolist() == model.classes_.tolist()
    assert [type(v) for v in loaded.classes_] == [type(v) for v in model.classes_.tolist()]
    predicted = loaded.predict(X)
    np.testing.assert_array_equal(predicted, model.predict(X))
    assert predicted.dtype == object


def test_object_labels_of_mixed_types_are_refused(tmp_path, binary_data):
    X, y = binary_data
    model = mlp(MLPClassifier).fit(X, y)
    model.classes_ = np.array([0, "one"], dtype=object)
    with pytest.raises(TypeError, match=r"classes_ of dtype object holding int, str.*all str "
                                        r"or all int"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


# -------------------------------------------------- files written by format version 1
V1 = os.path.join(os.path.dirname(__file__), "data", "model_v1")


@pytest.mark.parametrize("name", ["classifier_str", "classifier_binary_float64",
                                  "classifier_multilabel", "regressor_2d", "perceptron"])
def test_version_1_files_from_earlier_releases_still_load(name):
    """Files written by gpumlp 4abf1b8 (format version 1) load and predict as they did."""
    with np.load(os.path.join(V1, "expected_outputs.npz"), allow_pickle=False) as expected:
        X = expected["X"]
        model = gpumlp.load(os.path.join(V1, f"{name}.npz"))
        np.testing.assert_array_equal(model.predict(X), expected[f"{name}__predict"])
        if f"{name}__proba" in expected:
            np.testing.assert_array_equal(model.predict_proba(X), expected[f"{name}__proba"])


# ------------------------------------------------------------------- no import cycle
def test_io_does_not_import_the_estimators():
    """io knows the estimators by registered name only: neither it nor the registry imports
    estimators or perceptron, at module level or inside a function."""
    import ast

    for module in (gio, gpumlp.model_registry):
        tree = ast.parse(open(module.__file__).read())
        imported = {node.module or "" for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert not {m for m in imported if m.endswith(("estimators", "perceptron"))}, module


def _gpumlp_imports(path):
    """The gpumlp modules a source file imports (module level or inside functions)."""
    import ast

    package = os.path.dirname(gpumlp.__file__)
    relative = os.path.relpath(path, os.path.dirname(package))[:-3].replace(os.sep, ".")
    current = relative[: -len(".__init__")] if relative.endswith(".__init__") else relative
    base = current if path.endswith("__init__.py") else current.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gpumlp")}
        elif isinstance(node, ast.ImportFrom):
            anchor = base
            for _ in range(node.level - 1):
                anchor = anchor.rpartition(".")[0]
            module = (f"{anchor}.{node.module}" if node.module else anchor) if node.level \
                else node.module or ""
            if module.startswith("gpumlp"):
                found.add(module)
                # "from . import x" / "from .pkg import mod" may name submodules
                found |= {f"{module}.{a.name}" for a in node.names}
    return found


def test_io_never_reaches_the_estimator_modules():
    """Follow every import (top-level and lazy) from gpumlp.io through the package: none
    leads to gpumlp.estimators or gpumlp.perceptron, so no cycle through io can exist."""
    package = os.path.dirname(gpumlp.__file__)
    root = os.path.dirname(package)

    def source(module):
        stem = os.path.join(root, *module.split("."))
        for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.exists(candidate):
                return candidate
        return None  # a name imported from a module, not a module

    seen, todo = set(), ["gpumlp.io"]
    while todo:
        module = todo.pop()
        if module in seen or module == "gpumlp":  # the package __init__ imports everything
            continue
        seen.add(module)
        path = source(module)
        if path is not None:
            todo.extend(_gpumlp_imports(path))
    assert "gpumlp.model_registry" in seen and "gpumlp.atomic" in seen
    assert not seen & {"gpumlp.estimators", "gpumlp.perceptron"}, sorted(seen)


def test_import_gpumlp_io_in_a_fresh_interpreter():
    import subprocess
    import sys

    code = ("import gpumlp.io, gpumlp.model_registry as r; "
            "print(sorted(r.registered_models()))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(gpumlp.__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    # each estimator registered itself; io imported none of them
    assert "['MLPClassifier', 'MLPRegressor', 'Perceptron']" in result.stdout


def test_registry_refuses_a_second_class_under_a_taken_name():
    from gpumlp.model_registry import model_class, register_model

    class MLPClassifier:  # noqa: F811 - same name, different class
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_model(MLPClassifier)
    assert model_class("MLPClassifier") is gpumlp.MLPClassifier
    with pytest.raises(ValueError, match=r"estimator='Nope'.*allowed: MLPClassifier"):
        model_class("Nope")


def test_unregistered_subclass_cannot_be_saved(tmp_path, binary_data):
    class Mine(MLPClassifier):
        pass

    X, y = binary_data
    model = Mine(hidden_layer_sizes=(3,), max_iter=2, backend="numpy").fit(X, y)
    with pytest.raises(TypeError, match="fitted gpumlp estimator; got Mine"):
        gio.save(model, tmp_path / "m.npz")
