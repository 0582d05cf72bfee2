"""Per-client state that persists across rounds (SCAFFOLD's control variates, error-feedback residuals).

1,000 clients of a 1.66M-parameter model hold 6.6 GB of such vectors, so they live on disk, one file per
client that ever trained, and a process reads only the client it is training (RAM stays flat in the
number of clients). Files are written whole to a temporary name and renamed, so a reader never sees a
half-written vector and a file, once renamed into place, is never modified again.

That makes snapshots cheap: a checkpoint's copy of the store is a directory of hard links to the current
files (no data copied); a later write replaces the live file with a new inode and leaves the snapshot's
link pointing at the old contents. Restoring links the snapshot's files back. Several processes on one
node share the directory; across nodes it must be on a shared file system (each round's clients are
spread over all processes, and a client may train on another node next time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

_SUFFIX = ".pt"


class ClientStateStore:
    """Flat float vectors of ``numel`` values keyed by client id, one file each under ``directory``."""

    def __init__(self, directory: str | os.PathLike, numel: int, dtype: torch.dtype = torch.float32) -> None:
        self.directory = Path(directory)
        self.numel = int(numel)
        self.dtype = dtype
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, client_id: int) -> Path:
        return self.directory / f"client_{int(client_id)}{_SUFFIX}"

    def load(self, client_id: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """The client's vector, or ``None`` if it never stored one."""
        path = self._path(client_id)
        if not path.exists():
            return None
        tensor = torch.load(path, map_location=device or "cpu", weights_only=True)
        if not isinstance(tensor, torch.Tensor) or tensor.numel() != self.numel:
            raise ValueError(f"client state file {path} does not hold a vector of {self.numel} values")
        return tensor

    def save(self, client_id: int, tensor: torch.Tensor) -> None:
        path = self._path(client_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(tensor.detach().to("cpu", self.dtype).contiguous(), f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def clients(self) -> list[int]:
        return sorted(int(p.name[len("client_") : -len(_SUFFIX)]) for p in self._files())

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._files())

    def _files(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if p.name.startswith("client_") and p.name.endswith(_SUFFIX)]

    def snapshot(self, destination: str | os.PathLike) -> None:
        """Make ``destination`` a frozen copy of the store (hard links; a copy across file systems)."""
        _replace_dir_with_links(self.directory, Path(destination), self._files())

    def restore(self, source: str | os.PathLike) -> None:
        """Make the store hold exactly what the snapshot ``source`` holds."""
        source = Path(source)
        files = [p for p in source.iterdir() if p.name.startswith("client_") and p.name.endswith(_SUFFIX)]
        for p in self._files():
            p.unlink()
        for p in files:
            _link_or_copy(p, self.directory / p.name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported: copy instead
        shutil.copy2(src, dst)


def _replace_dir_with_links(source: Path, destination: Path, files: list[Path]) -> None:
    staging = destination.with_name(destination.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for p in files:
        _link_or_copy(p, staging / p.name)
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(staging, destination)
