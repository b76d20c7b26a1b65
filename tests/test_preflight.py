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


# --- seeds, the trainer's cadences, the strategy, the optimizer --------------------------


def test_seeds_within_what_seed_everything_takes():
    for seed in (0, 2**32 - 1, True, False, None):
        preflight.check_seed(seed)
    for seed in (-1, 2**32, 99999999999):
        with _raises(ValueError, rf"^seed_everything must be an integer in 0 \.\. 4294967295 \(2\*\*32 - 1\), or "
                                 rf"true \(a random seed\) or false \(none\), got {seed}$") as info:
            preflight.check_seed(seed)
        assert info.value.names_key
    preflight.check_member_seeds([0, 1, 2**32 - 1])
    preflight.check_member_seeds(None)
    with _raises(ValueError, r"^model.seeds\[2\] must be an integer in 0 \.\. 4294967295 .*got -4$"):
        preflight.check_member_seeds([0, 1, -4])


def test_a_strategy_is_one_lightning_knows():
    for strategy in ("auto", "ddp", "DDP_spawn", "fsdp", None, object()):
        preflight.check_strategy(strategy)
    with _raises(ValueError, r"^trainer.strategy: unknown strategy 'dpp'; did you mean 'ddp'\? expected 'auto' or "
                             r"one of ddp, .*ddp_spawn, .*\(or a class_path of a Strategy\)$"):
        preflight.check_strategy("dpp")
    with _raises(ValueError, r"^trainer.strategy: unknown strategy 'banana'; expected 'auto' or one of ddp"):
        preflight.check_strategy("banana")


DATA = {"n_train": 256, "batch_size": 64}  # 4 batches an epoch


@pytest.mark.parametrize("trainer", [
    {}, {"check_val_every_n_epoch": None}, {"check_val_every_n_epoch": 3}, {"val_check_interval": 0.5},
    {"val_check_interval": 7}, {"limit_train_batches": 1.0}, {"limit_train_batches": 0.25},
    {"limit_train_batches": 2}, {"accumulate_grad_batches": 2}, {"max_epochs": -1, "max_steps": 100},
    {"max_epochs": None}, {"limit_val_batches": 0},  # 0 validation batches: no validation, legitimately
])
def test_trainer_settings_that_train_pass(trainer):
    preflight.check_training({"lr_schedule": "cosine"}, trainer, DATA)


@pytest.mark.parametrize("trainer,message", [
    ({"check_val_every_n_epoch": 0}, r"^trainer.check_val_every_n_epoch must be an integer >= 1, or null "
                                     r"\(validate by trainer.val_check_interval alone\), got 0$"),
    ({"check_val_every_n_epoch": -3}, r"^trainer.check_val_every_n_epoch must be an integer >= 1, or null .*got -3$"),
    ({"val_check_interval": 0}, r"^trainer.val_check_interval must be > 0 .*got 0$"),
    ({"val_check_interval": float("nan")}, r"^trainer.val_check_interval must be > 0 .*got nan$"),
    ({"limit_train_batches": 0}, r"^trainer.limit_train_batches must be > 0 .*got 0: it would train nothing$"),
    ({"limit_train_batches": -1.0}, r"^trainer.limit_train_batches must be > 0 .*got -1.0"),
    ({"limit_train_batches": 0.1}, r"^trainer.limit_train_batches: 0.1 of the 4 training batches of an epoch is "
                                   r"less than one batch; expected at least 0.25 \(or a number of batches >= 1\)$"),
    ({"accumulate_grad_batches": 0}, r"^trainer.accumulate_grad_batches must be an integer >= 1, got 0$"),
    ({"max_epochs": -1}, r"^trainer.max_epochs: -1 \(no limit\), with trainer.max_steps unset, leaves "
                         r"model.lr_schedule 'cosine' no horizon to decay over; expected a finite trainer.max_epochs "
                         r"\(>= 1\) or trainer.max_steps, or model.lr_schedule 'constant'$"),
    ({"max_epochs": -1, "max_steps": -1}, r"^trainer.max_epochs: -1 \(no limit\)"),
    ({"max_epochs": None, "max_time": "00:01:00:00"}, r"^trainer.max_epochs: None \(no limit\)"),
])
def test_trainer_settings_that_cannot_train_are_refused(trainer, message):
    with _raises(ValueError, message) as info:
        preflight.check_training({"lr_schedule": "cosine"}, trainer, DATA)
    assert info.value.names_key


def test_an_endless_run_with_a_constant_learning_rate_passes():
    preflight.check_training({"lr_schedule": "constant"}, {"max_epochs": -1}, DATA)


def _optimizer(class_path: str, **init_args) -> Namespace:
    return Namespace(class_path=class_path, init_args=Namespace(**init_args))


def test_optimizer_settings_that_train_pass():
    preflight.check_optimizer(None)
    preflight.check_optimizer(_optimizer("torch.optim.Adam", lr=1e-3, betas=[0.9, 0.99], weight_decay=0.0))
    preflight.check_optimizer(_optimizer("torch.optim.SGD", lr=0.03, momentum=0.9))
    preflight.check_optimizer({"class_path": "torch.optim.AdamW"})  # its default learning rate
    preflight.check_optimizer(_optimizer("collections.OrderedDict"))  # not an optimizer: not built
    preflight.check_optimizer(_optimizer("no_such_module.Adam"))  # the parser reports it


@pytest.mark.parametrize("optimizer,message", [
    (_optimizer("torch.optim.Adam", lr=-0.001), r"^model.optimizer.init_args.lr must be a finite number > 0, "
                                                r"got -0.001$"),
    (_optimizer("torch.optim.Adam", lr=0.0), r"^model.optimizer.init_args.lr must be a finite number > 0, got 0.0 "
                                             r"\(a learning rate of 0 trains nothing\)$"),
    (_optimizer("torch.optim.Adam", lr=float("nan")), r"^model.optimizer.init_args.lr .* got nan$"),
    (_optimizer("torch.optim.SGD", lr=float("inf")), r"^model.optimizer.init_args.lr .* got inf$"),
    (_optimizer("torch.optim.Adam", betas=[1.5, 0.9]), r"^model.optimizer.init_args.betas: Invalid beta parameter "
                                                       r"at index 0: 1.5; expected two numbers in \[0, 1\)$"),
    (_optimizer("torch.optim.Adam", eps=-1.0), r"^model.optimizer.init_args.eps: Invalid epsilon value: -1.0; "
                                               r"expected a number >= 0$"),
    (_optimizer("torch.optim.AdamW", weight_decay=-1.0), r"^model.optimizer.init_args.weight_decay: Invalid "
                                                         r"weight_decay value: -1.0; expected a number >= 0$"),
    (_optimizer("torch.optim.SGD", momentum=-1.0), r"^model.optimizer.init_args.momentum: Invalid momentum value: "
                                                   r"-1.0; expected a number >= 0$"),
])
def test_optimizer_settings_torch_would_refuse_late_are_refused(optimizer, message):
    with _raises(ValueError, message) as info:
        preflight.check_optimizer(optimizer)
    assert info.value.names_key


# --- memory ------------------------------------------------------------------------------


def test_the_memory_here_is_known():
    available = preflight.available_memory()
    assert available is None or available > 0
    assert preflight.size_text(16e9) == "16 GB" and preflight.size_text(2.5e12) == "2.5 TB"
    assert preflight.size_text(999) == "999 bytes"


def test_without_a_memory_figure_nothing_is_refused(monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda: None)
    assert preflight.memory_problem(1e30) is None
    preflight.check_model_memory(Namespace(model=Namespace(hidden=10**9, depth=2)))


GB22 = 22 * 10**9  # the memory the tests pretend is available (a 23 GB machine's)


def _config(**model) -> Namespace:
    return Namespace(model=Namespace(hidden=64, depth=2, **model), data=Namespace(n_train=10_000, n_val=2000,
                                                                                   n_test=2000, batch_size=256))


def test_a_model_that_fits_passes(monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda: GB22)
    preflight.check_model_memory(_config())
    preflight.check_model_memory(_config(seeds=list(range(10))))
    preflight.check_model_memory(None)
    preflight.check_model_memory(Namespace(model=Namespace(other=1)))  # not the package's model: not estimated


def test_a_model_beyond_the_memory_is_refused_naming_its_key(monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda: GB22)
    cfg = _config()
    cfg.model.hidden = 10**9
    with _raises(ValueError, r"^model.hidden: 1000000000 would need about .* of memory \(weights with their "
                             r"gradients and Adam's moments .*, the largest batch's activations .*\), more than 50% "
                             r"of the 22 GB of memory available here \(11 GB\); expected model.hidden <= (\d+)$") as info:
        preflight.check_model_memory(cfg)
    assert info.value.names_key
    best = int(str(info.value).rsplit(" ", 1)[1])
    sizes, _, kind = preflight.model_sizes({**vars(cfg), "model": Namespace(hidden=best, depth=2)})
    assert sum(preflight.model_bytes(sizes, kind)) <= GB22 // 2  # the bound it names fits
    sizes["model.hidden"] = best + 1
    assert sum(preflight.model_bytes(sizes, kind)) > GB22 // 2  # and is the largest that does
    cfg.model.hidden = best
    preflight.check_model_memory(cfg)


@pytest.mark.parametrize("model,key", [
    (dict(depth=10**8), "model.depth"),
    (dict(seeds=list(range(10**7))), "model.seeds"),
    (dict(latent=Namespace(class_path="lightning_vae.latents.GaussianLatent",
                           init_args=Namespace(dim=10**9))), "model.latent.init_args.dim"),
    (dict(latent=Namespace(class_path="lightning_vae.latents.GaussianLatent",
                           init_args=Namespace(iwae_samples=10**9))), "model.latent.init_args.iwae_samples"),
    (dict(latent=Namespace(class_path="lightning_vae.latents.CategoricalLatent",
                           init_args=Namespace(n_states=10**6))), "model.latent.init_args.n_states"),
])
def test_the_key_that_asks_for_most_is_named(monkeypatch, model, key):
    monkeypatch.setattr(preflight, "available_memory", lambda: GB22)
    cfg = _config()
    for k, v in model.items():
        setattr(cfg.model, k, v)
    with _raises(ValueError, rf"^{key}: .* would need about .*; expected "):
        preflight.check_model_memory(cfg)


def test_the_data_beyond_the_memory_is_refused_before_it_is_drawn(monkeypatch):
    """--data.n_train=2000000000 (16 GB of float32 points, ~96 GB to draw) on a machine with
    22 GB available: refused naming data.n_train, before a single point is drawn."""
    from lightning_vae.data import ManifoldDataModule

    monkeypatch.setattr(preflight, "available_memory", lambda: GB22)
    dm = ManifoldDataModule(n_train=2_000_000_000)
    with _raises(ValueError, r"^data.n_train: drawing n_train \+ n_val \+ n_test = 2000000000 \+ 2000 \+ 2000 points "
                             r"of 2 coordinates would take about 96 GB of memory \(the float32 splits are 16 GB\), "
                             r"more than 50% of the 22 GB of memory available here \(11 GB\); expected n_train \+ "
                             r"n_val \+ n_test <= 229166666 here$") as info:
        dm.check_size()
    assert info.value.names_key and dm.train_x is None


def test_the_data_is_drawn_by_check_size_and_must_vary(monkeypatch):
    from lightning_vae.data import ManifoldDataModule, TwoClusters

    dm = ManifoldDataModule(n_train=64, n_val=8, n_test=8, batch_size=8)
    dm.check_size()
    assert dm.train_x is not None and dm.data_scale > 0
    drawn = dm.train_x
    dm.setup()
    assert dm.train_x is drawn  # drawn once
    flat = ManifoldDataModule(TwoClusters(cluster_std=0.0, dim=1), n_train=2, n_val=2, n_test=1, batch_size=1,
                              data_seed=0)
    flat.manifold._sample = lambda n, generator: torch.ones(n, 1)  # every point the same
    with _raises(ValueError, r"^data.manifold: the 2 training points drawn from TwoClusters \(data.n_train\) have no spread: "
                             r"the largest per-axis std is 0; expected points that vary along at least one axis$"):
        flat.check_size()


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
