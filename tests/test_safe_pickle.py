"""Restricted unpickler: AG content loads (numpy 1.x and 2.x pickles, all protocols); anything that
could run code is refused before it runs, with the file and the global named."""

from __future__ import annotations

import copyreg
import os
import pathlib
import pickle
import subprocess

import numpy as np
import pytest

from fremure.data.safe_pickle import UnsafePickleError, safe_load, safe_loads

DATA = pathlib.Path(__file__).resolve().parent / "data"


def _ag_like() -> dict:
    return {
        "001YG.mp4/000089.png": {
            "bbox": np.array([[1.5, 2.5, 30.0, 40.0]], np.float32),
            "bbox_score": np.array([0.9], np.float32),
            "bbox_size": (480, 270),
            "bbox_mode": "xyxy",
            "keypoints": np.arange(51, dtype=np.float32).reshape(1, 17, 3),
        },
        "001YG.mp4/000093.png": {"bbox": np.zeros((0, 4), np.float32), "bbox_size": (480, 270)},
        "objects": [
            {"class": "cup/glass/bottle", "bbox": (1.0, 2.0, 3.5, 4.5), "visible": True,
             "attention_relationship": ["looking_at"], "spatial_relationship": ["in_front_of", "beneath"],
             "contacting_relationship": [], "metadata": {"tag": "001YG.mp4/cup_glass_bottle/000089", "set": "train"}},
            {"class": "floor", "bbox": None, "visible": False, "attention_relationship": None},
        ],
        "scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.float64(2.25), 7, 2.5, None, True],
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "strided": np.arange(10, dtype=np.int32)[::3],
    }


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_ag_content_round_trips_every_protocol(protocol, tmp_path):
    obj = _ag_like()
    path = tmp_path / "person_bbox.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    _assert_same(obj, safe_load(path))


@pytest.mark.parametrize("protocol", [0, 2])
def test_numpy1_module_spelling_is_accepted(protocol):
    # Protocols 0-2 name globals as text, so the numpy 1.x spelling can be produced here.
    data = pickle.dumps(_ag_like(), protocol=protocol)
    legacy = data.replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in legacy
    _assert_same(_ag_like(), safe_loads(legacy))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_numpy1_pickles_load(protocol):
    path = DATA / f"numpy1_person_bbox_protocol{protocol}.pkl"
    assert b"numpy.core" in path.read_bytes()
    loaded = safe_load(path)
    box = loaded["001YG.mp4/000089.png"]["bbox"]
    assert box.dtype == np.float32 and box.shape == (1, 4)
    np.testing.assert_array_equal(box, np.array([[24.3, 11.0, 101.5, 88.2]], np.float32))
    assert loaded["001YG.mp4/000089.png"]["bbox_size"] == (480, 270)
    assert loaded["001YG.mp4/000093.png"]["bbox"].shape == (0, 4)
    assert loaded["001YG.mp4/000093.png"]["keypoints"].shape == (0, 17, 3)
    scalars = loaded["scalars"]
    assert [type(s) for s in scalars] == [np.float32, np.int64, np.bool_, np.float64]
    assert [float(s) for s in scalars] == [1.5, 7.0, 1.0, 2.25]


class _SystemCall:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Popen:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


class _Eval:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("payload", [_SystemCall, _Popen, _Eval])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_is_refused_and_nothing_runs(payload, protocol, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "person_bbox.pkl"
    # The payload sits deep inside otherwise valid AG content.
    obj = _ag_like()
    obj["objects"][0]["metadata"]["tag"] = payload(marker)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message
    assert "refusing to load global" in message
    # Protocols 0-2 write Python 2 module names (e.g. __builtin__.eval), so check the attribute.
    expected = {_SystemCall: ".system'", _Popen: ".Popen'", _Eval: ".eval'"}[payload]
    assert expected in message
    assert not marker.exists()


def test_numpy_object_arrays_are_refused():
    with pytest.raises(UnsafePickleError, match="object dtype"):
        safe_loads(pickle.dumps(np.array([1, "a", None], dtype=object)))


@pytest.mark.parametrize("name", [b"numpy\nload", b"numpy.lib.npyio\nload", b"builtins\ngetattr", b"__builtin__\nset"])
def test_other_globals_are_refused(name):
    data = b"\x80\x02c" + name + b"\n)R."
    with pytest.raises(UnsafePickleError, match=name.split(b"\n")[1].decode()):
        safe_loads(data, source="crafted.pkl")


def test_codecs_encode_only_latin1():
    crafted = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00utf-8\x86R."
    with pytest.raises(UnsafePickleError, match="encoding 'utf-8'"):
        safe_loads(crafted)
    ok = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00latin1\x86R."
    assert safe_loads(ok) == b"abc"


def test_extension_codes_are_refused_even_when_registered(tmp_path):
    marker = tmp_path / "pwned"
    module, name = os.system.__module__, "system"
    code = 0x7FFFFFF0
    data = b"\x80\x02\x84" + code.to_bytes(4, "little") + pickle.dumps(f"touch {marker}", protocol=2)[2:-1] + b"\x85R."
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(data)  # unregistered: the C unpickler refuses the code itself
    copyreg.add_extension(module, name, code)
    try:
        # Warm copyreg's cache the way a trusting pickle.loads elsewhere in the process would.
        copyreg._extension_cache[code] = os.system
        with pytest.raises(UnsafePickleError, match="extension code"):
            safe_loads(data)
    finally:
        copyreg.remove_extension(module, name, code)
    assert not marker.exists()


def test_persistent_ids_are_refused():
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_loads(b"\x80\x02Ppid\n.")


def test_missing_corrupt_and_wrong_type_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pkl"):
        safe_load(tmp_path / "nothere.pkl")
    bad = tmp_path / "garbage.pkl"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="garbage.pkl"):
        safe_load(bad)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps(_ag_like(), protocol=4)[:-40])
    with pytest.raises(pickle.UnpicklingError, match="truncated.pkl"):
        safe_load(truncated)
    with pytest.raises(TypeError, match="bytes"):
        safe_loads("not bytes")  # type: ignore[arg-type]
