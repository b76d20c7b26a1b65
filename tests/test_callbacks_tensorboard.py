"""A real TensorBoard server on loopback serves what a run writes.

Two tiny runs (spread ELBO and plain ELBO) go into one logdir; the installed
``tensorboard`` is started on it as a subprocess (its own process group, port 0 so the OS
picks a free one) and stopped by its PID. Everything is checked through TensorBoard's HTTP
data API, as the UI reads it: the runs, the scalar series (compared point by point with
what ``lightning_vae.report.read_scalars`` reads from the same event files), the sample
figure (PNG bytes) and the HPARAMS tab (hyperparameters and final metrics of both runs).

The server is started twice: with ``--load_fast=false`` (TensorBoard's Python event
multiplexer) and ``--load_fast=true`` (the Rust data server that ``auto``, the default,
picks where it is installed). Standard library only on the client side.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY, fit

from lightning_vae.runs import read_scalars

START_TIMEOUT_S = 60.0  # server up and both runs loaded (it takes ~1 s on a 2-core CPU)
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# conftest's TINY runs at half the epochs (80 optimizer steps, ~5 s each on 2 cores): what
# is served matters here, not what is learnt (whether the ELBO's variance collapses so soon
# is not asserted; hp/collapse_step is checked against what the monitor logged).
RUN_ARGS = (*TINY, "--trainer.max_epochs=4")


def _arg(key: str) -> int:
    """The value of the last ``--<key>=...`` in RUN_ARGS (the CLI's last one wins)."""
    return int([a.split("=", 1)[1] for a in RUN_ARGS if a.startswith(f"--{key}=")][-1])


EPOCHS = _arg("trainer.max_epochs")
STEPS = EPOCHS * (_arg("data.n_train") // _arg("data.batch_size"))  # 4 x 20 = 80
LOG_EVERY = 10  # lightning_vae.cli's trainer default log_every_n_steps

SCALAR_TAGS = ("train/loss", "val/loss", "val/log_px", "quality/mmd", "decoder/min_std_ratio",
               "hp/val_loss", "hp/quality_mmd", "hp/collapse_step")
HP_METRICS = ("hp/val_loss", "hp/val_log_px", "hp/quality_mmd", "hp/collapse_step", "hp/diverged")


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    proc: subprocess.Popen
    log: Path  # the server's stdout + stderr

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server's log (0: all of it)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<no server log: {e}>"
        return "\n".join(lines[-n:]) or "<empty server log>"


class HTTPFailure(AssertionError):
    pass


def _request(server: Server, path: str, body: dict | None = None, **query) -> tuple[bytes, str]:
    """GET (or POST ``body`` as JSON) ``path``; the response's bytes and content type."""
    url = server.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data, headers = None, {}
    if body is not None:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[-2000:]
        raise HTTPFailure(f"{req.get_method()} {url} -> HTTP {e.code}: {detail}\n"
                          f"--- server log tail ---\n{server.tail()}") from None
    except (urllib.error.URLError, OSError) as e:
        raise HTTPFailure(f"{req.get_method()} {url} failed: {e!r}\n"
                          f"--- server log tail ---\n{server.tail()}") from None


def _json(server: Server, path: str, body: dict | None = None, **query):
    raw, ctype = _request(server, path, body, **query)
    assert ctype.startswith("application/json"), f"{path}: content type {ctype!r}, body {raw[:200]!r}"
    return json.loads(raw)


# The requests the HPARAMS dashboard sends (POST, JSON bodies: api.proto's messages).
EXPERIMENT_REQUEST = {"experimentName": ""}
SESSION_GROUPS_REQUEST = {
    "experimentName": "",
    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    "startIndex": 0,
    "sliceSize": 100,
}


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> dict:
    """A logdir holding one tiny spread run and one tiny ELBO run."""
    root = tmp_path_factory.mktemp("tb_logdir")
    extra = RUN_ARGS[len(TINY):]  # fit() passes TINY itself
    dirs = {"spread": fit("seed_spread.yaml", root, *extra), "elbo": fit("seed_elbo.yaml", root, *extra)}
    return {"root": root, "dirs": dirs,
            "names": {k: d.relative_to(root).as_posix() for k, d in dirs.items()}}


def _loaded(server: Server, names: set[str]) -> str | None:
    """None once every plugin serves both runs completely; else what is still missing."""
    runs = set(_json(server, "/data/runs"))
    if not names <= runs:
        return f"runs {sorted(runs)}"
    scalars = _json(server, "/data/plugin/scalars/tags")
    if not all("hp/val_loss" in scalars.get(n, {}) for n in names):  # the last scalar written
        return f"scalar tags of {sorted(scalars)} lack hp/val_loss"
    images = _json(server, "/data/plugin/images/tags")
    if not all("samples/scatter" in images.get(n, {}) for n in names):
        return f"image tags {images}"
    groups = _json(server, "/data/plugin/hparams/session_groups", SESSION_GROUPS_REQUEST)
    found = {g["name"] for g in groups.get("sessionGroups", [])}
    if not names <= found:
        return f"hparams session groups {sorted(found)}"
    return None


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server by its PID (kill it if it does not exit), then anything left in
    its process group (the data server it may have started); assert they are all gone."""
    pid = proc.pid
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
    assert proc.returncode is not None, f"tensorboard (pid {pid}) still running"
    with pytest.raises(ProcessLookupError):  # reaped: the PID no longer exists
        os.kill(pid, 0)
    # The group has the server's PID as its id (start_new_session) and holds only what it
    # started; its data server exits when its stdin (a pipe from the server) closes.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            pytest.fail(f"processes of tensorboard's group {pid} outlived it; killed them")
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["false", "true"], ids=lambda v: f"load_fast={v}")
def tensorboard(request, logdir, tmp_path_factory):
    """``tensorboard --logdir <logdir>`` on 127.0.0.1 (a free port), both runs loaded."""
    log = tmp_path_factory.mktemp("tb_server") / "tensorboard.log"
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir["root"]),
           "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1",
           f"--load_fast={request.param}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(base="", proc=proc, log=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        names = set(logdir["names"].values())
        state = "no 'TensorBoard ... at http://127.0.0.1:<port>/' line yet"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode} before serving:\n"
                            f"{' '.join(cmd)}\n--- server log tail ---\n{server.tail()}")
            if not server.base:
                m = re.search(r"at (http://127\.0\.0\.1:\d+)/", server.tail(n=0))
                if m:
                    server.base = m.group(1)
            if server.base:
                try:
                    state = _loaded(server, names)
                except HTTPFailure as e:  # not answering yet, or a plugin not ready
                    state = str(e).split("\n--- server log tail")[0]
                if state is None:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard not ready after {START_TIMEOUT_S:.0f} s "
                            f"({' '.join(cmd)}); last state: {state}\n"
                            f"--- server log tail ---\n{server.tail()}")
            time.sleep(0.2)
        yield server
    finally:
        _stop(proc)


# --- the tests ------------------------------------------------------------------------------


def test_server_lists_both_runs_and_the_plugins(tensorboard, logdir):
    runs = _json(tensorboard, "/data/runs")
    assert sorted(runs) == sorted(logdir["names"].values())  # seed_*/version_0, nothing else
    assert set(logdir["names"].values()) == {"seed_spread/version_0", "seed_elbo/version_0"}
    env = _json(tensorboard, "/data/environment")
    assert Path(env["data_location"]) == logdir["root"]
    plugins = _json(tensorboard, "/data/plugins_listing")
    for name in ("scalars", "images", "histograms", "distributions", "hparams"):
        assert plugins.get(name, {}).get("enabled"), f"plugin {name} not enabled: {plugins.get(name)}"
    histograms = _json(tensorboard, "/data/plugin/histograms/tags")
    for run in logdir["names"].values():
        assert {"decoder/log10_std_x", "decoder/log10_std_y", "encoder/q_z1"} <= set(histograms.get(run, {})), \
            f"{run}: histogram tags {sorted(histograms.get(run, {}))}"


def test_scalars_are_served_as_written(tensorboard, logdir):
    tags = _json(tensorboard, "/data/plugin/scalars/tags")
    for kind, run in logdir["names"].items():
        missing = [t for t in SCALAR_TAGS if t not in tags.get(run, {})]
        assert not missing, f"{run}: scalar tags {missing} not served"
        written = read_scalars(logdir["dirs"][kind])
        assert set(tags[run]) == set(written), f"{run}: served tags differ from the event files"
        series = {}
        for tag in SCALAR_TAGS:
            points = _json(tensorboard, "/data/plugin/scalars/scalars", run=run, tag=tag)
            series[tag] = [(step, value) for _wall, step, value in points]
            assert all(math.isfinite(v) for _, v in series[tag]), f"{run} {tag}: {series[tag]}"
            assert [s for s, _ in series[tag]] == [s for s, _ in written[tag]], f"{run} {tag} steps"
            assert [v for _, v in series[tag]] == pytest.approx([v for _, v in written[tag]],
                                                                 rel=1e-6, abs=0), f"{run} {tag}"
        # The expected number of points: a training scalar every LOG_EVERY steps, the
        # validation ones once per epoch, the decoder's from step 0 and at the end, the
        # hparams metrics once, at the last step.
        assert len(series["train/loss"]) == STEPS // LOG_EVERY
        assert len(series["val/loss"]) == len(series["val/log_px"]) == EPOCHS
        assert len(series["decoder/min_std_ratio"]) == STEPS // LOG_EVERY + 1
        assert series["hp/val_loss"] == [(STEPS, pytest.approx(series["val/loss"][-1][1], rel=1e-6))]
        # hp/collapse_step: the step the monitor logged (decoder/collapse_step), else -1.
        logged = (_json(tensorboard, "/data/plugin/scalars/scalars", run=run, tag="decoder/collapse_step")
                  if "decoder/collapse_step" in tags[run] else [])
        assert series["hp/collapse_step"][-1][1] == (logged[-1][2] if logged else -1), run
        if kind == "spread":
            assert not logged  # the spread ELBO's likelihood std cannot collapse


def test_sample_figure_is_served_as_png(tensorboard, logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = _json(tensorboard, "/data/plugin/images/tags")
    for kind, run in logdir["names"].items():
        assert "samples/scatter" in tags.get(run, {}), f"{run}: image tags {tags.get(run)}"
        images = _json(tensorboard, "/data/plugin/images/images", run=run, tag="samples/scatter")
        acc = EventAccumulator(str(logdir["dirs"][kind]), size_guidance={"images": 0})
        acc.Reload()
        written = acc.Images("samples/scatter")
        assert [im["step"] for im in images] == [w.step for w in written], run
        assert images[-1]["step"] == STEPS  # the figure of the final model
        for im, w in zip(images, written):
            raw, ctype = _request(tensorboard, "/data/plugin/images/individualImage?" + im["query"])
            assert ctype == "image/png", f"{run} step {im['step']}: {ctype}"
            assert raw.startswith(PNG_SIGNATURE), f"{run} step {im['step']}: {raw[:16]!r}"
            assert raw == w.encoded_image_string, f"{run} step {im['step']}: bytes differ from the file"


def test_hparams_experiment_lists_settings_and_final_metrics(tensorboard):
    exp = _json(tensorboard, "/data/plugin/hparams/experiment", EXPERIMENT_REQUEST)
    hparams = {h["name"] for h in exp.get("hparamInfos", [])}
    for name in ("objective/class_path", "objective/init_args/kl_warmup_steps", "seed",
                 "data/batch_size", "data/n_train", "hidden", "lr_schedule"):
        assert name in hparams, f"hparam {name} not in the experiment: {sorted(hparams)}"
    metrics = {m["name"]["tag"] for m in exp.get("metricInfos", [])}
    for tag in HP_METRICS + ("hp/quality_energy", "hp/quality_sliced_w2"):
        assert tag in metrics, f"metric {tag} not in the experiment: {sorted(metrics)}"


def test_hparams_experiment_covers_every_runs_settings(tensorboard):
    """Every run's settings get a column (the spread run's noise_std next to an ELBO run), and
    the objective is marked as differing: a sweep compares in the HPARAMS tab directly."""
    exp = _json(tensorboard, "/data/plugin/hparams/experiment", EXPERIMENT_REQUEST)
    infos = {h["name"]: h for h in exp.get("hparamInfos", [])}
    assert infos["objective/class_path"].get("differs") is True, infos["objective/class_path"]
    groups = _json(tensorboard, "/data/plugin/hparams/session_groups", SESSION_GROUPS_REQUEST)
    every = set().union(*(g["hparams"] for g in groups["sessionGroups"]))
    assert "objective/init_args/noise_std" in every
    assert every <= set(infos), f"hparams no column shows: {sorted(every - set(infos))}"


def test_hparams_session_groups_compare_the_runs(tensorboard, logdir):
    groups = _json(tensorboard, "/data/plugin/hparams/session_groups", SESSION_GROUPS_REQUEST)
    by_name = {g["name"]: g for g in groups["sessionGroups"]}
    assert set(by_name) == set(logdir["names"].values()), sorted(by_name)
    objective = {"spread": "lightning_vae.objectives.SpreadELBO", "elbo": "lightning_vae.objectives.ELBO"}
    for kind, run in logdir["names"].items():
        group = by_name[run]
        assert [s["name"] for s in group["sessions"]] == [run]
        hp = group["hparams"]
        assert hp.get("objective/class_path") == objective[kind], hp
        assert hp.get("objective/init_args/kl_warmup_steps") == 500, hp
        assert hp.get("seed") == 0, hp  # seed_everything: 0 in both configs
        assert hp.get("data/batch_size") == _arg("data.batch_size"), hp
        assert hp.get("data/n_train") == _arg("data.n_train"), hp
        if kind == "spread":
            assert hp.get("objective/init_args/noise_std") == pytest.approx(0.3), hp
        else:
            assert "objective/init_args/noise_std" not in hp, hp
        values = {m["name"]["tag"]: m for m in group["metricValues"]}
        missing = [t for t in HP_METRICS if t not in values]
        assert not missing, f"{run}: metrics {missing} missing: {sorted(values)}"
        for tag in HP_METRICS:
            assert math.isfinite(values[tag]["value"]), f"{run} {tag}: {values[tag]}"
            assert values[tag]["trainingStep"] == STEPS, f"{run} {tag}: {values[tag]}"
        written = read_scalars(logdir["dirs"][kind])
        for tag in ("hp/val_loss", "hp/quality_mmd", "hp/val_log_px"):
            assert values[tag]["value"] == pytest.approx(written[tag][-1][1], rel=1e-6), f"{run} {tag}"
        # The final metrics are the run's last validation numbers.
        assert values["hp/val_loss"]["value"] == pytest.approx(written["val/loss"][-1][1], rel=1e-6)
        assert values["hp/quality_mmd"]["value"] == pytest.approx(written["quality/mmd"][-1][1], rel=1e-6)
        assert values["hp/diverged"]["value"] == 0
        collapse = written.get("decoder/collapse_step")
        assert values["hp/collapse_step"]["value"] == (collapse[-1][1] if collapse else -1), run
