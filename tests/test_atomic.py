"""Atomic writes: unique temporaries, sets of files replaced together, nothing left behind on failure."""

import os

import pytest

from se4lip_features import atomic


def test_two_writers_of_one_output_never_mix(tmp_path):
    a, b = tmp_path / "x.npy", tmp_path / "x.json"
    with atomic.replacing(a, b) as (ta, tb):
        ta.write_text("first")
        tb.write_text("first")
        with atomic.replacing(a, b) as (ua, ub):  # a second writer finishing in the middle of the first
            assert {ua, ub}.isdisjoint({ta, tb})
            ua.write_text("second")
            ub.write_text("second")
        assert (a.read_text(), b.read_text()) == ("second", "second")
    assert (a.read_text(), b.read_text()) == ("first", "first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.npy"]


def test_failure_leaves_the_targets_and_no_temporary(tmp_path):
    a = tmp_path / "x.npy"
    a.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic.replacing(a) as (tmp,):
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert a.read_text() == "old" and os.listdir(tmp_path) == ["x.npy"]


def test_a_failed_rename_restores_the_set(tmp_path, monkeypatch):
    a, b = tmp_path / "x.npy", tmp_path / "x.json"
    a.write_text("old npy")
    replace = os.replace

    def failing(src, dst):
        if str(dst) == str(b):
            raise OSError(28, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"), atomic.replacing(a, b) as (ta, tb):
        ta.write_text("new npy")
        tb.write_text("new json")
    assert a.read_text() == "old npy" and not b.exists() and os.listdir(tmp_path) == ["x.npy"]


def test_a_signal_just_after_a_rename_restores_the_set(tmp_path, monkeypatch):
    """The rename is done, but the signal lands before the writer has counted it: it is still undone."""
    a, b = tmp_path / "x.npy", tmp_path / "x.json"
    a.write_text("old npy")
    b.write_text("old json")
    replace, calls = os.replace, []

    def interrupted(src, dst):
        replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # only the first rename: the rollback's own renames go through
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic.replacing(a, b) as (ta, tb):
        ta.write_text("new npy")
        tb.write_text("new json")
    assert (a.read_text(), b.read_text()) == ("old npy", "old json")
    assert sorted(os.listdir(tmp_path)) == ["x.json", "x.npy"]


def test_folders_are_swapped_whole(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "meta.json").write_text("old")
    with atomic.replacing(out, folder=True) as (tmp,):
        assert tmp.is_dir() and tmp.name.startswith(".data.") and tmp.name.endswith(".partial")
        (tmp / "meta.json").write_text("new")
    assert [p.name for p in out.iterdir()] == ["meta.json"] and (out / "meta.json").read_text() == "new"
    with pytest.raises(ValueError), atomic.replacing(out, folder=True) as (tmp,):
        (tmp / "meta.json").write_text("newer")
        raise ValueError
    assert (out / "meta.json").read_text() == "new" and os.listdir(tmp_path) == ["data"]


def test_a_link_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    actual = tmp_path / "real" / "report.json"
    actual.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(actual)
    atomic.write_text(link, "new")
    assert link.is_symlink() and actual.read_text() == "new" and link.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "report.json"]  # no temporary beside the link
    with atomic.exclusive(link), pytest.raises(atomic.Busy), atomic.exclusive(actual):  # one output, one lock
        pass
