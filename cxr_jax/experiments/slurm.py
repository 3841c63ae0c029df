"""An experiment's runs on a SLURM cluster: every unfinished run one job of a job array.

config.experiment.executor="slurm" (fields in cxr_jax/config.py, experiment.slurm). The jobs are
submitted through submitit; each runs `runner.run_one`, the code a local run goes through (config
identity check, skip if finished, train_fn, which resumes from the run's latest checkpoint), in
the run's own workdir:

  <workdir>/runs/<run>/slurm.json   its jobs, latest last: job id, submission time, log files
  <workdir>/slurm_logs/             submitit's files per job: <job>_0_log.out / .err, pickles

A second start of the same command asks squeue for the state of each run's latest job: a run
whose job is pending or running is left alone (never two jobs for one run), a run whose job ended
without metrics.json (failed, cancelled, pre-empted, out of time) is submitted again and resumes.
On pre-emption or the time limit submitit requeues the job itself (CellJob.checkpoint).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cxr_jax import files
from cxr_jax.experiments import runner
from cxr_jax.experiments.grid import Run

STATE_FILE = "slurm.json"
LOGS_DIR = "slurm_logs"
# squeue states of a job that may still finish its run: never submit another one beside it.
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                    "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
                    "RESV_DEL_HOLD"})
GONE = "ENDED"                 # no longer in squeue (older than the cluster's MinJobAge)
_TAIL_LINES = 15
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*:")


class CellJob:
  """What a job runs: one run, as the local runner runs it. A class (not a closure) so that
  submitit can requeue it on pre-emption or time-out: `checkpoint` hands back the same call, and
  the requeued job resumes from the run's latest checkpoint."""

  def __init__(self, run: Run, directory: Path, train_fn: Callable):
    self.run, self.directory, self.train_fn = run, Path(directory), train_fn

  def __call__(self) -> str:
    _start_process(self.run.config)
    return runner.run_one(self.run, self.directory, self.train_fn)

  def checkpoint(self, *args, **kwargs):
    import submitit

    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _start_process(config) -> None:
  """The process set-up launch.py does before a run: allocator, compilation cache, jax.distributed
  when the job has several tasks (SLURM's environment names the coordinator), tf.data off GPUs."""
  logging.getLogger().setLevel(logging.INFO)
  if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  from cxr_jax import host_memory, paths

  host_memory.configure(config.host_memory)
  paths.use_compilation_cache()
  if config.distributed or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    from cxr_jax.train import distributed

    distributed.initialize(config)
  import jax
  import tensorflow as tf

  logging.info("slurm job: process %d of %d, devices %s", jax.process_index(),
               jax.process_count(), jax.devices())

  tf.config.set_visible_devices([], "GPU")


def sbatch_extra(text: str) -> dict:
  """config.experiment.slurm.extra ("account=lab;exclusive") as submitit's additional_parameters."""
  out = {}
  for item in filter(None, (p.strip() for p in str(text).split(";"))):
    name, sep, value = item.partition("=")
    name = name.strip().lstrip("-")
    if not name or (sep and not value.strip()):
      raise ValueError(f"config.experiment.slurm.extra: {item!r} is not 'name=value' or 'name'")
    out[name] = value.strip() if sep else True
  return out


def _executor(config, workdir: Path, needs: tuple[str, ...]):
  import submitit

  s = config.experiment.slurm
  executor = submitit.SlurmExecutor(folder=workdir / LOGS_DIR)
  extra = sbatch_extra(s.extra)
  if needs:   # a run that starts from another's model (twice transfer's stage 2)
    extra.update(dependency="afterok:" + ":".join(needs), kill_on_invalid_dep="yes")
  params = dict(job_name=f"cxr_{workdir.name}", time=s.time, cpus_per_task=int(s.cpus_per_task),
                mem=s.mem, nodes=int(s.nodes), ntasks_per_node=int(s.tasks_per_node),
                array_parallelism=int(s.array_parallelism), additional_parameters=extra)
  if s.partition:
    params["partition"] = s.partition
  if int(s.gpus_per_node):
    params["gpus_per_node"] = int(s.gpus_per_node)
  if s.setup:
    params["setup"] = [s.setup]
  executor.update_parameters(**params)
  return executor


def job_states(job_ids) -> dict[str, str]:
  """{job id: squeue state} of array tasks ("12_3"); GONE for those squeue no longer lists."""
  job_ids = sorted(set(job_ids))
  if not job_ids:
    return {}
  arrays = sorted({j.split("_")[0] for j in job_ids})
  out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)],
                       capture_output=True, text=True, check=False)
  if out.returncode != 0 and "Invalid job id" not in out.stderr:
    raise RuntimeError(f"squeue failed ({out.returncode}): {out.stderr.strip()}")
  listed = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
  return {j: listed.get(j, GONE) for j in job_ids}


def latest_job(directory: Path) -> dict | None:
  path = directory / STATE_FILE
  return json.loads(path.read_text())["jobs"][-1] if path.is_file() else None


def _record(directory: Path, job: dict) -> None:
  path = directory / STATE_FILE
  jobs = json.loads(path.read_text())["jobs"] if path.is_file() else []
  files.write_json(path, {"jobs": jobs + [job]})


def _build_datasets(runs: list[Run]) -> None:
  """Builds each dataset the runs need once, here, so that no two jobs build the same one at
  the same time (and a bad source fails before anything is queued)."""
  from cxr_jax import data
  from cxr_jax.data.preprocess import PreprocessConfig

  seen = set()
  for run in runs:
    key = json.dumps([list(run.config.data.sources), run.config.data.data_dir,
                      PreprocessConfig.from_data_config(run.config.data).to_json()],
                     sort_keys=True, default=str)
    if key not in seen:
      seen.add(key)
      data.build_dataset(run.config.data)


def submit(runs: list[Run], workdir: Path, train_fn: Callable, jobs: dict) -> dict[str, dict]:
  """Submits `runs`, one array per set of jobs they wait for (a run that starts from another's
  model, twice transfer's stage 2, waits for that run's job); returns {run name: job}."""
  left = list(runs)
  while left:
    queued = {r.name for r in left}
    wave = [r for r in left if not queued & set(r.needs)]
    if not wave:
      raise ValueError(f"runs that wait for each other: {sorted(queued)}")
    by_needs: dict[tuple, list[Run]] = {}
    for run in wave:
      needs = tuple(sorted({jobs[n]["job_id"] for n in run.needs if n in jobs}))
      by_needs.setdefault(needs, []).append(run)
    for needs, group in by_needs.items():
      executor = _executor(group[0].config, workdir, needs)
      with executor.batch():
        submitted = [executor.submit(CellJob(r, runner.run_dir(workdir, r), train_fn))
                     for r in group]
      now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
      for run, job in zip(group, submitted, strict=True):
        record = dict(job_id=job.job_id, submitted=now, stdout=str(job.paths.stdout),
                      stderr=str(job.paths.stderr), after=list(needs))
        _record(runner.run_dir(workdir, run), record)
        jobs[run.name] = record
      logging.info("slurm: submitted %d runs as array %s%s", len(group),
                   submitted[0].job_id.split("_")[0], f" after {','.join(needs)}" if needs else "")
    sent = {r.name for r in wave}
    left = [r for r in left if r.name not in sent]
  return jobs


def stderr_tail(path: str | Path, lines: int = _TAIL_LINES) -> str:
  path = Path(path)
  if not path.is_file():
    return f"(no log at {path})"
  return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def failure(name: str, job: dict, state: str) -> str:
  """The status of a run whose job ended without finishing it, and the report (logged)."""
  tail = stderr_tail(job["stderr"])
  logging.error("slurm: run %s: job %s ended %s without finishing; log %s; its stderr ends:\n%s",
                name, job["job_id"], state, job["stderr"], tail)
  lines = [line.strip() for line in tail.splitlines() if line.strip()]
  # The exception's line ("ValueError: ...") over srun's exit line below it, when there is one.
  last = next((line for line in reversed(lines) if _EXCEPTION.match(line)), lines[-1] if lines
              else "")
  return f"failed: slurm job {job['job_id']} {state}; log {job['stderr']}; {last}"


def progress(counts: dict, jobs: dict, states: dict) -> str:
  ids = ", ".join(f"{jobs[n]['job_id']} {states.get(jobs[n]['job_id'], '?')}" for n in sorted(jobs))
  return (f"slurm: {counts['done']} done, {counts['running']} running, {counts['pending']} "
          f"pending, {counts['failed']} failed (jobs {ids})")


def _count(runs, workdir, jobs, states) -> dict:
  counts = dict(done=0, running=0, pending=0, failed=0)
  for run in runs:
    state = states.get(jobs.get(run.name, {}).get("job_id"), GONE)
    if runner.is_finished(runner.run_dir(workdir, run)):
      counts["done"] += 1
    elif state == "RUNNING":
      counts["running"] += 1
    elif state in ACTIVE:
      counts["pending"] += 1
    else:
      counts["failed"] += 1
  return counts


def wait(runs: list[Run], workdir: Path, jobs: dict, poll_s: float) -> dict[str, str]:
  """Polls squeue until no job of `jobs` is pending or running; logs a line when it changes."""
  line = ""
  while True:
    states = job_states(j["job_id"] for j in jobs.values())
    now = progress(_count(runs, workdir, jobs, states), jobs, states)
    if now != line:
      logging.info("%s", now)
      line = now
    if not any(s in ACTIVE for s in states.values()):
      return states
    time.sleep(poll_s)


def _require_slurm() -> None:
  if shutil.which("sbatch") is None or shutil.which("squeue") is None:
    raise RuntimeError("config.experiment.executor='slurm' needs SLURM's sbatch and squeue on "
                       "PATH (not found): start the command on the cluster's login node, or use "
                       "--config.experiment.executor=local")


def _to_submit(unfinished: list[Run], jobs: dict) -> list[Run]:
  """The unfinished runs without a pending or running job (never two jobs for one run)."""
  states = job_states(j["job_id"] for j in jobs.values())
  out = []
  for run in unfinished:
    job = jobs.get(run.name)
    if job is not None and states[job["job_id"]] in ACTIVE:
      continue
    if job is not None:
      logging.warning("slurm: run %s: job %s ended (%s) unfinished; submitting it again (it "
                      "resumes from its latest checkpoint)", run.name, job["job_id"],
                      states[job["job_id"]])
    out.append(run)
  return out


def _outcome(run: Run, workdir: Path, job: dict, state: str) -> str:
  if runner.is_finished(runner.run_dir(workdir, run)):
    return "trained"
  if state in ACTIVE:
    return f"pending: slurm job {job['job_id']} {state}"
  return failure(run.name, job, state)


def run_slurm(runs: list[Run], workdir: str | Path, train_fn: Callable) -> dict[str, str]:
  """The SLURM executor (executor.run_all): submits every unfinished run whose job is not pending
  or running, waits (config.experiment.wait), and returns the status of each run: 'skipped'
  (finished before), 'trained', 'pending: ...' (not waited for) or 'failed: ...' (job id, log,
  last stderr line; the log's tail is logged)."""
  _require_slurm()
  workdir = Path(workdir).resolve()
  status = {r.name: "skipped" for r in runs if runner.is_finished(runner.run_dir(workdir, r))}
  unfinished = [r for r in runs if r.name not in status]
  if not unfinished:
    return status
  jobs = {r.name: job for r in unfinished
          if (job := latest_job(runner.run_dir(workdir, r))) is not None}
  to_submit = _to_submit(unfinished, jobs)
  if to_submit:
    _build_datasets(to_submit)
    jobs = submit(to_submit, workdir, train_fn, jobs)
  logging.info("slurm: %d runs finished before, %d submitted now, %d already queued", len(status),
               len(to_submit), len(unfinished) - len(to_submit))
  config = unfinished[0].config
  if config.experiment.wait:
    states = wait(unfinished, workdir, jobs, float(config.experiment.slurm.poll_s))
  else:
    states = job_states(j["job_id"] for j in jobs.values())
  for run in unfinished:
    job = jobs[run.name]
    status[run.name] = _outcome(run, workdir, job, states.get(job["job_id"], GONE))
  return status
