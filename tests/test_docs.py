"""The README's TensorBoard tag list is complete and not stale: every tag that runs of the
shipped configs write is listed, and every listed tag is written by one of them."""

from __future__ import annotations

import re

import pytest

from conftest import ICA_TINY, ROOT, fit, fit_ica


def documented_tags() -> list[str]:
    """Backticked tags before the ': ' of each '- ' item of "What TensorBoard shows"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### What TensorBoard shows"):text.index("### When a run diverges")]
    tags = []
    for line in section.splitlines():
        if line.startswith("- "):
            head = line[2:].split(": ", 1)[0]
            tags += [t for t in re.findall(r"`([^`]+)`", head) if "/" in t]
    return tags


def pattern(tag: str) -> re.Pattern:
    """`decoder/std_<axis>_z<k>` -> decoder/std_\\w+_z\\w+ (placeholders in angle brackets)."""
    return re.compile("".join(r"\w+" if part.startswith("<") else re.escape(part)
                              for part in re.split(r"(<[^>]+>)", tag)) + "$")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path_factory.mktemp("logs")
    tags: set[str] = set()
    # An image config too (tiny: its own sizes), its feature network cached under tmp.
    image = ["--data.n_train=256", "--data.n_val=64", "--data.n_test=32", "--data.batch_size=32",
             "--model.network.init_args.width=4", "--image_quality.n_samples=64", "--image_quality.feature_steps=50",
             f"--image_quality.cache_dir={root / 'cache'}", "--model.objective.init_args.steps=4"]
    for config, extra in (("seed_elbo.yaml", []), ("seed_spread.yaml", []), ("seed_denoise.yaml", []),
                          ("seed_elbo_diverge.yaml", []), ("circle_spread.yaml", []),
                          ("circle_gauss_spread.yaml", []), ("circle_learned_spread.yaml", []),
                          ("delta_transform_spread.yaml", []),
                          ("fading_delta_gaussian.yaml", image)):
        # One epoch writes every tag; the image run needs two (train/warm_start's logging step).
        run = fit(config, root, f"--trainer.max_epochs={2 if extra else 1}", *extra)
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
        acc.Reload()
        for kind in ("scalars", "images", "histograms"):
            tags.update(acc.Tags()[kind])
    # Linear ICA by EM (another model): spread EM writes every ICA tag, and test/* comes
    # from a test of its checkpoint.
    from lightning_vae.cli import main

    run = fit_ica("ica_spread.yaml", root)
    main(["test", "--config", "ica_spread", *ICA_TINY, f"--trainer.logger.init_args.save_dir={root}",
          f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    for folder in sorted((root / "ica_spread").glob("version_*")):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def test_the_readme_lists_tags_one_per_pattern():
    tags = documented_tags()
    assert len(tags) > 40 and len(tags) == len(set(tags)), tags
    assert all(not any(c in t for c in "*{}") for t in tags), "no wildcards: each tag spelled out"


def test_every_written_tag_is_documented(written):
    patterns = [pattern(t) for t in documented_tags()]
    undocumented = sorted(t for t in written if not any(p.match(t) for p in patterns))
    assert not undocumented, f"tags written but not in the README: {undocumented}"


def test_every_documented_tag_is_written(written):
    stale = [t for t in documented_tags() if not any(pattern(t).match(w) for w in written)]
    assert not stale, f"README tags no shipped config writes: {stale}"
