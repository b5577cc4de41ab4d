"""Writes that cannot lose data: a zarr store is written beside its destination and swapped in when complete.

Everything a write keeps next to ``NAME`` is a hidden sibling named after that store, so two stores in one
folder never touch each other's files:

``.NAME.writing-TOKEN/``
    One write's scratch folder: ``lock`` (locked while its writer runs, so a concurrent write never deletes
    it), ``store/`` (the new store) and, during a swap without an atomic exchange, ``journal.json``.
``.NAME.replaced-TOKEN/``
    The previous store, moved aside during a journalled swap.

The swap is one atomic ``renameat2(RENAME_EXCHANGE)`` where the OS and file system have it (Linux, local file
systems), so a kill at any moment leaves the old or the new store at ``NAME``. Elsewhere it is two renames with
a journal; a kill between them leaves ``NAME`` missing until :func:`recover` (which every :func:`write` to the
path runs first) puts the previous store back.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import platform
import re
import shutil
import socket
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad

from .._core.backing import check_backing_files

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
# renameat2 system call numbers, for a libc older than glibc 2.28 (no renameat2 wrapper)
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276,
                  "ppc64le": 357, "ppc64": 357, "s390x": 347, "i386": 353, "i686": 353, "armv7l": 382}  # fmt: skip
# errors meaning "this OS or file system has no such rename": fall back, they say nothing about the files
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_STORE_MARKERS = ("zarr.json", ".zgroup", ".zattrs")
_JOURNAL = "journal.json"
_LOCK = "lock"
_NEW = "store"

try:  # POSIX advisory locks: released by the kernel when the writer dies, however it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------------------------
# file-system steps (one function each, so the crash tests can stop the process before or after any of them)


@functools.cache
def _renameat2_call() -> Callable[..., int] | None:
    """libc's ``renameat2`` (or the raw system call); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no libc to load
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    nr, syscall = _SYS_RENAMEAT2.get(platform.machine()), getattr(libc, "syscall", None)  # pragma: no cover
    if nr is None or syscall is None:  # pragma: no cover
        return None
    syscall.restype = ctypes.c_long  # pragma: no cover
    return lambda *args: syscall(ctypes.c_long(nr), *args)  # pragma: no cover


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the OS or file system does not offer it (the caller falls back)."""
    call = _renameat2_call()
    if call is None:
        return False
    a, b = os.fsencode(src), os.fsencode(dst)
    if call(ctypes.c_int(_AT_FDCWD), a, ctypes.c_int(_AT_FDCWD), b, ctypes.c_uint(flags)) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing folders in one atomic step; False where that is not available."""
    return _rename2(a, b, _RENAME_EXCHANGE)


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, never replacing anything at ``dst`` (``os.rename`` would replace an empty folder)."""
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_journal(scratch: Path, record: dict[str, Any]) -> None:
    """Write the journal whole or not at all (a temporary file renamed), durably, before the first rename."""
    part = scratch / f"{_JOURNAL}.part"
    with open(part, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, scratch / _JOURNAL)
    _fsync_dir(scratch)


def _write_store(sdata: Any, target: Path, consolidate: bool, kwargs: dict[str, Any]) -> None:
    """``sdata.write`` to ``target``, then consolidate ``target``'s metadata.

    spatialdata 0.7 consolidates ``sdata.path`` rather than the store it wrote when ``update_sdata_path=False``:
    that fails once the bound store is deleted and otherwise rewrites metadata in the user's other store.
    """
    sdata.write(target, overwrite=False, update_sdata_path=False, consolidate_metadata=False, **kwargs)
    if consolidate:
        import zarr

        group = zarr.open_group(target, mode="r+", use_consolidated=False)
        with warnings.catch_warnings():  # parquet points are not zarr; spatialdata silences the same warning
            warnings.filterwarnings("ignore", category=getattr(zarr.errors, "ZarrUserWarning", UserWarning))
            zarr.consolidate_metadata(group.store)
        group.store.close()


# ---------------------------------------------------------------------------------------------------------------
# ownership of a scratch folder


def _hold_lock(scratch: Path) -> int:
    """Create and lock ``scratch/lock`` for the lifetime of this write; returns the open descriptor."""
    fd = os.open(scratch / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without locks: _owner_alive falls back to the pid written below
            pass
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    return fd


def _release(fd: int | None) -> None:
    """Close (and so unlock) the lock file; before its folder is removed, as Windows cannot remove an open file."""
    if fd is not None:
        os.close(fd)


def _owner_alive(scratch: Path) -> bool:
    """Whether the write that owns ``scratch`` is still running (its folders must then be left alone)."""
    lock = scratch / _LOCK
    if fcntl is None:  # pragma: no cover - Windows: an open file cannot be removed
        try:
            os.remove(lock)
        except FileNotFoundError:
            return False
        except PermissionError:
            return True
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)  # flock needs no write access: folders of other users are probed too
    except FileNotFoundError:  # killed before it locked, or written by an older nichekd: nobody owns it
        return False
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # no locks on this file system: is the recorded process still there?
        try:
            owner = json.loads(os.read(fd, 4096) or b"{}")
        except ValueError:
            return False
        if owner.get("host") != socket.gethostname():
            return True  # another machine's write: cannot tell, leave it
        try:
            os.kill(int(owner["pid"]), 0)
        except (KeyError, ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True
    finally:
        os.close(fd)  # releases the probe's lock


# ---------------------------------------------------------------------------------------------------------------
# recovery


def _siblings(path: Path) -> dict[str, dict[str, Path]]:
    """This store's own scratch and replaced folders, by kind and token (nothing else in the folder)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(writing|replaced)-([0-9a-f]{{8}})")
    found: dict[str, dict[str, Path]] = {"writing": {}, "replaced": {}}
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return found
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir(follow_symlinks=False):
            found[m.group(1)][m.group(2)] = Path(path.parent, entry.name)
    return found


def _is_zarr_store(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _STORE_MARKERS)


def _undo_swap(path: Path, scratch: Path, old: Path) -> str | None:
    """Finish a journalled swap that did not complete: the previous store goes back to ``path`` (the write that was
    interrupted never returned, so its store is discarded), or, if the swap had completed, the previous store is
    deleted. Returns what was repaired, if anything."""
    new, repaired = scratch / _NEW, None
    if not os.path.lexists(path):
        if old.is_dir():
            _move(old, path)
            repaired = f"put the previous store back at {path} (from {old.name})"
        elif new.is_dir():
            _move(new, path)
            repaired = f"moved the new store to {path} (from {scratch.name})"
    elif old.is_dir():
        if new.is_dir():
            raise RuntimeError(
                f"An interrupted nk.io.write left {path}, its previous store {old} and a new store {new}, and "
                f"something else has since been placed at {path}. Nothing was changed: keep the store you want "
                "at the path and remove the others yourself."
            )
        _remove_tree(old)  # the swap had completed: this is the replaced store
    _fsync_dir(path.parent)
    _remove_tree(scratch)
    return repaired


def recover(path: str | Path) -> list[str]:
    """Repair what killed or interrupted :func:`write` calls left at ``path``; :func:`write` runs this first.

    A write swaps its new store in with one atomic exchange where the OS offers one (Linux, local file
    systems), so a killed write only leaves scratch folders behind. Where two renames and a journal are used
    instead, a write killed between them leaves nothing at ``path``: the previous store is put back. Scratch
    folders of writes that are still running are left alone, and no file but this store's own hidden
    ``.NAME.writing-*`` and ``.NAME.replaced-*`` siblings is ever touched.

    Parameters
    ----------
    path
        The zarr store a write was interrupted on (e.g. ``"tissue.zarr"``).

    Returns
    -------
    What was done, one sentence each (empty if there was nothing to repair). Putting a store back also warns.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist and no interrupted write left anything beside it (a mistyped path).
    ValueError
        ``path`` is a file, not a store.

    Examples
    --------
    >>> import nichekd as nk
    >>> nk.io.recover("tissue.zarr")  # doctest: +SKIP
    ['put the previous store back at tissue.zarr (from .tissue.zarr.replaced-3f2a9c1d)']
    """
    path = _as_path(path, "nk.io.recover")
    if not path.name or path.name in (".", ".."):
        raise ValueError(f"{str(path)!r} does not name a zarr store; pass e.g. 'tissue.zarr'.")
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(
            f"{path} is a file, not a zarr store: nk.io.recover repairs the stores nk.io.write writes, and "
            "changed nothing. Check the path."
        )
    found = _siblings(path)
    if not os.path.lexists(path) and not any(found.values()):
        where = path.parent if path.parent.is_dir() else f"{path.parent}, which does not exist either"
        raise FileNotFoundError(
            f"{path} does not exist, and no interrupted nk.io.write left anything beside it (no "
            f".{path.name}.writing-* or .{path.name}.replaced-* folder in {where}): there is nothing to "
            "recover. Check the path."
        )
    return _recover(path, found)


def _recover(path: Path, found: dict[str, dict[str, Path]] | None = None) -> list[str]:
    """:func:`recover` without its checks of the path (:func:`write` runs it on paths that do not exist yet)."""
    found = _siblings(path) if found is None else found
    writing, replaced = found["writing"], found["replaced"]
    live = {token for token, scratch in writing.items() if _owner_alive(scratch)}
    done: list[str] = []
    repairs: list[str] = []
    # 1. journalled swaps whose writer died
    for token, scratch in sorted(writing.items()):
        if token in live or not (scratch / _JOURNAL).is_file():
            continue
        old = path.with_name(f".{path.name}.replaced-{token}")
        repaired = _undo_swap(path, scratch, old)
        repairs += [repaired] if repaired else []
        done.append(repaired or f"finished an interrupted write's clean-up ({scratch.name})")
        writing.pop(token)
        replaced.pop(token, None)
    # 2. replaced stores without a journal: left by the two-rename writer of nichekd before the journal
    orphans = {token: old for token, old in replaced.items() if token not in live}
    if orphans and not os.path.lexists(path):
        stores = [old for old in orphans.values() if _is_zarr_store(old)]
        if len(stores) > 1:
            raise RuntimeError(
                f"{path} is missing and interrupted writes left {len(stores)} previous stores beside it "
                f"({', '.join(sorted(p.name for p in stores))}). Nothing was changed: rename "
                f"the one you want to {path.name} and remove the others yourself."
            )
        for store in stores:
            _move(store, path)
            repairs.append(f"put the previous store back at {path} (from {store.name})")
            done.append(repairs[-1])
        orphans = {t: p for t, p in orphans.items() if p not in stores}
    # the rest were replaced by the store at path, or are what a killed removal left (no zarr.json)
    for old in orphans.values():
        _remove_tree(old)
        done.append(f"removed the replaced store {old.name}")
    # 3. scratch folders of killed writes (never swapped in)
    for token, scratch in sorted(writing.items()):
        if token not in live:
            _remove_tree(scratch)
            done.append(f"removed the unfinished write {scratch.name}")
    if repairs:
        warnings.warn(
            f"An earlier nk.io.write to {path} was interrupted mid-swap; " + "; ".join(repairs) + ".",
            UserWarning,
            stacklevel=3,
        )
    return done


# ---------------------------------------------------------------------------------------------------------------
# write


def _check_backing_files(sdata: Any) -> None:
    """Lazily read elements whose files were deleted cannot be written: say so before anything is written."""
    check_backing_files(sdata, "Elements of this SpatialData object are", "so they cannot be written")


def _as_path(path: Any, caller: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or a TypeError naming the argument and the type it takes."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{caller}: path must be a str or os.PathLike naming a zarr store (e.g. 'tissue.zarr'), got "
            f"{type(path).__name__} {path!r}."
        )
    return Path(path)


def _check_sdata(sdata: Any) -> None:
    from spatialdata import SpatialData

    if isinstance(sdata, SpatialData):
        return
    if isinstance(sdata, ad.AnnData):
        raise TypeError(
            "nk.io.write writes a SpatialData object, got an AnnData (a table alone). Write a table with "
            "adata.write_zarr(path) or adata.write_h5ad(path), or wrap it in a SpatialData first: "
            "nk.io.write(spatialdata.SpatialData(tables={'table': adata}), path)."
        )
    raise TypeError(f"nk.io.write writes a SpatialData object, got {type(sdata).__name__}.")


def _swap(new: Path, path: Path, scratch: Path, old: Path) -> None:
    """Put ``new`` at ``path`` in place of the store there; the previous store ends up inside ``scratch`` or at
    ``old``, both deleted by the caller."""
    if _exchange(new, path):  # one atomic step: path always holds the old or the new store
        _fsync_dir(path.parent)
        return
    record = {"store": path.name, "old": old.name, "new": f"{scratch.name}/{_NEW}", "pid": os.getpid()}
    _write_journal(scratch, record)  # from here on a killed write is undone by recover()
    _move(path, old)
    _move(new, path)
    _fsync_dir(path.parent)
    _remove_tree(old)


def write(sdata: Any, path: str | Path, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Write a SpatialData object to a zarr store without ever leaving a half-written or lost store.

    The object is written to a hidden scratch sibling of ``path`` (same folder, so the final move is a rename
    on one file system). Only when that write has finished is it swapped in: with one atomic exchange of the
    two folders where the OS has one (Linux), so that even a killed process leaves the old or the new store at
    ``path``; elsewhere with two renames and a journal that the next write (or :func:`recover`) uses to put
    the previous store back if the process died between them. If anything fails or is interrupted (an
    unwritable ``uns`` entry, a full disk, Ctrl-C) the scratch store is removed and the previous store at
    ``path`` is left as it was, readable. Scratch folders left by killed writes to ``path`` are removed by the
    next write. ``spatialdata``'s own ``write(overwrite=True)`` deletes the old store first.

    Parameters
    ----------
    sdata
        The :class:`~spatialdata.SpatialData` object (a table alone: ``adata.write_zarr`` or
        ``adata.write_h5ad``, or wrap it in a SpatialData).
    path
        Destination zarr store (a folder, e.g. ``"tissue.zarr"``; a ``str`` or :class:`os.PathLike`).
    overwrite
        Replace an existing store at ``path`` (atomically, as above). Without it an existing path is refused.
        A file, or a folder that is not a zarr store (no ``zarr.json``, ``.zgroup`` or ``.zattrs`` at its top
        level), is never replaced, and the message says so whatever ``overwrite`` is; an empty folder is
        written into with ``overwrite=True``.
    **kwargs
        Passed to :meth:`spatialdata.SpatialData.write` (e.g. ``consolidate_metadata``).

    Returns
    -------
    The path written. ``sdata.path`` is set to it, as ``SpatialData.write`` does.

    Examples
    --------
    >>> import nichekd as nk
    >>> sdata = nk.datasets.synthetic_tissue(n_cells=500, random_state=0)  # doctest: +SKIP
    >>> nk.io.write(sdata, "tissue.zarr", overwrite=True)  # doctest: +SKIP
    """
    _check_sdata(sdata)
    path = _as_path(path, "nk.io.write")
    for key in ("overwrite", "update_sdata_path", "file_path"):
        if key in kwargs:
            raise TypeError(f"nk.io.write sets {key!r} itself; do not pass it.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder {path.parent} of {path} does not exist; create it first.")
    _recover(path)  # an earlier killed write may have left path missing or scratch folders behind
    if path.is_symlink():
        raise ValueError(
            f"{path} is a symbolic link (to {os.readlink(path)}); write to its target or remove the link."
        )
    # what is at the path decides the message, with or without overwrite: a file or a folder that is not a zarr
    # store is never replaced, so overwrite=True is offered only where it would work
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{path} exists and is a file, not a zarr store, so nk.io.write does not replace it (not even with "
            "overwrite=True) and it was not changed. Choose another path, or remove the file yourself."
        )
    if path.exists() and not _is_zarr_store(path) and any(path.iterdir()):
        raise ValueError(
            f"{path} is a folder but not a zarr store (no zarr.json, .zgroup or .zattrs in it), so "
            "nk.io.write does not replace it (not even with overwrite=True) and nothing in it was changed. "
            "Choose another path, or remove the folder yourself if you no longer need what is in it."
        )
    if path.exists() and not overwrite:
        if not _is_zarr_store(path):
            raise FileExistsError(
                f"{path} exists as an empty folder; pass overwrite=True to write the store into it (nothing "
                "is lost), or choose another path."
            )
        raise FileExistsError(
            f"{path} exists (a zarr store); pass overwrite=True to replace it (the replacement is atomic)."
        )
    _check_backing_files(sdata)
    consolidate = bool(kwargs.pop("consolidate_metadata", True))
    token = uuid.uuid4().hex[:8]
    scratch = path.with_name(f".{path.name}.writing-{token}")
    old = path.with_name(f".{path.name}.replaced-{token}")
    scratch.mkdir()
    lock = None
    try:
        lock = _hold_lock(scratch)
        _write_store(sdata, scratch / _NEW, consolidate, kwargs)
        if os.path.lexists(path):
            _swap(scratch / _NEW, path, scratch, old)
        else:
            _move(scratch / _NEW, path)
            _fsync_dir(path.parent)
    except BaseException:  # Ctrl-C included: the previous store goes back, nothing half-written stays behind
        if (scratch / _JOURNAL).is_file():
            try:
                _undo_swap(path, scratch, old)  # still locked: a concurrent write leaves it to us
            except Exception:  # the journal stays for the next write / recover(); raise the first error
                pass
        else:
            _release(lock)
            lock = None
            _remove_tree(scratch)
        raise
    finally:
        _release(lock)
    _remove_tree(scratch)  # after an exchange it holds the previous store
    sdata.path = path
    return path
