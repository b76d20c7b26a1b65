"""Checkpoint integrity (``lightning_vae.checkpoints``): a changed byte is found by the zip
CRC, a dangling or corrupt ``last.ckpt`` falls back to the newest intact checkpoint, links
are replaced atomically, and ``load_from_checkpoint`` never runs a checkpoint's code."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from conftest import fit
from lightning_vae import checkpoints
from lightning_vae.checkpoints import CorruptCheckpoint


def _save(path, n=4096, seed=0):
    torch.save({"state_dict": {"w": torch.randn(n, generator=torch.Generator().manual_seed(seed))}}, path)
    return path


def _zero_inside_a_tensor(path, n=64):
    """Zero ``n`` bytes of the first tensor's data, in place: the archive still opens."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 128
    data[start:start + n] = bytes(n)
    path.write_bytes(bytes(data))


def test_intact_checkpoint_passes_and_a_changed_byte_is_found(tmp_path):
    path = _save(tmp_path / "a.ckpt")
    assert checkpoints.problem(path) is None
    checkpoints.verify(path)
    _zero_inside_a_tensor(path)
    torch.load(path, weights_only=True)  # what torch alone does: it loads, corrupted
    assert "fails its CRC check" in checkpoints.problem(path)
    with pytest.raises(CorruptCheckpoint, match="a.ckpt: member .* fails its CRC check"):
        checkpoints.verify(path)


@pytest.mark.parametrize("damage,expected", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not an intact torch.save zip archive"),
    (lambda p: p.write_bytes(b""), "not an intact torch.save zip archive"),
    (lambda p: p.write_text("hello"), "not an intact torch.save zip archive"),
    (lambda p: p.unlink(), "no such file"),
])
def test_truncated_empty_foreign_and_missing_files_are_named(tmp_path, damage, expected):
    path = _save(tmp_path / "a.ckpt")
    damage(path)
    assert expected in checkpoints.problem(path)


def test_last_ckpt_that_dangles_or_is_corrupt_falls_back_to_the_newest_intact_one(tmp_path):
    old, new = _save(tmp_path / "epoch=0.ckpt", seed=0), _save(tmp_path / "epoch=1.ckpt", seed=1)
    os.utime(old, (1, 1))
    last = tmp_path / "last.ckpt"
    checkpoints.link(new, last)
    assert os.readlink(last) == "epoch=1.ckpt" and checkpoints.resolve(last) == (last, None)
    new.unlink()  # Lightning deleted it; the kill came before the new link
    path, note = checkpoints.resolve(last)
    assert path == old and "which does not exist" in note and str(old) in note
    checkpoints.link(old, last)
    _zero_inside_a_tensor(old)  # the link's target corrupt, nothing else intact
    with pytest.raises(CorruptCheckpoint, match="no other intact checkpoint"):
        checkpoints.resolve(last)
    # Any other file is used as given or refused, never silently replaced.
    with pytest.raises(CorruptCheckpoint, match="fails its CRC check"):
        checkpoints.resolve(old)


def test_link_replaces_atomically_and_leaves_no_temporary(tmp_path):
    a, b = _save(tmp_path / "a.ckpt"), _save(tmp_path / "b.ckpt")
    link = tmp_path / "last.ckpt"
    checkpoints.link(a, link)
    checkpoints.link(b, link)
    assert os.readlink(link) == "b.ckpt" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["a.ckpt", "b.ckpt", "last.ckpt"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creates the marker file when unpickled


def test_load_from_checkpoint_never_runs_a_checkpoints_code(tmp_path, monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes torch unpickle anything where the caller
    leaves weights_only unset; VAE/ManifoldDataModule.load_from_checkpoint set it."""
    from lightning_vae.data import ManifoldDataModule
    from lightning_vae.model import VAE

    run = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=1", "--data.n_train=256",
              "--data.batch_size=64", "--sample_figure.every_n_epochs=1")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt").sample(8).shape == (8, 2)
    assert ManifoldDataModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").n_train == 256
    marker = tmp_path / "code-ran"
    ckpt["hyper_parameters"]["evil"] = _Evil(marker)
    torch.save(ckpt, tmp_path / "evil.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for cls in (VAE, ManifoldDataModule):
        with pytest.raises(Exception, match="Weights only load failed"):
            cls.load_from_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    _zero_inside_a_tensor(run / "checkpoints" / "last.ckpt")
    with pytest.raises(CorruptCheckpoint):
        VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
