"""What ``lightning_vae.compat`` (the one place that touches libraries' private attributes)
and the CLI's use of public-but-subtle library behaviour rely on. Each test fails with a
message naming the library and version that changed it: the place to look after an upgrade.
"""

from __future__ import annotations

import argparse

import jsonargparse
import pytest
import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentError, ArgumentParser

from lightning_vae import compat

JSONARGPARSE = f"jsonargparse {jsonargparse.__version__}"
LIGHTNING = f"pytorch_lightning {pl.__version__}"
TORCH = f"torch {torch.__version__}"


# --- argparse / jsonargparse -------------------------------------------------------------


def test_parser_actions_lists_every_option():
    parser = ArgumentParser()
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--model.hidden", type=int, default=4)
    try:
        actions = compat.parser_actions(parser)
    except AttributeError as err:
        pytest.fail(f"{JSONARGPARSE} on Python's argparse: a parser has no _actions any more ({err}); "
                    f"compat.parser_actions needs another way to list a parser's options")
    assert all(isinstance(a, argparse.Action) for a in actions), f"{JSONARGPARSE}: _actions holds {actions}"
    dests = {a.dest for a in actions}
    assert {"n", "model.hidden"} <= dests, f"{JSONARGPARSE}: the options' dests are now {sorted(dests)}"


def test_a_subcommands_action_maps_names_to_parsers_in_its_choices():
    """errors.py finds a subcommand's keys through the subcommands action's public ``choices``
    (argparse's name -> parser map)."""
    main, fit = ArgumentParser(), ArgumentParser()
    fit.add_argument("--ckpt_path", type=str, default=None)
    main.add_subcommands().add_subcommand("fit", fit)
    maps = [a.choices for a in compat.parser_actions(main) if isinstance(getattr(a, "choices", None), dict)]
    assert maps and maps[0].get("fit") is fit, (
        f"{JSONARGPARSE}: the subcommands action's choices are no longer the name -> parser map "
        f"({maps}); errors._parser_keys misses the subcommands' keys")


def test_debug_mode_is_read_from_jsonargparse_debug(monkeypatch):
    """``cli._Parser`` leaves the error to jsonargparse in its debug mode, read from the
    documented JSONARGPARSE_DEBUG variable as jsonargparse reads it."""
    from lightning_vae.cli import _debug_mode

    parser = ArgumentParser(exit_on_error=True)
    parser.add_argument("--n", type=int)
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    assert _debug_mode()
    with pytest.raises(ArgumentError):  # raised, not exited: jsonargparse read the variable too
        try:
            parser.parse_args(["--n=abc"])
        except SystemExit:
            pytest.fail(f"{JSONARGPARSE}: JSONARGPARSE_DEBUG=true no longer makes errors raise")
    for off in ("", "false"):
        monkeypatch.setenv("JSONARGPARSE_DEBUG", off)
        assert not _debug_mode()
        with pytest.raises(SystemExit):
            parser.parse_args(["--n=abc"])


# --- LightningCLI: the subcommands' parsers ----------------------------------------------


class _Stop(Exception):
    pass


def test_the_cli_knows_each_subcommands_parser():
    """``VAECLI.subcommand_parser`` finds a subcommand's parser among those ``init_parser``
    made, by the name jsonargparse gives it; the ckpt_path check and the error keys use it."""
    from lightning_vae.cli import VAECLI, build_cli
    from lightning_vae.model import VAE

    class Probe(VAECLI):
        def before_instantiate_classes(self) -> None:
            raise _Stop(self)

    with pytest.raises(_Stop) as info:
        build_cli(["fit", "--trainer.logger=false"], cli_class=Probe)
    cli = info.value.args[0]
    names = list(cli.subcommands())
    assert len(cli.all_parsers) == 1 + len(names), (
        f"{LIGHTNING}: LightningCLI no longer makes each parser with init_parser "
        f"({len(cli.all_parsers)} parsers for the main one and {names})")
    for name in names:
        parser = cli.subcommand_parser(name)
        assert parser is not cli.parser and "ckpt_path" in parser.get_defaults(), (
            f"{LIGHTNING} / {JSONARGPARSE}: no parser named for subcommand {name!r} "
            f"(progs: {[p.prog for p in cli.all_parsers]})")
    assert cli.subcommand_parser(None) is cli.parser
    assert cli.model_class is VAE, f"{LIGHTNING}: LightningCLI.model_class is no longer the model class"


# --- torch / TensorBoard / Lightning, for callbacks.py, steps.py and scalars.py -------------


def test_file_writer_writes_and_reopens(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    try:
        fw = compat.file_writer(writer)
        writer.close()
        reopened = compat.file_writer(writer)
    except AttributeError as err:
        pytest.fail(f"{TORCH}: SummaryWriter._get_file_writer is gone ({err})")
    assert hasattr(fw, "add_summary") and hasattr(reopened, "add_summary"), (
        f"{TORCH}: SummaryWriter._get_file_writer no longer returns a FileWriter")
    reopened.close()


def test_set_last_lr_is_what_get_last_lr_returns():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    compat.set_last_lr(scheduler, [0.25])
    assert scheduler.get_last_lr() == [0.25], (
        f"{TORCH}: get_last_lr() no longer reads _last_lr; compat.set_last_lr must change")


def test_foreach_norm_is_each_tensors_norm():
    tensors = [torch.tensor([3.0, 4.0]), torch.ones(2, 2)]
    try:
        norms = compat.foreach_norm(tensors)
    except AttributeError as err:
        pytest.fail(f"{TORCH}: torch._foreach_norm is gone ({err}); torch.nn.utils.get_total_norm does it")
    assert [float(n) for n in norms] == [5.0, 2.0], f"{TORCH}: torch._foreach_norm returned {norms}"


def test_set_logging_step_sets_the_loops_counter():
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    loop = trainer.fit_loop.epoch_loop
    assert isinstance(getattr(loop, "_batches_that_stepped", None), int), (
        f"{LIGHTNING}: the training epoch loop keeps no _batches_that_stepped; "
        f"compat.set_logging_step needs Lightning's new logging-step counter")
    compat.set_logging_step(trainer, 41)
    assert loop._batches_that_stepped == 41
    assert loop.on_save_checkpoint().get("_batches_that_stepped") == 41, (
        f"{LIGHTNING}: the loop's state (what a checkpoint restores) no longer holds the logging step")


class _CountSteps(pl.LightningModule):
    """Manual optimization that steps through compat.optimizer_step_counters only."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        before, after = compat.optimizer_step_counters(optimizer)
        optimizer.zero_grad()
        self.w.sum().backward()
        before()
        optimizer.optimizer.step()
        after()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(5, 1), batch_size=1)


def test_optimizer_step_counters_count_a_step_in_global_step():
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=1)
    model = _CountSteps()
    trainer.fit(model)
    assert trainer.global_step == 5, (
        f"{LIGHTNING}: LightningOptimizer's _on_before_step/_on_after_step no longer count a "
        f"manual optimizer step in global_step; compat.optimizer_step_counters needs updating")
    assert float(model.w) == pytest.approx(1 - 5 * 0.1)


class _PublishLoss(_CountSteps):
    """Publishes a loss that rises after step 2 (as steps.py publishes train/loss)."""

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        loss = torch.tensor(float(abs(batch_idx - 2)))
        compat.publish_metric(self.trainer, "train/loss", loss, prog_bar=True)
        self.seen = (self.trainer.callback_metrics["train/loss"], self.trainer.progress_bar_metrics["train/loss"])


def test_publish_metric_reaches_callback_metrics_the_progress_bar_and_early_stopping():
    stop = pl.callbacks.EarlyStopping(monitor="train/loss", patience=0, check_on_train_epoch_end=True)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=10, callbacks=[stop])
    model = _PublishLoss()
    trainer.fit(model)
    message = (f"{LIGHTNING}: trainer.callback_metrics / progress_bar_metrics no longer keep a value "
               f"written into them; compat.publish_metric needs updating")
    assert float(model.seen[0]) == 2.0 and model.seen[1] == 2.0, message  # the epoch's last batch
    # EarlyStopping read it at each epoch's end: 2.0 twice in a row (patience 0) stops.
    assert trainer.current_epoch == 2 and float(trainer.callback_metrics["train/loss"]) == 2.0, message


@pytest.mark.parametrize("kind", ["TensorBoardLogger", "CSVLogger"])
def test_forget_logger_version_makes_the_logger_choose_the_next_free_one(kind, tmp_path):
    logger = getattr(pl.loggers, kind)(save_dir=tmp_path, name="run")
    assert logger.version == 0, f"{LIGHTNING}: {kind} no longer starts at version_0"
    (tmp_path / "run" / "version_0").mkdir(parents=True)  # another run took it meanwhile
    assert logger.version == 0, f"{LIGHTNING}: {kind} no longer caches its version"
    compat.forget_logger_version(logger)
    assert logger.version == 1 and logger.log_dir.endswith("version_1"), \
        f"{LIGHTNING}: {kind} no longer chooses again after _version is reset"


def test_reserve_run_dir_skips_a_directory_taken_meanwhile(tmp_path):
    from lightning_vae.cli import reserve_run_dir

    first = pl.loggers.TensorBoardLogger(save_dir=tmp_path, name="run")
    second = pl.loggers.TensorBoardLogger(save_dir=tmp_path, name="run")
    assert first.version == second.version == 0  # both chose before either created it
    assert reserve_run_dir(first) == tmp_path / "run" / "version_0"
    assert reserve_run_dir(second) == tmp_path / "run" / "version_1"
    assert second.log_dir == str(tmp_path / "run" / "version_1")
