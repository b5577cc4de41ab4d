"""``nk.io.write(overwrite=True)`` never loses or misreads the user's data: a folder that is not a zarr store is
never replaced, the swap is atomic (or journalled and recovered), killed writes leave a readable store and their
scratch folders are cleaned by the next write, and an object bound to a deleted store still writes.

The kill tests run every scenario in one driver process that imports nichekd once and forks a child per write
(no threads exist before the fork), so a SIGKILL at each step costs one small write.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import spatialdata as sd

import nichekd as nk
from nichekd.io import _write

NAME = "tissue.zarr"


def _tissue(marker: str, *, image: bool = False):
    sdata = nk.datasets.synthetic_tissue(n_cells=60, n_niches=2, n_genes=20, image=image, progress=False)
    sdata.tables["table"].uns["marker"] = marker
    return sdata


def _marker(store: Path) -> str:
    return str(sd.read_zarr(store).tables["table"].uns["marker"])


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its bytes, mode and modification time: equal means untouched."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (
            p.read_bytes() if p.is_file() else None,
            st.st_mode,
            st.st_mtime_ns,
        )
    return out


def _exchange_works(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return _write._exchange(a, b)
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


def _no_exchange(monkeypatch) -> None:
    """Make renameat2 answer EINVAL, as a file system without RENAME_EXCHANGE does."""

    def einval(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(_write, "_renameat2_call", lambda: einval)


def _spy(monkeypatch, name: str) -> list:
    calls: list = []
    real = getattr(_write, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(_write, name, spy)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# 1. a folder that is not a zarr store is never replaced


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("hidden_only", [False, True])
def test_overwrite_refuses_a_folder_that_is_not_a_zarr_store(tmp_path, hidden_only, overwrite):
    """Without overwrite the message said "exists; pass overwrite=True to replace it", and overwrite=True then
    refused: both say at once that the folder is no store and is never replaced."""
    folder = tmp_path / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / ".notes").write_text("my notes")
    if not hidden_only:
        (folder / "figure.png").write_bytes(bytes(range(256)))
        (folder / "sub" / "table.csv").write_text("a,b\n1,2\n")
    before = _snapshot(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"results is a folder but not a zarr store.*not even with overwrite=True.*another path",
    ):
        nk.io.write(_tissue("new"), folder, overwrite=overwrite)
    assert _snapshot(tmp_path) == before  # byte-identical, and no scratch folder left beside it


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_at_the_path_is_named_as_no_store_with_or_without_overwrite(tmp_path, overwrite):
    (tmp_path / "file.zarr").write_text("precious")
    before = _snapshot(tmp_path)
    with pytest.raises(
        ValueError, match=r"is a file, not a zarr store.*not even with overwrite=True.*another path"
    ):
        nk.io.write(_tissue("new"), tmp_path / "file.zarr", overwrite=overwrite)
    assert _snapshot(tmp_path) == before


def test_an_empty_folder_is_named_and_overwrite_offered(tmp_path):
    (tmp_path / NAME).mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(
        FileExistsError, match=r"empty folder; pass overwrite=True to write the store into it"
    ):
        nk.io.write(_tissue("new"), tmp_path / NAME)
    assert _snapshot(tmp_path) == before
    nk.io.write(_tissue("new"), tmp_path / NAME, overwrite=True)
    assert _marker(tmp_path / NAME) == "new"


def test_overwrite_replaces_an_empty_folder_and_keeps_the_old_errors(tmp_path):
    empty = tmp_path / NAME
    empty.mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        nk.io.write(_tissue("new"), empty)
    nk.io.write(_tissue("new"), empty, overwrite=True)  # nothing to lose
    assert _marker(empty) == "new"
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a zarr store"):
        nk.io.write(_tissue("new"), tmp_path / "a.txt", overwrite=True)
    (tmp_path / "link.zarr").symlink_to(empty)
    with pytest.raises(ValueError, match="symbolic link"):
        nk.io.write(_tissue("new"), tmp_path / "link.zarr", overwrite=True)
    assert _marker(empty) == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.txt",
        "link.zarr",
        NAME,
    ]


# ---------------------------------------------------------------------------------------------------------------
# 2. the swap: one atomic exchange, or a journal where there is none


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_overwrite_is_one_atomic_exchange_on_linux(tmp_path, monkeypatch):
    if not _exchange_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no RENAME_EXCHANGE")
    store = tmp_path / NAME
    nk.io.write(_tissue("old"), store)
    exchanged, journals = _spy(monkeypatch, "_exchange"), _spy(monkeypatch, "_write_journal")
    sdata = _tissue("new")
    assert nk.io.write(sdata, store, overwrite=True) == store and sdata.path == store
    assert exchanged == [True] and journals == []
    assert _marker(store) == "new" and [p.name for p in tmp_path.iterdir()] == [NAME]


def test_overwrite_without_exchange_uses_the_journal(tmp_path, monkeypatch):
    store = tmp_path / NAME
    nk.io.write(_tissue("old"), store)
    _no_exchange(monkeypatch)
    exchanged, journals = _spy(monkeypatch, "_exchange"), _spy(monkeypatch, "_write_journal")
    nk.io.write(_tissue("new"), store, overwrite=True)
    assert exchanged == [False] and len(journals) == 1
    assert _marker(store) == "new" and [p.name for p in tmp_path.iterdir()] == [NAME]


def test_failed_second_rename_puts_the_previous_store_back(tmp_path, monkeypatch):
    store = tmp_path / NAME
    nk.io.write(_tissue("old"), store)
    _no_exchange(monkeypatch)
    real, calls = _write._move, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # path -> replaced worked, new -> path fails (e.g. a quota)
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        real(src, dst)

    monkeypatch.setattr(_write, "_move", second_fails)
    with pytest.raises(OSError, match="quota"):
        nk.io.write(_tissue("new"), store, overwrite=True)
    assert _marker(store) == "old" and [p.name for p in tmp_path.iterdir()] == [NAME]


def test_recover_puts_back_what_a_journalled_swap_killed_between_renames_left(tmp_path, monkeypatch):
    store = tmp_path / NAME
    nk.io.write(_tissue("old"), store)
    _no_exchange(monkeypatch)
    real, calls = _write._move, []

    def killed_after_first(src, dst):
        real(src, dst)
        calls.append(dst)
        raise SystemExit("killed")  # stands for the kill: the except branch must not run

    def no_clean_up(*args):  # a killed process runs no except branch
        raise RuntimeError("killed")

    monkeypatch.setattr(_write, "_move", killed_after_first)
    monkeypatch.setattr(_write, "_undo_swap", no_clean_up)
    with pytest.raises(SystemExit):
        nk.io.write(_tissue("new"), store, overwrite=True)
    monkeypatch.undo()
    assert not store.exists()  # the state a kill between the two renames leaves
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {f".{NAME}.writing", f".{NAME}.replaced"}
    with pytest.warns(UserWarning, match="interrupted mid-swap; put the previous store back"):
        done = nk.io.recover(store)
    assert any("put the previous store back" in d for d in done)
    assert _marker(store) == "old" and [p.name for p in tmp_path.iterdir()] == [NAME]
    assert nk.io.recover(store) == []


def test_write_without_overwrite_first_restores_an_interrupted_swap(tmp_path):
    # the layout nichekd's earlier two-rename writer left when killed between its renames
    store = tmp_path / NAME
    nk.io.write(_tissue("old"), store)
    store.rename(tmp_path / f".{NAME}.replaced-0123abcd")
    nk.io.write(_tissue("new"), tmp_path / "other.zarr")
    (tmp_path / "other.zarr").rename(tmp_path / f".{NAME}.writing-0123abcd")
    with pytest.warns(UserWarning, match="put the previous store back"):
        with pytest.raises(FileExistsError, match="overwrite=True"):  # the previous store is back: refused
            nk.io.write(_tissue("new"), store)
    assert _marker(store) == "old" and [p.name for p in tmp_path.iterdir()] == [NAME]


# ---------------------------------------------------------------------------------------------------------------
# 3. scratch folders of killed writes are cleaned, and nothing else


def test_stale_scratch_folders_are_cleaned_and_nothing_else(tmp_path):
    store = tmp_path / NAME
    nk.io.write(_tissue("old"), store)
    for stale in (f".{NAME}.writing-0123abcd", f".{NAME}.replaced-89abcdef"):
        (tmp_path / stale / "store").mkdir(parents=True)
        (tmp_path / stale / "store" / "zarr.json").write_text("{}")
    keep = tmp_path / "keep"
    for other in (f".{NAME}.writing-xyz", ".other.zarr.writing-0123abcd", f".{NAME}.writing-0123abcd.bak",
                  f"{NAME}.writing-0123abcd", f".{NAME}.writing-0123ABCD", f".x{NAME}.writing-0123abcd"):  # fmt: skip
        (keep / other).mkdir(parents=True)
        (keep / other / "data").write_text(other)
        shutil.copytree(keep / other, tmp_path / other)
    (tmp_path / f".{NAME}.writing-deadbeef").write_text("a file, not our folder")
    others = {p.name for p in keep.iterdir()} | {f".{NAME}.writing-deadbeef", "keep"}
    shutil.rmtree(keep)
    before = {n: _snapshot(tmp_path / n) if (tmp_path / n).is_dir() else None for n in others - {"keep"}}
    nk.io.write(_tissue("new"), store, overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == (others - {"keep"}) | {NAME}
    assert {n: _snapshot(tmp_path / n) if (tmp_path / n).is_dir() else None for n in before} == before
    assert (tmp_path / f".{NAME}.writing-deadbeef").read_text() == "a file, not our folder"
    assert _marker(store) == "new"


def test_a_running_writes_scratch_folder_is_left_alone(tmp_path):
    store = tmp_path / NAME
    scratch = tmp_path / f".{NAME}.writing-0123abcd"
    scratch.mkdir()
    lock = _write._hold_lock(
        scratch
    )  # another write in progress (flock is per open file: this one conflicts)
    try:
        nk.io.write(_tissue("new"), store)
        assert scratch.is_dir()
    finally:
        os.close(lock)
    nk.io.write(_tissue("newer"), store, overwrite=True)  # its writer has gone: cleaned
    assert [p.name for p in tmp_path.iterdir()] == [NAME] and _marker(store) == "newer"


# ---------------------------------------------------------------------------------------------------------------
# 4. an object bound to a deleted (or another) store


def test_object_bound_to_a_deleted_store_writes_elsewhere(tmp_path):
    sdata = _tissue("first")
    nk.io.write(sdata, tmp_path / "a.zarr")
    shutil.rmtree(tmp_path / "a.zarr")  # sdata.path now names nothing
    assert (
        nk.io.write(sdata, tmp_path / "b.zarr") == tmp_path / "b.zarr" and sdata.path == tmp_path / "b.zarr"
    )
    assert _marker(tmp_path / "b.zarr") == "first"
    assert "consolidated_metadata" in json.loads((tmp_path / "b.zarr" / "zarr.json").read_text())


def test_writing_elsewhere_leaves_the_bound_store_untouched(tmp_path):
    nk.io.write(_tissue("first"), tmp_path / "a.zarr")
    read = sd.read_zarr(tmp_path / "a.zarr")
    before = _snapshot(tmp_path / "a.zarr")
    nk.io.write(read, tmp_path / "b.zarr")  # spatialdata alone would consolidate a.zarr (its sdata.path)
    assert _snapshot(tmp_path / "a.zarr") == before
    assert "consolidated_metadata" in json.loads((tmp_path / "b.zarr" / "zarr.json").read_text())


def test_lazy_elements_whose_files_were_deleted_are_named(tmp_path):
    nk.io.write(_tissue("first", image=True), tmp_path / "a.zarr")
    lazy = sd.read_zarr(tmp_path / "a.zarr")  # the image is read lazily from a.zarr
    shutil.rmtree(tmp_path / "a.zarr")
    with pytest.raises(
        FileNotFoundError, match=r"no longer exist \(.*a\.zarr.*Read or build the object again"
    ):
        nk.io.write(lazy, tmp_path / "b.zarr")
    assert list(tmp_path.iterdir()) == []


def test_wrong_argument_types_are_named(tmp_path):
    sdata = _tissue("new")
    before = _snapshot(tmp_path)
    with pytest.raises(
        TypeError, match=r"writes a SpatialData object, got an AnnData.*write_zarr.*write_h5ad"
    ):
        nk.io.write(sdata.tables["table"], tmp_path / "ad.zarr")
    with pytest.raises(TypeError, match=r"writes a SpatialData object, got dict"):
        nk.io.write({"table": sdata.tables["table"]}, tmp_path / "ad.zarr")
    with pytest.raises(TypeError, match=r"nk.io.write: path must be a str or os.PathLike.*got int 5"):
        nk.io.write(sdata, 5)
    with pytest.raises(TypeError, match=r"nk.io.recover: path must be a str or os.PathLike.*got NoneType"):
        nk.io.recover(None)
    assert _snapshot(tmp_path) == before


def test_recover_names_a_missing_path_and_a_file(tmp_path):
    """nk.io.recover on a mistyped path, or on a plain file, returned [] as if all were well."""
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothere.zarr does not exist.*nothing to recover"):
        nk.io.recover(tmp_path / "nothere.zarr")
    with pytest.raises(FileNotFoundError, match=r"does not exist either"):
        nk.io.recover(tmp_path / "no" / "such.zarr")
    with pytest.raises(ValueError, match=r"notes.txt is a file, not a zarr store.*changed nothing"):
        nk.io.recover(tmp_path / "notes.txt")
    assert _snapshot(tmp_path) == before
    nk.io.write(_tissue("a"), tmp_path / NAME)
    assert nk.io.recover(tmp_path / NAME) == [] and nk.io.recover(tmp_path) == []  # stores, folders: fine
    # a missing path with an interrupted write's leftovers beside it is recovered, as before
    (tmp_path / NAME).rename(tmp_path / f".{NAME}.replaced-0123abcd")
    with pytest.warns(UserWarning, match="put the previous store back"):
        assert nk.io.recover(tmp_path / NAME)
    assert _marker(tmp_path / NAME) == "a"


# ---------------------------------------------------------------------------------------------------------------
# 5. a kill at any point leaves a readable store (old or new), and the next write succeeds and cleans up

DRIVER = textwrap.dedent(
    r"""
    import json, os, shutil, signal, sys, time, traceback
    from pathlib import Path

    import spatialdata as sd

    import nichekd as nk
    from nichekd.io import _write as w

    def tissue(marker):
        s = nk.datasets.synthetic_tissue(n_cells=60, n_niches=2, n_genes=20, image=False, progress=False)
        s.tables["table"].uns["marker"] = marker
        return s

    def arm(target, nth, when):
        owner = sd.SpatialData if target == "_write_element" else w
        real, calls = getattr(owner, target), [0]

        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*args, **kwargs)
            if calls[0] == nth and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(owner, target, hooked)

    def step(store, s, ready):  # in a forked child: one nk.io.write(overwrite=True), maybe killed
        if s["journal"]:
            w._rename2 = lambda *args: False
        sdata = tissue(s["marker"])
        if s.get("kill"):
            arm(*s["kill"])
        os.write(ready, b"x")
        nk.io.write(sdata, store, overwrite=True)

    def job(j):  # in a forked child: the steps of one scenario, each in its own process
        shutil.copytree(j["template"], j["store"])
        outcomes = []
        for s in j["steps"]:
            r, ready = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    step(j["store"], s, ready)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            os.close(ready)
            os.read(r, 1)
            if s.get("kill_after") is not None:
                time.sleep(s["kill_after"])
                os.kill(pid, signal.SIGKILL)  # a zombie if it already finished: still harmless
            status = os.waitpid(pid, 0)[1]
            os.close(r)
            outcomes.append("killed" if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status))
        Path(j["outcome"]).write_text(json.dumps(outcomes))

    jobs, running = json.loads(Path(sys.argv[1]).read_text()), []
    for j in jobs:
        if len(running) == int(sys.argv[2]):
            os.waitpid(running.pop(0), 0)
        pid = os.fork()
        if pid == 0:
            try:
                job(j)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        running.append(pid)
    for pid in running:
        os.waitpid(pid, 0)
    """
)

# (mode, kill: target, nth call during the write, before/after; the store expected at the path)
STEPS = [
    ("exchange", ("_write_element", 2, "before"), "old"),
    ("exchange", ("_write_store", 1, "after"), "old"),
    ("exchange", ("_exchange", 1, "before"), "old"),
    ("exchange", ("_exchange", 1, "after"), "new"),
    ("exchange", ("_remove_tree", 1, "before"), "new"),
    ("exchange", ("_remove_tree", 1, "after"), "new"),
    ("journal", ("_write_element", 2, "before"), "old"),
    ("journal", ("_write_store", 1, "after"), "old"),
    ("journal", ("_write_journal", 1, "before"), "old"),
    ("journal", ("_write_journal", 1, "after"), "old"),
    ("journal", ("_move", 1, "before"), "old"),
    ("journal", ("_move", 1, "after"), "old"),  # the path is missing until recovery
    ("journal", ("_move", 2, "before"), "old"),
    ("journal", ("_move", 2, "after"), "new"),
    ("journal", ("_remove_tree", 1, "before"), "new"),
    ("journal", ("_remove_tree", 1, "after"), "new"),
    ("journal", ("_remove_tree", 2, "before"), "new"),
]
# a journalled swap killed between its renames, then the next write killed while it recovers
CHAINED = [("_move", 1, "before"), ("_move", 1, "after"), ("_remove_tree", 1, "before"),
           ("_remove_tree", 1, "after")]  # fmt: skip
_RNG = random.Random(0)
TIMINGS = sorted(_RNG.uniform(0.0, 1.5) for _ in range(5))  # a write takes about 1 s here


def _scenarios() -> dict[str, dict]:
    out = {}
    for mode, kill, expected in STEPS:
        steps = [{"marker": "new", "journal": mode == "journal", "kill": kill}]
        out[f"{mode}-{kill[0]}{kill[1]}-{kill[2]}"] = {"steps": steps, "expected": {expected}}
    for kill in CHAINED:
        first = {"marker": "new", "journal": True, "kill": ("_move", 1, "after")}
        out[f"chained-{kill[0]}{kill[1]}-{kill[2]}"] = {
            "steps": [first, {"marker": "new2", "journal": False, "kill": kill}],
            "expected": {"old"},
        }
    for mode in ("exchange", "journal"):
        for t in TIMINGS:
            steps = [{"marker": "new", "journal": mode == "journal", "kill_after": t}]
            out[f"sigkill-{mode}-{t:.3f}s"] = {"steps": steps, "expected": {"old", "new"}}
    return out


SCENARIOS = _scenarios()


@pytest.fixture(scope="module")
def killed_writes(tmp_path_factory):
    """Run every scenario once (in parallel pairs); returns the scenario folders."""
    root = tmp_path_factory.mktemp("killed")
    template = root / "template.zarr"
    nk.io.write(_tissue("old"), template)
    jobs = []
    for i, (name, scenario) in enumerate(SCENARIOS.items()):
        (root / f"s{i}" / "data").mkdir(parents=True)
        jobs.append({"name": name, "template": str(template), "store": str(root / f"s{i}" / "data" / NAME),
                     "outcome": str(root / f"s{i}" / "outcome.json"), "steps": scenario["steps"]})  # fmt: skip
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root / "jobs.json"), "2"], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {j["name"]: Path(j["store"]) for j in jobs}, proc.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill driver forks")
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_kill_at_any_point_leaves_a_readable_store(killed_writes, name):
    stores, log = killed_writes
    store, scenario = stores[name], SCENARIOS[name]
    outcome_file = store.parent.parent / "outcome.json"
    assert outcome_file.is_file(), log[-3000:]
    outcomes = json.loads(outcome_file.read_text())
    if not name.startswith("sigkill"):
        assert outcomes == ["killed"] * len(scenario["steps"]), log[-3000:]  # every kill point was reached
    journalled = any(s["journal"] for s in scenario["steps"])
    if not journalled or store.exists():  # an exchange always leaves a store: read it as the kill left it
        assert _marker(store) in scenario["expected"]
    else:  # killed between the two renames: the journal is there and recovery puts the store back
        assert any((p / "journal.json").is_file() for p in store.parent.glob(f".{NAME}.writing-*"))
    if journalled:
        with warnings.catch_warnings():  # a repair warns; test_recover_* check the warning itself
            warnings.simplefilter("ignore", UserWarning)
            nk.io.recover(store)
    assert _marker(store) in scenario["expected"]
    nk.io.write(_tissue("final"), store, overwrite=True)
    assert [p.name for p in store.parent.iterdir()] == [NAME]
    assert _marker(store) == "final"


def test_recover_changes_nothing_when_the_state_makes_no_sense(tmp_path):
    # a journalled swap killed between its renames, after which something else was put at the path
    store, scratch = tmp_path / NAME, tmp_path / f".{NAME}.writing-0123abcd"
    nk.io.write(_tissue("other"), store)
    nk.io.write(_tissue("old"), tmp_path / "old.zarr")
    (tmp_path / "old.zarr").rename(tmp_path / f".{NAME}.replaced-0123abcd")
    nk.io.write(_tissue("new"), tmp_path / "new.zarr")
    scratch.mkdir()
    (tmp_path / "new.zarr").rename(scratch / "store")
    (scratch / "journal.json").write_text("{}")
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError, match=r"Nothing was changed: keep the store you want"):
        nk.io.recover(store)
    with pytest.raises(RuntimeError, match=r"Nothing was changed"):
        nk.io.write(_tissue("newer"), store, overwrite=True)
    assert _snapshot(tmp_path) == before
