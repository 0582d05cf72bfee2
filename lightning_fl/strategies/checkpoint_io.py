"""Checkpoints that survive a kill during the write, and one-line errors for files that cannot be resumed.

:class:`AtomicCheckpointIO` writes to a temporary file in the checkpoint's own directory, flushes and
fsyncs it, renames it over the target (``os.replace`` is atomic on POSIX and Windows) and fsyncs the
directory, so the name always points at a complete checkpoint: the previous one until the rename, the new
one after it. Lightning's own ``_atomic_save`` goes through an fsspec transaction, which for local files
writes to the system temp directory (maybe another file system, so the final move is a copy) and never
fsyncs. Loads default to ``weights_only=True``: our own state is tensors, dicts, lists, strings and numbers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

from lightning_fl.errors import FederatedConfigError

CHECKPOINT_KEY = "lightning_fl"  # the entry our strategies add to Lightning's checkpoint dict


class CheckpointError(FederatedConfigError):
    """A checkpoint cannot be read or does not fit this run; the one-line message names the file."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would have given the file (mkstemp makes it 0600)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an atomic, durable local write and ``weights_only=True`` loads by default.

    Remote paths (``s3://``, ...) keep Lightning's own transaction: object stores publish whole objects only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)  # raises on storage_options
            return
        target = Path(path).absolute()  # fsspec's local paths may be "file://..." strings; Path handles plain ones
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)


def atomic_write(target: Path, write: Callable[[Any], None]) -> None:
    """Write ``target`` through ``write(file)`` so that a crash at any point leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)  # the rename itself survives a power loss
    # Temporary files of writes that were killed (nothing else creates this pattern).
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened; rename durability is the OS's there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_error(path: _PATH, err: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint file that ``torch.load`` could not read."""
    detail = " ".join(str(err).split())
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
    if isinstance(err, pickle.UnpicklingError) and refused:
        # A readable file holding an object that is not plain data (e.g. a hyperparameter's own class).
        return CheckpointError(
            f"checkpoint '{path}' holds an object of type {refused.group(1)}, which loading with "
            "weights_only=True refuses; if you trust the file, resume with trainer.fit(..., weights_only=False)"
        )
    return CheckpointError(
        f"checkpoint '{path}' cannot be read: the file is truncated or corrupt, or not a torch checkpoint "
        f"({type(err).__name__}: {detail.split('. ')[0][:200]})"
    )


def check_model_state(path: _PATH, checkpoint: Mapping[str, Any], module: torch.nn.Module, strict: bool) -> None:
    """Raise one line if ``checkpoint`` is not Lightning's, or its weights are another model's."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"checkpoint '{path}' is not a Lightning checkpoint: it has no 'state_dict'")
    saved = checkpoint["state_dict"]
    current = module.state_dict()
    problems = []
    if strict:
        missing = [k for k in current if k not in saved]
        unexpected = [k for k in saved if k not in current]
        if missing:
            problems.append(f"{len(missing)} key(s) of the model missing from the file ({_few(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} key(s) the model does not have ({_few(unexpected)})")
    shapes = [
        f"{k}: {tuple(saved[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in current.items()
        if isinstance(saved.get(k), torch.Tensor) and isinstance(v, torch.Tensor) and saved[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) ({_few(shapes)})")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' holds another model: {'; '.join(problems)}")


def check_strategy_entry(path: _PATH, checkpoint: Mapping[str, Any], strategy_name: str) -> dict[str, Any]:
    """The checkpoint's ``lightning_fl`` entry, if it was written by a strategy of the same kind; else one line."""
    entry = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(entry, Mapping):
        raise CheckpointError(
            f"checkpoint '{path}' was not written by strategy='{strategy_name}' (it has no '{CHECKPOINT_KEY}' "
            "entry: another strategy's checkpoint); to start from its weights, load them into the module and "
            "fit without ckpt_path"
        )
    written_by = entry.get("strategy")
    if written_by != strategy_name:
        raise CheckpointError(
            f"checkpoint '{path}' was written by strategy='{written_by}', this run uses strategy='{strategy_name}'; "
            "resume with the strategy that wrote it"
        )
    return dict(entry)


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")
