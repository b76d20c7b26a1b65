"""Bad input through the real CLI, one table: each case runs ``python -m lightning_vae fit``'s
``main`` (in-process: a fresh interpreter per case cost ~7 s of import each, and
``tests/test_cli.py::test_bad_input_is_one_line`` runs one case as a real subprocess) and must
end with exit 2, no traceback, and exactly one error line that names the offending key and
the value expected there; and no case may write anything: the log directory (which holds a
previous run) is byte-for-byte the same afterwards.

The table is the README's "Troubleshooting" list, and the hostile inputs found since: config
files that are not configs, points that are not points, sizes beyond the memory here, values
that would train nothing; each refused before anything is written. Every case is a ``fit``
(``ENSEMBLE`` ones through the ensemble CLI), so the parsers of the other subcommands are not
built (half of a case's time; ``results``).
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_lightning.cli import LightningCLI

from conftest import CONFIGS, fit

# Small sizes, so that a case that wrongly starts training still ends in seconds.
SMALL = [
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.n_train=256",
    "--data.n_val=64",
    "--data.n_test=64",
    "--data.batch_size=64",
    "--sample_quality.n_samples=64",
    "--sample_figure.n_points=64",
]

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # chmod does not stop root writing

POINTS = ["--data.manifold=lightning_vae.data.PointCloud"]
ADAM = ["--model.optimizer=torch.optim.Adam"]
ENSEMBLE = "{ensemble}"  # first argument of a case run by the ensemble CLI's main instead

# (id, arguments after the base command, substrings of the one error line). Placeholders:
# {tmp} the prepared folder (its files: ``_prepare``, ``_prepare_files``), {logs} the log
# directory, {run} the previous run there, {ckpt16} its checkpoint (a model with hidden=16).
# A case whose first argument is ENSEMBLE runs through the ensemble CLI's main.
CASES = [
    # unknown keys: on the command line, in a YAML file, inside a class_path's init_args
    ("unknown-key", ["--modle.hidden=3"],
     ["modle.hidden: unknown key", "did you mean model.hidden?"]),
    ("unknown-nested-key", ["--model.hiden=3"],
     ["model.hiden: unknown key", "did you mean model.hidden?"]),
    ("unknown-key-in-yaml", ["--config", "{tmp}/typo.yaml"],
     ["model.hiden: unknown key", "did you mean model.hidden?"]),
    ("unknown-init-arg", ["--model.objective.init_args.nosie_std=0.1"],
     ["model.objective.init_args.nosie_std: unknown key", "did you mean noise_std?"]),
    # wrong types and values
    ("wrong-type", ["--data.batch_size=abc"], ["data.batch_size: expected an integer, got 'abc'"]),
    ("seed-not-a-number", ["--seed_everything=abc"],
     ["seed_everything: expected true or false or an integer, got 'abc'"]),
    ("not-a-choice", ["--model.lr_schedule=linear"],
     ["model.lr_schedule: expected one of 'constant', 'cosine', got 'linear'"]),
    ("negative-noise", ["--model.objective.init_args.noise_std=-1"],
     ["model.objective.init_args.noise_std must be >= 0, got -1.0"]),
    ("nan-noise", ["--model.objective.init_args.noise_std=nan"],
     ["model.objective.init_args.noise_std: expected a number", "got 'nan'"]),
    ("yaml-nan-noise", ["--model.objective.init_args.noise_std=.nan"],
     ["model.objective.init_args.noise_std must be >= 0, got nan"]),
    ("zero-batch-size", ["--data.batch_size=0"], ["data.batch_size must be >= 1, got 0"]),
    ("negative-batch-size", ["--data.batch_size=-5"], ["data.batch_size must be >= 1, got -5"]),
    ("dataset-smaller-than-a-batch", ["--data.n_train=10", "--data.batch_size=256"],
     ["data.batch_size must be <= n_train (10), got 256"]),
    ("zero-hidden-width", ["--model.hidden=0"], ["model.hidden must be an integer >= 1, got 0"]),
    ("ambient-dim-below-natural", ["--data.manifold=lightning_vae.data.Circle",
                                   "--data.manifold.ambient_dim=1"],
     ["data.manifold.init_args.ambient_dim must be >= 2 (the natural dimension of Circle), got 1"]),
    ("negative-max-epochs", ["--trainer.max_epochs=-5"],
     ["trainer.max_epochs must be -1 (no limit) or an integer >= 1, got -5"]),
    ("zero-max-steps", ["--trainer.max_steps=0"],
     ["trainer.max_steps must be -1 (no limit) or an integer >= 1, got 0"]),
    # classes that do not exist
    ("unknown-objective-class", ["--model.objective=lightning_vae.objectives.Nope"],
     ["model.objective: unknown class lightning_vae.objectives.Nope",
      "expected a subclass of lightning_vae.objectives.Objective"]),
    ("unknown-manifold-class", ["--data.manifold=lightning_vae.data.Cirlce"],
     ["data.manifold: unknown class lightning_vae.data.Cirlce",
      "expected a subclass of lightning_vae.data.manifolds.Manifold"]),
    # files: config, checkpoint
    ("missing-config-file", ["--config", "{tmp}/missing.yaml"],
     ["--config: file does not exist", "missing.yaml", "expected the path of a YAML config file"]),
    ("config-not-yaml", ["--config", "{tmp}/broken.yaml"],
     ["--config: not valid YAML", "expected a YAML mapping"]),
    ("missing-checkpoint", ["--ckpt_path={tmp}/missing.ckpt"],
     ["ckpt_path: checkpoint file not found", "expected an existing .ckpt file"]),
    ("corrupt-checkpoint", ["--ckpt_path={tmp}/garbage.ckpt"],
     ["ckpt_path:", "garbage.ckpt", "expected"]),
    ("checkpoint-of-another-shape", ["--model.hidden=32", "--ckpt_path={ckpt16}"],
     ["ckpt_path:", "model.hidden is 16 in the checkpoint, 32 in the config",
      "expected the checkpoint's model settings"]),
    # devices
    ("gpu-without-gpu", ["--trainer.accelerator=gpu"],
     ["trainer.accelerator: 'gpu' needs a GPU", "expected 'cpu' or 'auto'"]),
    ("more-devices-than-cores", ["--trainer.accelerator=cpu", "--trainer.devices=1024"],
     ["trainer.devices asks for 1024", "expected at most"]),
    # output directories: never overwrite, never half-create
    ("existing-run-directory", ["--trainer.logger.init_args.version=0"],
     ["trainer.logger.init_args.version: the run directory", "version_0 already exists",
      "expected a new one"]),
    ("existing-checkpoint-directory", ["--checkpoint.dirpath={run}/checkpoints"],
     ["checkpoint.dirpath:", "already holds files", "expected a new or empty directory"]),
    ("log-dir-under-a-file", ["--trainer.logger.init_args.save_dir={tmp}/afile/logs"],
     ["trainer.logger.init_args.save_dir: cannot create", "afile is a file",
      "expected a writable directory"]),
    pytest.param("read-only-log-dir", ["--trainer.logger.init_args.save_dir={tmp}/readonly/logs"],
                 ["trainer.logger.init_args.save_dir: cannot write", "is not writable",
                  "expected a writable directory"],
                 marks=pytest.mark.skipif(AS_ROOT, reason="root writes to a chmod 555 directory")),
    # a user's own points
    ("nan-in-points", [*POINTS, "--data.manifold.path={tmp}/nan.npy"],
     ["data.manifold.init_args.path: expected finite numbers", "nan.npy holds 1 non-finite values"]),
    ("non-numeric-csv", [*POINTS, "--data.manifold.path={tmp}/words.csv"],
     ["data.manifold.init_args.path:", "words.csv is not a numeric CSV", "'abc'"]),
    ("too-few-points", [*POINTS, "--data.manifold.path={tmp}/few.npy"],
     ["data.n_train + n_val + n_test must be <= 20", "got 256 + 64 + 64 = 384"]),
    ("points-path-not-given", POINTS,
     ["data.manifold.init_args.path: missing (required, no default); expected a value"]),
    # sizes a split needs: two training points (a per-axis std), two validation points
    # (the two-sample quality metrics); memory to draw them, checked before drawing
    ("one-training-point", ["--data.n_train=1", "--data.batch_size=1"],
     ["data.n_train must be >= 2 (the per-axis std of the training data needs two points), got 1"]),
    ("one-validation-point", ["--data.n_val=1"],
     ["data.n_val must be >= 2 (the sample-quality metrics need two validation points), got 1"]),
    ("data-beyond-memory", ["--data.n_train=1000000000000"],
     ["data.n_train: drawing n_train + n_val + n_test = 1000000000000 + 64 + 64 points of 2 coordinates",
      "of memory available here", "expected n_train + n_val + n_test <="]),
    ("data-seed-overflow", ["--data.data_seed=99999999999999999999999"],
     ["data.data_seed must be an integer in -9223372036854775808 .. 18446744073709551615"]),
    ("rotation-beyond-memory", ["--data.manifold=lightning_vae.data.Circle",
                                "--data.manifold.ambient_dim=1000000"],
     ["data.manifold.init_args.ambient_dim: the random rotation of R^1000000", "expected a smaller ambient_dim"]),
    # the model's memory, checked before it is built
    ("model-width-beyond-memory", ["--model.hidden=1000000000"],
     ["model.hidden: 1000000000 would need about", "of memory available here", "expected model.hidden <= "]),
    ("latent-states-beyond-memory", ["--model.latent=lightning_vae.latents.CategoricalLatent",
                                     "--model.latent.init_args.n_states=1000000000"],
     ["model.latent.init_args.n_states: 1000000000 would need", "expected model.latent.init_args.n_states <= "]),
    ("quality-samples-beyond-memory", ["--sample_quality.n_samples=1000000000000"],
     ["sample_quality.n_samples: 1000000000000 would need", "expected sample_quality.n_samples <= "]),
    # the optimizer: lr a finite number > 0, and what torch checks, before the run starts
    ("negative-learning-rate", [*ADAM, "--model.optimizer.lr=-0.001"],
     ["model.optimizer.init_args.lr must be a finite number > 0, got -0.001"]),
    ("nan-learning-rate", [*ADAM, "--model.optimizer.lr=.nan"],
     ["model.optimizer.init_args.lr must be a finite number > 0, got nan"]),
    ("zero-learning-rate", [*ADAM, "--model.optimizer.lr=0"],
     ["model.optimizer.init_args.lr must be a finite number > 0, got 0.0 (a learning rate of 0 trains nothing)"]),
    ("betas-out-of-range", [*ADAM, "--model.optimizer.init_args.betas=[1.5,0.9]"],
     ["model.optimizer.init_args.betas: Invalid beta parameter at index 0: 1.5; expected two numbers in [0, 1)"]),
    # the trainer: cadences of 0, nothing to train, no end for the cosine schedule
    ("endless-cosine-schedule", ["--trainer.max_epochs=-1"],
     ["trainer.max_epochs: -1 (no limit)", "leaves model.lr_schedule 'cosine' no horizon",
      "expected a finite trainer.max_epochs (>= 1) or trainer.max_steps"]),
    ("validate-every-zero-epochs", ["--trainer.check_val_every_n_epoch=0"],
     ["trainer.check_val_every_n_epoch must be an integer >= 1, or null", "got 0"]),
    ("validate-every-zero-steps", ["--trainer.val_check_interval=0"],
     ["trainer.val_check_interval must be > 0", "got 0"]),
    ("zero-train-batches", ["--trainer.limit_train_batches=0"],
     ["trainer.limit_train_batches must be > 0", "got 0.0: it would train nothing"]),
    ("train-batches-below-one-batch", ["--trainer.limit_train_batches=0.1"],
     ["trainer.limit_train_batches: 0.1 of the 4 training batches of an epoch is less than one batch",
      "expected at least 0.25"]),
    ("accumulate-zero-batches", ["--trainer.accumulate_grad_batches=0"],
     ["trainer.accumulate_grad_batches must be an integer >= 1, got 0"]),
    ("unknown-strategy", ["--trainer.strategy=dpp"],
     ["trainer.strategy: unknown strategy 'dpp'; did you mean 'ddp'?", "expected 'auto' or one of ddp, ",
      "ddp_spawn"]),
    # seeds
    ("seed-out-of-range", ["--seed_everything=99999999999"],
     ["seed_everything must be an integer in 0 .. 4294967295 (2**32 - 1)", "got 99999999999"]),
    # config files that are not configs: each names the file and what was expected
    ("config-a-list", ["--config", "{tmp}/list.yaml"],
     ["--config:", "list.yaml holds a YAML list; expected a YAML mapping of keys to values"]),
    ("config-empty", ["--config", "{tmp}/empty.yaml"],
     ["--config:", "empty.yaml is empty (no settings); expected a YAML mapping of keys to values"]),
    ("config-a-scalar", ["--config", "{tmp}/scalar.yaml"],
     ["--config:", "scalar.yaml holds the single value '42'; expected a YAML mapping of keys to values"]),
    ("config-binary", ["--config", "{tmp}/binary.yaml"],
     ["--config:", "binary.yaml is not UTF-8 text (byte 0x89 at offset 0, line 1); expected a YAML config file "
      "in UTF-8 text"]),
    ("config-utf-16", ["--config", "{tmp}/utf16.yaml"],
     ["--config:", "utf16.yaml is UTF-16 text; expected UTF-8 text"]),
    ("config-too-big", ["--config", "{tmp}/big.yaml"],
     ["--config:", "big.yaml is 1.2 MB; expected a YAML config file of at most 1 MiB"]),
    ("config-a-directory", ["--config", "{tmp}/adir.yaml"],
     ["--config: path is not a file:", "adir.yaml", "expected the path of a YAML config file"]),
    pytest.param("config-unreadable", ["--config", "{tmp}/noread.yaml"],
                 ["--config:", "noread.yaml", "expected a readable YAML config file"],
                 marks=pytest.mark.skipif(AS_ROOT, reason="root reads a chmod 000 file")),
    ("config-billion-laughs", ["--config", "{tmp}/bomb.yaml"],
     ["--config:", "bomb.yaml: its YAML aliases expand to more than 10000 values",
      "expected a config without nested aliases"]),
    ("config-duplicate-key", ["--config", "{tmp}/duplicate.yaml"],
     ["--config:", "duplicate.yaml: line 3: the key model.hidden is given twice (also on line 2); expected each "
      "key once"]),
    ("config-python-tag", ["--config", "{tmp}/python.yaml"],
     ["--config:", "python.yaml: line 1: the YAML tag !!python/object/apply:os.system is not allowed",
      "expected plain YAML values (no tags)"]),
    ("model-a-list-in-yaml", ["--config", "{tmp}/modellist.yaml"],
     ["--config:", "modellist.yaml: line 1: model holds a YAML list; expected a mapping of model settings"]),
    ("model-a-list-on-the-command-line", ["--model=[1,2]"],
     ["model: expected a mapping of model settings", "got '[1,2]'"]),
    ("inline-config-a-list", ["--config", "[1, 2]"],
     ["--config: the value '[1, 2]' holds a YAML list; expected a YAML mapping of keys to values"]),
    ("inline-config-model-a-list", ["--config", "{{model: [1, 2]}}"],  # (braces doubled: str.format)
     ["--config: the value '{model: [1, 2]}': line 1: model holds a YAML list; expected a mapping of model settings"]),
    # more of a user's own points
    ("identical-points", [*POINTS, "--data.manifold.path={tmp}/same.npy"],
     ["data.manifold.init_args.path:", "same.npy: all 500 points are the same point (1, 1): zero spread",
      "expected points that vary along at least one axis"]),
    ("latin-1-csv", [*POINTS, "--data.manifold.path={tmp}/latin1.csv"],
     ["data.manifold.init_args.path:", "latin1.csv is not UTF-8 text: byte 0xe9 at offset 17 (line 4)",
      "expected a numeric CSV in UTF-8 (or ASCII) text"]),
    ("ragged-csv", [*POINTS, "--data.manifold.path={tmp}/ragged.csv"],
     ["data.manifold.init_args.path:", "ragged.csv is not a numeric CSV", "number of columns changed"]),
    ("three-dimensional-npy", [*POINTS, "--data.manifold.path={tmp}/cube.npy"],
     ["data.manifold.init_args.path:", "cube.npy must hold a 2-D array (points x coordinates), got shape (10, 5, 2)"]),
    ("pickled-npy", [*POINTS, "--data.manifold.path={tmp}/pickled.npy"],
     ["data.manifold.init_args.path:", "pickled.npy could not be read as .npy",
      "expected a .npy file of real numbers"]),
    ("npy-header-claims-terabytes", [*POINTS, "--data.manifold.path={tmp}/liar.npy"],
     ["data.manifold.init_args.path:", "liar.npy could not be read as .npy", "expected a .npy file"]),
    # more variants of the above: the same checks, other values and files
    ("no-test-points", ["--data.n_test=0"], ["data.n_test must be >= 1, got 0"]),
    ("fractional-batch-size", ["--data.batch_size=1.5"], ["data.batch_size: expected an integer, got '1.5'"]),
    ("batch-size-beyond-the-data", ["--data.batch_size=1000000000000"],
     ["data.batch_size must be <= n_train (256), got 1000000000000"]),
    ("shuffle-seed-overflow", ["--data.shuffle_seed=99999999999999999999999"],
     ["data.shuffle_seed must be an integer in", "got 99999999999999999999999"]),
    ("rotation-seed-overflow", ["--data.manifold=lightning_vae.data.Circle", "--data.manifold.ambient_dim=3",
                                "--data.manifold.rotation_seed=99999999999999999999999"],
     ["data.manifold.init_args.rotation_seed must be <= 18446744073709551615"]),
    ("blobs-beyond-memory", ["--data.manifold=lightning_vae.data.GaussianBlobs",
                             "--data.manifold.n_blobs=1000000000000"],
     ["data.manifold.init_args.n_blobs: the centres of 1000000000000 blobs", "expected a smaller n_blobs"]),
    ("model-depth-beyond-memory", ["--model.depth=100000000"],
     ["model.depth: 100000000 would need about", "expected model.depth <= "]),
    ("latent-dim-beyond-memory", ["--model.latent=lightning_vae.latents.GaussianLatent",
                                  "--model.latent.init_args.dim=1000000000"],
     ["model.latent.init_args.dim: 1000000000 would need about", "expected model.latent.init_args.dim <= "]),
    ("iwae-samples-beyond-memory", ["--model.latent=lightning_vae.latents.GaussianLatent",
                                    "--model.latent.init_args.iwae_samples=1000000000"],
     ["model.latent.init_args.iwae_samples: 1000000000 would need", "expected model.latent.init_args.iwae_samples"]),
    ("data-dim-beyond-memory", ["--data.manifold=lightning_vae.data.TwoClusters",
                                "--data.manifold.dim=1000000000"],
     ["data.manifold.init_args.dim: 1000000000 would need", "expected data.manifold.init_args.dim <= "]),
    ("infinite-noise", ["--model.objective.init_args.noise_std=.inf"],
     ["model.objective.init_args.noise_std", "got inf", "a finite number"]),
    ("negative-momentum", ["--model.optimizer=torch.optim.SGD", "--model.optimizer.init_args.momentum=-1"],
     ["model.optimizer.init_args.momentum: Invalid momentum value: -1.0; expected a number >= 0"]),
    ("validate-every-negative-epochs", ["--trainer.check_val_every_n_epoch=-3"],
     ["trainer.check_val_every_n_epoch must be an integer >= 1, or null", "got -3"]),
    ("negative-train-batches", ["--trainer.limit_train_batches=-1"],
     ["trainer.limit_train_batches must be > 0", "got -1.0"]),
    ("negative-seed", ["--seed_everything=-1"], ["seed_everything must be an integer in 0 .. 4294967295", "got -1"]),
    ("config-only-empty-keys", ["--config", "{tmp}/onlynull.yaml"],
     ["--config:", "onlynull.yaml sets no values", "expected a YAML mapping of keys to values"]),
    ("config-latin-1", ["--config", "{tmp}/latin1.yaml"],
     ["--config:", "latin1.yaml is not UTF-8 text (byte 0xe9", "expected a YAML config file in UTF-8 text"]),
    ("config-nul-byte", ["--config", "{tmp}/nul.yaml"],
     ["--config:", "nul.yaml holds a NUL byte at offset 18", "expected a YAML config file in UTF-8 text"]),
    ("config-recursive-alias", ["--config", "{tmp}/recursive.yaml"],
     ["--config:", "recursive.yaml: line 2: trainer.callbacks[0] refers to itself", "expected plain values"]),
    ("config-tab-indent", ["--config", "{tmp}/tabs.yaml"],
     ["--config: not valid YAML:", "tabs.yaml", "(a tab: YAML indents with spaces)", "expected a YAML mapping"]),
    ("config-huge-integer", ["--config", "{tmp}/hugeint.yaml"],
     ["--config:", "hugeint.yaml: line 2: model.hidden is an integer of 5000 digits",
      "expected a number of at most 4300 digits"]),
    ("trainer-a-word-in-yaml", ["--config", "{tmp}/trainerword.yaml"],
     ["--config:", "trainerword.yaml: line 1: trainer holds the single value 'fast'",
      "expected a mapping of trainer settings"]),
    ("model-a-list-under-fit-in-yaml", ["--config", "{tmp}/fitlist.yaml"],
     ["--config:", "fitlist.yaml: line 2: model holds a YAML list; expected a mapping of model settings"]),
    ("a-single-point", [*POINTS, "--data.manifold.path={tmp}/single.csv"],
     ["data.manifold.init_args.path:", "single.csv holds a single point", "expected many points"]),
    ("nul-byte-csv", [*POINTS, "--data.manifold.path={tmp}/nul.csv"],
     ["data.manifold.init_args.path:", "nul.csv holds a NUL character", "expected a numeric CSV in UTF-8 text"]),
    ("empty-csv", [*POINTS, "--data.manifold.path={tmp}/empty.csv"],
     ["data.manifold.init_args.path:", "empty.csv holds no points"]),
    ("inf-in-csv", [*POINTS, "--data.manifold.path={tmp}/inf.csv"],
     ["data.manifold.init_args.path: expected finite numbers", "inf.csv holds 1 non-finite values"]),
    ("one-dimensional-npy", [*POINTS, "--data.manifold.path={tmp}/flat.npy"],
     ["data.manifold.init_args.path:", "flat.npy must hold a 2-D array", "got shape (500,)"]),
    ("empty-npy", [*POINTS, "--data.manifold.path={tmp}/empty.npy"],
     ["data.manifold.init_args.path:", "empty.npy could not be read as .npy"]),
    ("points-a-directory", [*POINTS, "--data.manifold.path={tmp}/adir.yaml"],
     ["data.manifold.init_args.path:", "adir.yaml is a directory; expected a point cloud file"]),
    ("checkpoint-a-text-file", ["--ckpt_path={tmp}/text.ckpt"], ["ckpt_path:", "text.ckpt", "expected"]),
    # checkpoints that are not checkpoints
    ("checkpoint-a-directory", ["--ckpt_path={tmp}/adir.yaml"], ["ckpt_path:", "adir.yaml", "expected"]),
    ("checkpoint-empty", ["--ckpt_path={tmp}/empty.ckpt"], ["ckpt_path:", "empty.ckpt", "expected"]),
    # the ensemble CLI (python -m lightning_vae.ensemble fit): the same checks, and its seeds
    ("ensemble-seed-out-of-range", [ENSEMBLE, "--model.seeds=[0,99999999999]"],
     ["model.seeds[1] must be an integer in 0 .. 4294967295", "got 99999999999"]),
    ("ensemble-zero-learning-rate", [ENSEMBLE, *ADAM, "--model.optimizer.lr=0"],
     ["model.optimizer.init_args.lr must be a finite number > 0, got 0.0"]),
    ("ensemble-model-a-list-in-yaml", [ENSEMBLE, "--config", "{tmp}/modellist.yaml"],
     ["--config:", "modellist.yaml: line 1: model holds a YAML list"]),
    ("ensemble-identical-points", [ENSEMBLE, *POINTS, "--data.manifold.path={tmp}/same.npy"],
     ["data.manifold.init_args.path:", "same.npy: all 500 points are the same point"]),
    ("ensemble-width-beyond-memory", [ENSEMBLE, "--model.hidden=1000000000"],
     ["model.hidden: 1000000000 would need about", "expected model.hidden <= "]),
]


def _id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: (kind, size, mtime, sha256) for files; directories too, so a
    new empty run directory counts as a change."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir", path.stat().st_mtime_ns)
        else:
            st = path.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _prepare(tmp: Path) -> dict[str, str]:
    logs = tmp / "logs"
    run = fit("seed_spread.yaml", logs, "--model.hidden=16", *SMALL)
    (logs / "notes.txt").write_text("a file of the user's, next to the runs\n")
    (tmp / "typo.yaml").write_text("model:\n  hiden: 3\n")
    (tmp / "broken.yaml").write_text("model: [unclosed\n  hidden: 3\n")
    (tmp / "garbage.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "afile").write_text("not a directory\n")
    readonly = tmp / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    points = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    np.save(tmp / "few.npy", points[:20])
    points[7, 1] = np.nan
    np.save(tmp / "nan.npy", points)
    (tmp / "words.csv").write_text("x,y\n1,2\n3,abc\n")
    _prepare_files(tmp, points)
    return {"tmp": str(tmp), "logs": str(logs), "run": str(run),
            "ckpt16": str(run / "checkpoints" / "last.ckpt"), "ensemble": ENSEMBLE}


class _Trap:
    """Unpickled, it creates a file (``open(path, "w")``): a pickled .npy must never be."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _prepare_files(tmp: Path, points: np.ndarray) -> None:
    """The hostile files of the table: configs that are not configs, points that are not."""
    texts = {
        "list.yaml": "- a\n- b\n", "empty.yaml": "", "scalar.yaml": "42\n", "onlynull.yaml": "model:\n",
        "modellist.yaml": "model: [1, 2]\n", "trainerword.yaml": "trainer: fast\n",
        "fitlist.yaml": "fit:\n  model: [1]\n", "duplicate.yaml": "model:\n  hidden: 8\n  hidden: 16\n",
        "tabs.yaml": "model:\n\thidden: 8\n", "python.yaml": "model: !!python/object/apply:os.system ['echo x']\n",
        "hugeint.yaml": "model:\n  hidden: " + "9" * 5000 + "\n", "noread.yaml": "model:\n  hidden: 8\n",
        "recursive.yaml": "trainer:\n  callbacks: &a [*a]\n",
        "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "big.yaml": ("#" + "x" * 98 + "\n") * 12_000 + "model:\n  hidden: 8\n",
        "single.csv": "1,2\n", "empty.csv": "", "ragged.csv": "1,2\n3,4,5\n6,7\n",
        "inf.csv": "x,y\n1,2\ninf,3\n", "text.ckpt": "not a checkpoint\n",
    }
    for name, text in texts.items():
        (tmp / name).write_text(text)
    raw = {"binary.yaml": b"\x89PNG\r\n\x1a\nIHDR", "latin1.yaml": "model:\n  hidden: 8 # caf\xe9\n".encode("latin-1"),
           "utf16.yaml": "model:\n  hidden: 8\n".encode("utf-16"), "nul.yaml": b"model:\n  hidden: 8\x00\n",
           "latin1.csv": "x,y\n1,2\n3,4\n# caf\xe9\n".encode("latin-1"), "nul.csv": b"1,2\n3,\x004\n",
           "empty.npy": b"", "empty.ckpt": b""}
    for name, data in raw.items():
        (tmp / name).write_bytes(data)
    (tmp / "adir.yaml").mkdir()
    np.save(tmp / "same.npy", np.ones((500, 2), np.float32))
    np.save(tmp / "cube.npy", np.zeros((10, 5, 2), np.float32))
    np.save(tmp / "flat.npy", points[:, 0])
    np.save(tmp / "pickled.npy", np.array([_Trap(tmp / "unpickled.txt"), None], dtype=object), allow_pickle=True)
    with open(tmp / "liar.npy", "wb") as f:  # a header claiming 8 TB, 64 bytes of data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 2)})
        f.write(bytes(64))


def _run(args: list[str], places: dict[str, str]) -> SimpleNamespace:
    """``main`` of the CLI on ``fit`` + args, in ``places["tmp"]``: its exit code and stderr."""
    from lightning_vae.cli import main

    args = [a.format(**places) for a in args]
    if args[:1] == [ENSEMBLE]:  # the ensemble CLI
        from lightning_vae.ensemble import main

        args = args[1:]
    base = ["--config", str(CONFIGS / "seed_spread.yaml")]
    if "--config" in args:  # the case's own config file replaces the shipped one
        base = []
    err, code = io.StringIO(), 0
    with redirect_stderr(err):
        try:
            main(["fit", *base, *SMALL, f"--trainer.logger.init_args.save_dir={places['logs']}",
                  f"--trainer.default_root_dir={places['logs']}", *args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every case once, in parallel; the folder's snapshot before and after."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    places = _prepare(tmp)
    before = _snapshot(tmp)
    cases = [c.values if hasattr(c, "values") else c for c in CASES]
    if AS_ROOT:
        cases = [c for c in cases if c[0] not in ("read-only-log-dir", "config-unreadable")]
    cwd = os.getcwd()
    mp = pytest.MonkeyPatch()
    # Every case is a fit: the parsers LightningCLI builds for validate, test and predict on
    # every call (half of a case's time) are left out; fit's parser and messages are the same.
    fit_only = {"fit": LightningCLI.subcommands()["fit"]}
    mp.setattr(LightningCLI, "subcommands", staticmethod(lambda: fit_only))
    # The same answer on a GPU machine: the devices cases are about a CPU-only one.
    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setattr(torch.cuda, "device_count", lambda: 0)
    mp.delenv("LVAE_TRACEBACK", raising=False)
    try:
        os.chdir(tmp)
        (tmp / "noread.yaml").chmod(0)  # after the snapshot, which reads every file
        procs = {c[0]: _run(c[1], places) for c in cases}
    finally:
        os.chdir(cwd)
        mp.undo()
        (tmp / "readonly").chmod(0o755)  # so that pytest can remove it
        (tmp / "noread.yaml").chmod(0o644)
    after = _snapshot(tmp)
    after.pop("readonly", None)
    before.pop("readonly", None)
    return {"procs": procs, "before": before, "after": after}


@pytest.mark.parametrize("name,args,expected", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_line_naming_key_and_expected_value(results, name, args, expected):
    proc = results["procs"][name]
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}: {err[-1500:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, err[-1500:]
    line = errors[0]
    assert line.startswith("lightning_vae: error: ") and "internal error" not in line, line
    for part in expected:
        assert part in line, f"{part!r} not in {line!r}"


def test_no_bad_input_writes_or_overwrites_anything(results):
    before, after = results["before"], results["after"]
    assert any("checkpoints/last.ckpt" in p for p in before)  # the previous run is there
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    assert not (new or gone or changed), f"new: {new}, removed: {gone}, modified: {changed}"


def test_the_table_has_at_least_15_cases():
    assert len(CASES) >= 15 and len({_id(c) for c in CASES}) == len(CASES)


def test_a_read_only_log_dir_is_refused(tmp_path, monkeypatch):
    """The check behind "read-only-log-dir", also where the tests run as root (chmod 555
    does not stop root, so the subprocess case is skipped there): a directory without write
    permission is refused before anything is created."""
    from lightning_vae import preflight

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(preflight.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(ValueError, match=r"^trainer.logger.init_args.save_dir: cannot write to "
                                         r".*locked/logs: .*locked is not writable; "
                                         r"expected a writable directory$"):
        preflight.check_writable("trainer.logger.init_args.save_dir", locked / "logs")
    preflight.check_writable("trainer.logger.init_args.save_dir", tmp_path / "free" / "logs")  # fine
    assert not (locked / "logs").exists() and not (tmp_path / "free").exists()


# --- accepted, not refused: legitimate inputs near the refused ones -----------------------


def test_one_column_points_are_measured():
    """Data of one coordinate (a one-column point cloud, TwoClusters(dim=1)) is legitimate:
    the model, the decoder monitor and the sample quality work at D = 1 (torchmetrics gives
    the per-axis W1 as a 0-d tensor there, which SampleQuality reads as one axis)."""
    from lightning_vae.callbacks import SampleQuality
    from lightning_vae.data import ManifoldDataModule, TwoClusters
    from lightning_vae.model import VAE

    dm = ManifoldDataModule(TwoClusters(dim=1), n_train=64, n_val=32, n_test=8, batch_size=8)
    dm.setup()
    values = SampleQuality(n_samples=32).compute(VAE(data_dim=1), dm)
    assert {"quality/mmd", "quality/energy", "quality/sliced_w2", "quality/w1_x"} <= set(values)
    assert all(np.isfinite(v) for v in values.values()), values


def test_the_decoder_monitor_survives_data_without_spread():
    """A data scale of 0 (or NaN), which the CLI refuses, gives NaN ratios and no collapse
    from a datamodule of a user's own, never a ZeroDivisionError."""
    from lightning_vae.callbacks import DecoderVarianceMonitor

    for scale in (0.0, float("nan")):
        monitor = DecoderVarianceMonitor()
        trainer = SimpleNamespace(datamodule=SimpleNamespace(data_scale=scale, axis_std=torch.zeros(2)))
        ratio = monitor._check(trainer, SimpleNamespace(), 0, torch.full((2, 2), 1e-9))
        assert np.isnan(ratio) and monitor.collapse is None


@pytest.mark.parametrize("name,data", [
    ("utf16.csv", "x,y\n1,2\n3,5\n".encode("utf-16")),  # with its byte-order mark
    ("bom.csv", b"\xef\xbb\xbfx,y\n1,2\n3,5\n"),
    ("comments.csv", b"# my points\n1,2\n3,5\n"),
    ("ints.npy", None),
])
def test_point_clouds_in_other_encodings_and_types_load(tmp_path, name, data):
    from lightning_vae.data.pointcloud import load_points

    path = tmp_path / name
    if data is None:
        np.save(path, np.array([[1, 2], [3, 5]], dtype=np.int64))
    else:
        path.write_bytes(data)
    assert torch.equal(load_points(str(path)), torch.tensor([[1.0, 2.0], [3.0, 5.0]]))


def test_a_point_cloud_beyond_the_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from lightning_vae import preflight
    from lightning_vae.data.pointcloud import load_points

    path = tmp_path / "big.npy"
    np.save(path, np.zeros((1000, 2), np.float32))
    monkeypatch.setattr(preflight, "available_memory", lambda: 10_000)
    with pytest.raises(ValueError, match=r"big.npy holds 1000 x 2 values, 8 kB as float32; reading it would take "
                                         r"about 16 kB, more than 50% of the 10 kB of memory available here"):
        load_points(str(path))
