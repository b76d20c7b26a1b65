"""The sweep's units as a submitit job array (SLURM, or submitit's local executor).

submitit is an optional dependency (``pip install submitit``); this module is the only one
that imports it. Each unit is one array task running ``sweep.run_job``: the same skip /
resume / move-aside logic as a local sweep, in a ``fit`` subprocess. On preemption or
timeout submitit calls the task's ``checkpoint`` and requeues it; the requeued task finds
its unit cut off and resumes it from the unit's own last checkpoint.

Defaults (any can be overridden with ``--submitit KEY=VALUE``): on SLURM one task, one GPU
and 4 CPUs per unit, 60 minutes; locally (``cluster=local``) no GPU.
"""

from __future__ import annotations

from pathlib import Path

SLURM_DEFAULTS = {"timeout_min": 60, "gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 4,
                  "nodes": 1, "slurm_signal_delay_s": 120}
LOCAL_DEFAULTS = {"timeout_min": 60, "gpus_per_node": 0, "tasks_per_node": 1}


def _submitit():
    try:
        import submitit
    except ImportError:
        raise SystemExit("--launcher submitit needs the submitit package; expected it installed "
                         "(pip install submitit), or use --dry_run for plain scheduler commands") from None
    return submitit


class UnitTask:
    """A picklable callable that runs one job; requeued (the same job) on preemption. It
    holds its unit's lock as a ``--unit`` run does (``sweep.lock_sweep``), waiting for it: a
    whole sweep of the same name on a machine that shares the folder, or the same unit
    submitted twice, runs first; then this task finds the unit finished (a no-op) or resumes it."""

    def __call__(self, job):
        from lightning_vae.sweep import lock_sweep, release_locks, run_job

        if not getattr(job, "sweep_dir", ""):
            return run_job(job)
        lock_sweep(Path(job.sweep_dir), Path(job.sweep_dir).name, unit=job.key, wait=True)
        try:
            return run_job(job)
        finally:
            release_locks()

    def checkpoint(self, job):
        """submitit's requeue hook: resubmit the same job; it resumes from the unit's checkpoint."""
        submitit = _submitit()
        return submitit.helpers.DelayedSubmission(UnitTask(), job)


def submit_array(jobs: list, folder: Path, params: dict, wait: bool, on_done, on_submitted=None) -> list:
    """Submit ``jobs`` as one array (``folder``: submitit's logs and pickles); then call
    ``on_submitted()`` (the sweep releases its lock to the tasks); with ``wait``, call
    ``on_done(rows)`` as each finishes. Returns the submitit jobs."""
    submitit = _submitit()
    params = dict(params)
    cluster = params.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    defaults = LOCAL_DEFAULTS if executor.cluster in ("local", "debug") else SLURM_DEFAULTS
    try:
        executor.update_parameters(**{**defaults, **params})
    except (ValueError, TypeError) as err:
        raise SystemExit(f"--submitit: {err}; expected parameters of submitit's "
                         f"{executor.cluster} executor") from None
    if not jobs:
        return []
    with executor.batch():
        submitted = [executor.submit(UnitTask(), job) for job in jobs]
    if on_submitted is not None:
        on_submitted()
    print(f"submitit ({executor.cluster}): {len(submitted)} tasks, job ids "
          f"{', '.join(j.job_id for j in submitted[:5])}{' ...' if len(submitted) > 5 else ''}; logs in {folder}",
          flush=True)
    if wait:
        for job in submitit.helpers.as_completed(submitted):
            try:
                on_done(job.result())
            except Exception as err:  # noqa: BLE001 - a task that died: recorded, not fatal
                print(f"submitit task {job.job_id} failed: {str(err).strip().splitlines()[-1:]}", flush=True)
    return submitted
