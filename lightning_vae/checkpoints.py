"""Checkpoints that are what they claim to be: verified before use, never a dangling link.

A Lightning checkpoint is a ``torch.save`` zip archive, and every member of a zip carries a
CRC-32 of its bytes. ``torch.load`` does not check them: a checkpoint with flipped or zeroed
bytes inside a tensor loads "successfully" and training resumes on corrupted weights.
``verify`` reads every member and checks its CRC (a few ms for this project's checkpoints).

``last.ckpt`` is a symbolic link (``save_last: link``) that Lightning replaces in two steps
after deleting the previous epoch's file, so a kill in between can leave it pointing at a
file that no longer exists. ``resolve`` turns a ``ckpt_path`` into the file to load: as
given where it is intact; for a ``last.ckpt`` that dangles or is corrupt, the newest intact
checkpoint next to it, with a line saying so; otherwise a one-line error. ``link`` replaces
a link atomically (a new link under a temporary name, then ``os.replace``), as the
interrupted-run checkpoint of ``lightning_vae.callbacks.RunOutcome`` is linked.

``SafeLoading`` gives a module's ``load_from_checkpoint`` both: ``verify`` first, then
``weights_only=True`` explicitly (never the environment's or torch's default:
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would otherwise let a checkpoint run code).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

LAST = "last.ckpt"


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is not an intact ``torch.save`` archive."""


def problem(path: str | Path) -> str | None:
    """What is wrong with the checkpoint file at ``path`` (None: intact). Every member's
    CRC-32 is checked, so truncated, overwritten or zeroed bytes are found."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"it is a link to {os.readlink(path)}, which does not exist"
    if not path.is_file():
        return "no such file" if not path.exists() else "not a file"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member, checks its CRC
    except zipfile.BadZipFile as err:
        return f"not an intact torch.save zip archive ({err})"
    except (OSError, EOFError, zlib.error, RuntimeError, ValueError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if bad is not None:
        return f"member {bad} fails its CRC check (the file's bytes were changed after it was written)"
    return None


def verify(path: str | Path) -> None:
    """Raise ``CorruptCheckpoint`` (a ValueError) naming the file where it is not intact."""
    found = problem(path)
    if found is not None:
        raise CorruptCheckpoint(f"{path}: {found}")


def newest_intact(folder: Path, exclude: tuple[str, ...] = (LAST,)) -> Path | None:
    """The most recently written intact checkpoint in ``folder`` (links and ``exclude``
    skipped), or None."""
    candidates = [p for p in folder.glob("*.ckpt") if p.name not in exclude and not p.is_symlink()
                  and p.is_file()]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if problem(path) is None:
            return path
    return None


def resolve(ckpt_path: str | Path) -> tuple[Path, str | None]:
    """The checkpoint to load for ``ckpt_path`` and a note where it is not ``ckpt_path``
    itself: a ``last.ckpt`` that dangles or is corrupt falls back to the newest intact
    checkpoint in its folder. Any other bad file, or no intact fallback, raises
    ``CorruptCheckpoint``."""
    path = Path(ckpt_path)
    found = problem(path)
    if found is None:
        return path, None
    if path.name == LAST and path.parent.is_dir():
        fallback = newest_intact(path.parent)
        if fallback is not None:
            return fallback, f"{path}: {found}; resuming from the newest intact checkpoint, {fallback}"
        raise CorruptCheckpoint(f"{path}: {found}, and no other intact checkpoint is in {path.parent}")
    raise CorruptCheckpoint(f"{path}: {found}")


def link(target: Path, link_path: Path) -> None:
    """Make ``link_path`` a relative symbolic link to ``target``, atomically: at every moment
    ``link_path`` is either the old link or the new one."""
    tmp = link_path.with_name(f".{link_path.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, link_path.parent), tmp)
    os.replace(tmp, link_path)


class SafeLoading:
    """Mixin (listed first) for a ``LightningModule`` or ``LightningDataModule``:
    ``load_from_checkpoint`` verifies the file (``verify``) and passes ``weights_only=True``
    to torch explicitly, so neither torch's default nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
    can make a checkpoint run code (this project's hyperparameters are plain values)."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, weights_only: bool = True, **kwargs):
        if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            verify(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)
