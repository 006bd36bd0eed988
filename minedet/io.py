"""File output: every file minedet writes goes to a temporary name first, then is renamed, and no
output may equal, contain or replace one of the command's inputs (:func:`check_outputs`, called by
every command before it writes anything).

An interrupted command never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from minedet.errors import MinedetError


def _real(path: str | os.PathLike) -> Path:
    """``path`` absolute with every symlink resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


class _Inputs:
    """The inputs of a command by resolved path and by inode (a hard link is the file it links to)."""

    def __init__(self, paths: Iterable[str | os.PathLike | None]) -> None:
        self.by_path: dict[Path, str] = {}
        self.by_inode: dict[tuple[int, int], str] = {}
        for p in paths:
            if p is None:
                continue
            real = _real(p)
            self.by_path.setdefault(real, str(p))
            with contextlib.suppress(OSError):
                st = os.stat(real)
                self.by_inode.setdefault((st.st_dev, st.st_ino), str(p))

    def find(self, real: Path) -> str | None:
        """The input (as the user named it) that ``real`` is, or None."""
        if real in self.by_path:
            return self.by_path[real]
        try:
            st = os.stat(real)
        except OSError:  # not there yet: no input
            return None
        return self.by_inode.get((st.st_dev, st.st_ino))


def check_outputs(
    inputs: Iterable[str | os.PathLike | None],
    *,
    files: Iterable[str | os.PathLike] = (),
    folders: Iterable[str | os.PathLike] = (),
) -> None:
    """The output-safety rule of every command: call it with everything the command reads and will
    write, before anything is written. Paths are resolved (symlinks followed; a hard link is the file
    it links to). Refused, as one MinedetError line naming the output:

    * an output file that is one of the inputs (it would replace it) or an existing folder;
    * an output folder (one the command writes files into) that is an input folder, or an existing
      non-folder (an input file in an output folder is safe unless it is one of ``files``);
    * two outputs that are one file (the second would silently replace the first).

    Args:
        inputs: files and folders the command reads (``None`` entries are skipped).
        files: every file the command will write.
        folders: the folders it writes files into.
    """
    ins = _Inputs(inputs)
    for folder in map(Path, folders):
        if folder.exists() and not folder.is_dir():
            raise MinedetError("output path exists and is not a folder", file=str(folder))
        given = ins.find(_real(folder))
        if given is not None:
            raise MinedetError(f"refusing to write into the input folder {given!r}: choose another output folder",
                               file=str(folder))
    seen: dict[Path, Path] = {}
    for out in map(Path, files):
        real = _real(out)
        given = ins.find(real)
        if given is not None:
            what = "folder" if real.is_dir() else "file"
            raise MinedetError(f"refusing to overwrite the input {what} {given!r}", file=str(out))
        if real.is_dir():
            raise MinedetError("output file exists and is a folder", file=str(out))
        if real in seen:
            raise MinedetError(f"two outputs would be written to one file (also {str(seen[real])!r})", file=str(out))
        seen[real] = out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Write ``obj`` as JSON (sorted keys off, UTF-8) atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _check_zip_crc(path: Path) -> None:
    """torch.save writes a zip archive with a CRC-32 per entry, which ``torch.load`` never checks:
    a flipped bit in tensor data would load silently different weights. Verify them (GB/s)."""
    if not zipfile.is_zipfile(path):
        return  # not the zip format: torch.load's own checks decide
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise MinedetError(f"checkpoint is corrupt (checksum mismatch in {bad})", file=str(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a file written by minedet with ``torch.load(weights_only=True)`` (no code from the file
    runs) after checking its zip checksums; any failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise MinedetError("checkpoint file not found", file=str(path))
    try:
        _check_zip_crc(path)
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MinedetError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file can fail anywhere in the unpickler / zip reader
        msg = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise MinedetError(f"not a readable minedet checkpoint ({e.__class__.__name__}: {msg})", file=str(path)) from None
    if not isinstance(obj, dict):
        raise MinedetError("not a minedet checkpoint (top level is not a dict)", file=str(path))
    return obj
