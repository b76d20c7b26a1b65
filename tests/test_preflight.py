"""The checks run before anything is written (``lightning_vae.preflight``), as plain
functions: no parser, no training. Each bad setting is an error whose one-line message
names its key and what is expected there, marked as such (``names_key``)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import Namespace

from lightning_vae import preflight


def _raises(kind: type[Exception], match: str):
    return pytest.raises(kind, match=match)


# --- the parsed config -----------------------------------------------------------------


def test_cpu_devices_within_the_cores_pass():
    for devices in (1, "1", -1, "auto", None, os.cpu_count() or 1):
        preflight.check_devices("cpu", devices)
    preflight.check_devices(None, 5)  # an accelerator object: Lightning's to check
    preflight.check_devices("tpu", 5)  # another kind: Lightning's to check


def test_more_devices_than_cores_are_refused():
    n = os.cpu_count() or 1
    with _raises(ValueError, rf"^trainer.devices asks for {n + 1} but there are {n} CPU cores here; "
                             rf"expected at most {n} \(or 'auto'\)$") as info:
        preflight.check_devices("cpu", n + 1)
    assert info.value.names_key
    with _raises(ValueError, r"^trainer.devices asks for 1024 "):
        preflight.check_devices("CPU", "1024")


@pytest.mark.parametrize("devices", [0, -2, "0"])
def test_zero_or_negative_devices_are_refused(devices):
    with _raises(ValueError, r"^trainer.devices must be an integer >= 1, -1 \(all\) or 'auto', got -?\d$"):
        preflight.check_devices("cpu", devices)


def test_a_gpu_where_there_is_none_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for accelerator in ("gpu", "cuda", "GPU"):
        with _raises(ValueError, rf"^trainer.accelerator: '{accelerator}' needs a GPU, but there is none "
                                 r"here .*; expected 'cpu' or 'auto'$"):
            preflight.check_devices(accelerator, 1)
    preflight.check_devices("auto", 1)  # auto falls back to the CPU


def test_more_gpus_than_there_are_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    preflight.check_devices("gpu", 2)
    preflight.check_devices("gpu", "0,1")
    with _raises(ValueError, r"^trainer.devices asks for 3 but there are 2 GPUs here; expected at most 2"):
        preflight.check_devices("auto", 3)
    with _raises(ValueError, r"^trainer.devices asks for \[0, 2\] but there are 2 GPUs here"):
        preflight.check_devices("cuda", "0,2")


def test_config_sizes_and_step_limits():
    preflight.check_config({"hidden": 1, "depth": 0}, {"max_epochs": -1, "max_steps": 5}, "fit")
    preflight.check_config(None, None, None)
    with _raises(ValueError, r"^model.hidden must be an integer >= 1, got 0$"):
        preflight.check_config({"hidden": 0}, {}, "fit")
    with _raises(ValueError, r"^model.depth must be an integer >= 0, got -1$"):
        preflight.check_config(Namespace(hidden=4, depth=-1), Namespace(), "validate")
    with _raises(ValueError, r"^trainer.max_steps must be -1 \(no limit\) or an integer >= 1, got 0$"):
        preflight.check_config({}, {"max_steps": 0}, "fit")
    preflight.check_config({}, {"max_epochs": 0}, "test")  # the limits are fit's only


# --- the output directories --------------------------------------------------------------


def test_a_directory_holds_files(tmp_path):
    assert not preflight.holds_files(tmp_path / "missing")
    assert not preflight.holds_files(tmp_path)
    (tmp_path / "f").write_text("x")
    assert preflight.holds_files(tmp_path) and not preflight.holds_files(tmp_path / "f")


def test_writable_directories(tmp_path):
    preflight.check_writable("k", tmp_path)
    preflight.check_writable("k", tmp_path / "a" / "b")  # can be created
    assert not (tmp_path / "a").exists()  # and is not
    (tmp_path / "afile").write_text("x")
    with _raises(ValueError, rf"^k: cannot create {tmp_path / 'afile' / 'logs'}: {tmp_path / 'afile'} is a "
                             r"file, not a directory; expected a writable directory$"):
        preflight.check_writable("k", tmp_path / "afile" / "logs")


def test_an_unwritable_directory_is_refused(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(preflight.os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    with _raises(ValueError, rf"^key: cannot write to {tmp_path / 'logs'}: {tmp_path} is not writable"):
        preflight.check_writable("key", tmp_path / "logs")


def _logger(save_dir: Path, version: int) -> SimpleNamespace:
    """What check_run_dir reads of a TensorBoardLogger."""
    return SimpleNamespace(save_dir=str(save_dir), log_dir=str(save_dir / "default" / f"version_{version}"))


def test_a_new_run_directory_passes(tmp_path):
    preflight.check_run_dir(_logger(tmp_path / "logs", 0), None)
    preflight.check_run_dir(None, tmp_path / "root")
    preflight.check_run_dir(None, None)
    preflight.check_run_dir(SimpleNamespace(save_dir="s3://bucket/logs", log_dir=None), None)  # not checked
    (tmp_path / "logs" / "default" / "version_0").mkdir(parents=True)  # exists, but empty
    preflight.check_run_dir(_logger(tmp_path / "logs", 0), None, checkpoint_dirpath=tmp_path / "ckpts")
    assert not (tmp_path / "root").exists() and not (tmp_path / "ckpts").exists()


@pytest.mark.parametrize("version_given,key", [(True, "trainer.logger.init_args.version"),
                                               (False, "trainer.logger.init_args.save_dir")])
def test_a_run_directory_holding_files_is_refused(tmp_path, version_given, key):
    run = tmp_path / "logs" / "default" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "events.out").write_text("x")
    with _raises(FileExistsError, rf"^{key}: the run directory {run} already exists and holds files; "
                                  rf"expected a new one: .*--ckpt_path={run / 'checkpoints' / 'last.ckpt'}, "
                                  r"no version\)$") as info:
        preflight.check_run_dir(_logger(tmp_path / "logs", 0), None, version_given=version_given)
    assert info.value.names_key


def test_a_checkpoint_directory_holding_files_is_refused(tmp_path):
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "last.ckpt").write_text("x")
    with _raises(FileExistsError, rf"^checkpoint.dirpath: {tmp_path / 'ckpts'} already holds files; "
                                  r"expected a new or empty directory"):
        preflight.check_run_dir(_logger(tmp_path / "logs", 0), None, checkpoint_dirpath=tmp_path / "ckpts")
    (tmp_path / "afile").write_text("x")
    with _raises(ValueError, r"^checkpoint.dirpath: cannot create .*afile is a file"):
        preflight.check_run_dir(None, tmp_path / "root", checkpoint_dirpath=tmp_path / "afile" / "c")
    with _raises(ValueError, r"^trainer.default_root_dir: cannot create .*afile is a file"):
        preflight.check_run_dir(None, tmp_path / "afile" / "root")


def test_whether_the_config_sets_the_logger_version():
    logger = {"class_path": "pytorch_lightning.loggers.TensorBoardLogger"}
    assert preflight.logger_version_given(Namespace(logger=Namespace(**logger, init_args=Namespace(version=3))))
    assert preflight.logger_version_given({"logger": [{**logger, "init_args": {"version": "name"}}]})
    assert not preflight.logger_version_given(Namespace(logger=Namespace(**logger, init_args=Namespace(version=None))))
    assert not preflight.logger_version_given({"logger": False})
    assert not preflight.logger_version_given(None)


@pytest.mark.parametrize("variable", preflight.RANK_VARIABLES)  # Lightning, torchrun, srun
def test_ddp_children_are_told_apart(monkeypatch, variable):
    for name in preflight.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not preflight.is_child_process()
    monkeypatch.setenv(variable, "0")  # rank 0 of a multi-process run checks
    assert not preflight.is_child_process()
    monkeypatch.setenv(variable, "1")
    assert preflight.is_child_process()


# --- a checkpoint ------------------------------------------------------------------------


def test_no_checkpoint_file_is_read_for_lightnings_words(tmp_path):
    for word in (None, "", "last", "best", "hpc", "registry:model:latest"):
        assert preflight.read_checkpoint(word, "prog") is None


def test_a_missing_or_unreadable_checkpoint_is_refused(tmp_path):
    with _raises(FileNotFoundError, r"^ckpt_path: checkpoint file not found: .*missing.ckpt; expected an "
                                    r"existing .ckpt file"):
        preflight.read_checkpoint(tmp_path / "missing.ckpt", "prog")
    (tmp_path / "garbage.ckpt").write_bytes(os.urandom(512))
    with _raises(ValueError, r"^ckpt_path: .*garbage.ckpt is not a readable checkpoint \(not a torch.save "
                             r"zip archive\); expected a .ckpt file written by prog fit$"):
        preflight.read_checkpoint(tmp_path / "garbage.ckpt", "prog")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    with _raises(ValueError, r"^ckpt_path: .*plain.ckpt holds no state_dict"):
        preflight.read_checkpoint(tmp_path / "plain.ckpt", "prog")


def test_a_checkpoint_is_read_as_lightning_reads_it(tmp_path):
    state = {"enc.weight": torch.zeros(3, 2), "enc.bias": torch.zeros(3)}
    torch.save({"state_dict": state, "hyper_parameters": {"hidden": 16, "_instantiator": "x"}}, tmp_path / "a.ckpt")
    shapes, hparams, step = preflight.read_checkpoint(str(tmp_path / "a.ckpt"), "prog")
    assert shapes == {"enc.weight": (3, 2), "enc.bias": (3,)} and hparams == {"hidden": 16} and step is None
    torch.save({"state_dict": state, "global_step": 390}, tmp_path / "s.ckpt")
    assert preflight.read_checkpoint(tmp_path / "s.ckpt", "prog").global_step == 390
    torch.save({"state_dict": state, "hyper_parameters": {"_class_path": "m.VAE", "hidden": 8}}, tmp_path / "b.ckpt")
    assert preflight.read_checkpoint(tmp_path / "b.ckpt", "prog")[1] == {"class_path": "m.VAE",
                                                                         "dict_kwargs": {"hidden": 8}}
    torch.save({"state_dict": state}, tmp_path / "c.ckpt")
    assert preflight.read_checkpoint(tmp_path / "c.ckpt", "prog")[1] is None


def test_checkpoint_settings_that_contradict_the_config_are_refused():
    before = {"hidden": 32, "depth": 2, "steps_per_batch": 8}
    defaults = {"hidden": 64, "depth": 2, "steps_per_batch": 32}
    preflight.check_settings_match("c.ckpt", before, dict(before), defaults)
    preflight.check_settings_match("c.ckpt", before, {**before, "depth": 3}, defaults)  # a default: taken
    with _raises(ValueError, r"^ckpt_path: c.ckpt does not match the config: model.hidden is 16 in the "
                             r"checkpoint, 32 in the config; data.steps_per_batch is 1 in the checkpoint, 8 "
                             r"in the config; expected the checkpoint's model settings \(drop or change "
                             r"model.hidden, data.steps_per_batch\)$"):
        preflight.check_settings_match("c.ckpt", before, {**before, "hidden": 16, "steps_per_batch": 1}, defaults)


def test_checkpoint_shapes_that_do_not_fit_the_model_are_refused():
    model = preflight.tensor_shapes({"w": torch.zeros(3, 2), "b": torch.zeros(3)})
    preflight.check_shapes("c.ckpt", dict(model), model)
    with _raises(ValueError, r"^ckpt_path: c.ckpt does not fit the model the config builds: w is \(4, 2\) in "
                             r"the checkpoint, \(3, 2\) in the model; expected a checkpoint of a run with"):
        preflight.check_shapes("c.ckpt", {**model, "w": (4, 2)}, model)
    with _raises(ValueError, r"builds: b is missing from the checkpoint;"):
        preflight.check_shapes("c.ckpt", {"w": (3, 2)}, model)
    with _raises(ValueError, r"builds: the checkpoint has extra, the model does not;"):
        preflight.check_shapes("c.ckpt", {**model, "extra": (1,)}, model)


def test_flat():
    cfg = Namespace(hidden=4, objective=Namespace(class_path="x.Spread", init_args=Namespace(noise_std=0.3)))
    assert preflight.flat(cfg) == {"hidden": 4, "objective.class_path": "x.Spread",
                                   "objective.init_args.noise_std": 0.3}
    assert preflight.flat(None) == {} and preflight.flat({"a": {"b": 1}}) == {"a.b": 1}
