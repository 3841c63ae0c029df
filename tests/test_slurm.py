"""Experiments on a real SLURM (config.experiment.executor="slurm"; .ci/slurm_setup.sh starts a
one-node cluster on the CI machine). A 2-run smoke sweep as a job array against the local
executor's run of it; a job killed with scancel and the command started again; a failing run;
a second start while jobs are queued."""

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cxr_jax import checkpoint, models, train
from cxr_jax.experiments import ExperimentIncomplete, run_experiment, runner, slurm, tables
from cxr_jax.train import trainer
from tests.test_experiments import fake_train, tiny_config, write_manifest

REPO = Path(__file__).resolve().parent.parent
GRID = "model.trainable_blocks=1,2"
HOLD = "hold"     # <workdir>/hold names the run whose job waits in its second epoch (held_train)


@pytest.fixture(scope="module")
def cluster():
  """A SLURM whose node is up; skipped without sbatch, except where CI_REQUIRE_SLURM=1 (CI)."""
  if shutil.which("sbatch") is None:
    if os.environ.get("CI_REQUIRE_SLURM") == "1":
      pytest.fail("CI_REQUIRE_SLURM=1 but sbatch is not on PATH: .ci/slurm_setup.sh did not run")
    pytest.skip("no SLURM here (sbatch not on PATH); CI starts one with .ci/slurm_setup.sh")
  out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
  states = out.stdout.split()
  if out.returncode != 0 or not any(s in ("idle", "mixed", "allocated") for s in states):
    pytest.fail(f"SLURM is installed but no node is up (sinfo: {out.stdout or out.stderr}); "
                "start it with .ci/slurm_setup.sh")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("slurm_data")
  write_manifest(root / "src")
  return root


def sweep_config(root: Path, executor: str, wait: bool = True):
  c = tiny_config(root)
  c.experiment.grid = GRID
  c.experiment.num_folds = 1
  c.experiment.executor = executor
  c.experiment.wait = wait
  s = c.experiment.slurm
  s.time, s.cpus_per_task, s.mem, s.poll_s = "15:00", 1, "3G", 1
  return c


@pytest.fixture(scope="module")
def local_run(root, tmp_path_factory):
  """The same sweep with the local executor: what every SLURM run must reproduce."""
  workdir = tmp_path_factory.mktemp("local")
  run_experiment(sweep_config(root, "local"), workdir, "sweep")
  return workdir


@pytest.fixture(autouse=True)
def jobs_import_this_repo(monkeypatch):
  """sbatch hands the jobs this environment: they import cxr_jax, configs and this module (as
  pytest named it, `test_slurm`, for held_train) from here."""
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p))


def held_train(config, directory):
  """train_and_evaluate; while <workdir>/hold names this run, its job waits at the start of its
  second epoch (after the first epoch's checkpoint) with a file `held` beside it."""
  directory = Path(directory)
  hold = directory.parent.parent / HOLD
  real_prepare = trainer._prepare_batch

  def holding_prepare(s, batch, epoch, step):
    while epoch == 1 and hold.is_file() and hold.read_text() == directory.name:
      (directory / "held").touch()
      time.sleep(0.5)
    return real_prepare(s, batch, epoch, step)

  trainer._prepare_batch = holding_prepare
  try:
    return train.train_and_evaluate(config, directory)
  finally:
    trainer._prepare_batch = real_prepare


def kept_params(directory: Path):
  return jax.tree.leaves(checkpoint.load_trained(directory).variables["params"])


def assert_same_run(directory: Path, reference: Path):
  got, want = (json.loads((d / "metrics.json").read_text()) for d in (directory, reference))
  assert got["run"].pop("workdir") == str(directory)
  want["run"].pop("workdir")
  assert got == want
  assert (directory / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()
  for a, b in zip(kept_params(directory), kept_params(reference), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def wait_for(predicate, what: str, timeout: float = 180):
  start = time.monotonic()
  while not predicate():
    if time.monotonic() - start > timeout:
      raise TimeoutError(f"{what}: not after {timeout} s")
    time.sleep(0.5)


def jobs_of(workdir: Path, name: str) -> list[dict]:
  return json.loads((workdir / "runs" / name / slurm.STATE_FILE).read_text())["jobs"]


@pytest.mark.slurm
def test_array_reproduces_the_local_sweep(cluster, root, local_run, tmp_path):
  workdir = tmp_path / "w"
  doc = run_experiment(sweep_config(root, "slurm"), workdir, "sweep")
  assert doc["status"] == {"ft1_fold0": "trained", "ft2_fold0": "trained"}
  arrays = {jobs_of(workdir, n)[0]["job_id"].split("_")[0] for n in doc["status"]}
  assert len(arrays) == 1                                     # one array, one job per run
  assert (workdir / "sweep.csv").read_text() == (local_run / "sweep.csv").read_text()
  for name in doc["status"]:
    assert_same_run(workdir / "runs" / name, local_run / "runs" / name)
  # Started again: collects, submits nothing.
  again = run_experiment(sweep_config(root, "slurm"), workdir, "sweep")
  assert set(again["status"].values()) == {"skipped"}
  assert all(len(jobs_of(workdir, n)) == 1 for n in doc["status"])


@pytest.mark.slurm
def test_cancelled_job_is_submitted_again_and_resumes(cluster, root, local_run, tmp_path, capsys):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / HOLD).write_text("ft2_fold0")
  config = sweep_config(root, "slurm", wait=False)
  first = run_experiment(config, workdir, "sweep", train_fn=held_train)
  assert all(s.startswith("pending: slurm job") for s in first["status"].values()), first["status"]
  # A second start while the jobs are queued or running submits nothing.
  second = run_experiment(config, workdir, "sweep", train_fn=held_train)
  assert all(not s.startswith("failed") for s in second["status"].values()), second["status"]
  assert [len(jobs_of(workdir, n)) for n in ("ft1_fold0", "ft2_fold0")] == [1, 1]

  run = workdir / "runs" / "ft2_fold0"
  job = jobs_of(workdir, "ft2_fold0")[0]["job_id"]

  def held():
    assert slurm.job_states([job])[job] in slurm.ACTIVE, Path(jobs_of(workdir, "ft2_fold0")[0][
        "stderr"]).read_text()[-3000:]
    return (run / "held").is_file()

  wait_for(held, "the ft2 job reaching its second epoch")
  subprocess.run(["scancel", job], check=True)
  wait_for(lambda: slurm.job_states([job])[job] not in slurm.ACTIVE, f"job {job} ending")
  assert not runner.is_finished(run) and (run / "checkpoints").is_dir()
  (workdir / HOLD).unlink()

  start = time.monotonic()
  doc = run_experiment(sweep_config(root, "slurm"), workdir, "sweep", train_fn=held_train)
  requeued_s = time.monotonic() - start
  assert doc["status"]["ft2_fold0"] == "trained", doc["status"]
  jobs = jobs_of(workdir, "ft2_fold0")
  assert len(jobs) == 2 and jobs[1]["job_id"] != job
  assert len(jobs_of(workdir, "ft1_fold0")) == 1             # never submitted twice
  log = Path(jobs[1]["stderr"]).read_text()
  assert "experiment: run ft2_fold0 (resuming)" in log
  assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1]
  for name in ("ft1_fold0", "ft2_fold0"):
    assert_same_run(workdir / "runs" / name, local_run / "runs" / name)
  with capsys.disabled():
    print(f"\nkilled-and-requeued run: the second start took {requeued_s:.1f} s "
          f"(submission to collected, ft2 resumed at epoch 1)")


def planned_fake_train(config, directory):
  """The model's fine-tuning plan (refuses a degree the backbone lacks), then test_experiments'
  fake trainer (the files of a finished run, no training): the failure path costs no training."""
  models.fine_tuning_plan(config.model)
  fake_train({0: 0.8})(config, directory)


@pytest.mark.slurm
def test_failed_job_is_reported_with_its_log(cluster, root, tmp_path, caplog):
  workdir = tmp_path / "w"
  config = sweep_config(root, "slurm")
  config.experiment.grid = "model.trainable_blocks=2,9"      # FT9: VGG16 has five blocks
  with caplog.at_level("ERROR"), pytest.raises(ExperimentIncomplete, match="ft9_fold0"):
    run_experiment(config, workdir, "sweep", train_fn=planned_fake_train)
  status = json.loads((workdir / "status.json").read_text())
  assert status["ft2_fold0"] == "trained"
  job = jobs_of(workdir, "ft9_fold0")[0]
  assert status["ft9_fold0"].startswith(f"failed: slurm job {job['job_id']} FAILED; "
                                        f"log {job['stderr']};")
  assert "trainable_blocks=9" in status["ft9_fold0"]
  tail = Path(job["stderr"]).read_text().splitlines()[-15:]   # the log's last lines, reported
  assert f"job {job['job_id']} ended FAILED" in caplog.text and "\n".join(tail) in caplog.text
  assert any("ValueError: config.model.trainable_blocks=9" in line for line in tail)
  assert f"- ft9_fold0: failed: slurm job {job['job_id']}" in (workdir / "sweep.md").read_text()


@pytest.mark.slurm
def test_run_on_two_tasks_initialises_jax_distributed(cluster, root, tmp_path):
  """tasks_per_node=2: one process per task, jax.distributed from SLURM's environment (gloo on
  CPU); both train in lockstep, process 0 evaluates and writes metrics.json."""
  workdir = tmp_path / "w"
  config = sweep_config(root, "slurm")
  config.experiment.grid = "model.trainable_blocks=2"
  config.experiment.slurm.tasks_per_node = 2
  doc = run_experiment(config, workdir, "sweep")
  assert doc["status"] == {"ft2_fold0": "trained"}
  job = jobs_of(workdir, "ft2_fold0")[0]
  for task in (0, 1):
    log = Path(job["stderr"].replace("_0_log.err", f"_{task}_log.err")).read_text()
    assert f"slurm job: process {task} of 2" in log
  metrics = json.loads((workdir / "runs/ft2_fold0/metrics.json").read_text())
  assert metrics["num_examples"] > 0 and 0 <= metrics["accuracy"] <= 1


# ---------------------------------------------------------------- without a cluster


def test_extra_sbatch_parameters():
  assert slurm.sbatch_extra("account=lab; qos=high;--exclusive;constraint=a100|h100") == {
      "account": "lab", "qos": "high", "exclusive": True, "constraint": "a100|h100"}
  with pytest.raises(ValueError, match="experiment.slurm.extra: 'qos=' is not"):
    slurm.sbatch_extra("qos=")


def test_unfinished_runs_are_named_in_the_tables():
  text = tables.markdown_unfinished({"a": "trained", "b": "skipped", "c": "failed: slurm job 3_1 "
                                     "FAILED; log x.err; ValueError: y", "d": "pending: slurm job "
                                     "3_2 PENDING"})
  assert "- c: failed: slurm job 3_1 FAILED" in text and "- d: pending: slurm job 3_2" in text
  assert "- a" not in text and "- b" not in text
  assert tables.markdown_unfinished({"a": "trained"}) == ""


def test_job_resources_come_from_the_config(tmp_path, monkeypatch):
  import submitit

  from configs import smoke

  # submitit's executor refuses to be built where srun is missing; only its sbatch text is read.
  monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))

  c = smoke.get_config()
  s = c.experiment.slurm
  s.partition, s.time, s.cpus_per_task, s.mem, s.gpus_per_node = "gpu", "2:00:00", 4, "16G", 2
  s.nodes, s.array_parallelism, s.extra, s.setup = 2, 5, "account=lab;exclusive", "module load x"
  text = slurm._executor(c, tmp_path, ("7_0",))._make_submission_file_text("python -m x", "0")
  for line in ("--partition=gpu", "--time=2:00:00", "--cpus-per-task=4", "--mem=16G",
               "--gpus-per-node=2", "--nodes=2", "--ntasks-per-node=1", "--account=lab",
               "--exclusive", "--dependency=afterok:7_0", "--kill-on-invalid-dep=yes",
               f"--job-name=cxr_{tmp_path.name}"):
    assert f"#SBATCH {line}\n" in text, line
  assert "\nmodule load x\n" in text


def test_stage_two_waits_for_the_job_of_stage_one(monkeypatch, tmp_path):
  """Twice transfer: stage 1 and the single-transfer run in one array, the runs starting from
  stage 1's model in a second one that waits for stage 1's job; nothing runs here."""
  from configs import smoke
  from cxr_jax.experiments import twice

  arrays = []

  class Job:
    def __init__(self, job_id):
      self.job_id = job_id
      self.paths = type("Paths", (), {"stdout": f"{job_id}.out", "stderr": f"{job_id}.err"})

  class Executor:
    def __init__(self, needs):
      self.needs, self.cells = needs, []
      arrays.append(self)

    @contextlib.contextmanager
    def batch(self):
      yield

    def submit(self, cell):
      self.cells.append(cell.run.name)
      return Job(f"{len(arrays)}_{len(self.cells) - 1}")

  monkeypatch.setattr(slurm, "_executor", lambda config, workdir, needs: Executor(needs))
  c = smoke.get_config()
  c.experiment.variants = ("single", "twice")
  runs = twice.plan(c, tmp_path)
  jobs = slurm.submit(runs, tmp_path, train.train_and_evaluate, {})
  assert [(a.needs, a.cells) for a in arrays] == [((), ["stage1_fold0", "single_fold0"]),
                                                  (("1_0",), ["twice_fold0"])]
  assert jobs["twice_fold0"]["after"] == ["1_0"]
  assert jobs_of(tmp_path, "twice_fold0") == [jobs["twice_fold0"]]
  # Started again while stage 1's job is queued: twice waits for that job.
  arrays.clear()
  slurm.submit(runs[2:], tmp_path, train.train_and_evaluate, {"stage1_fold0": {"job_id": "9_0"}})
  assert [(a.needs, a.cells) for a in arrays] == [(("9_0",), ["twice_fold0"])]
  assert len(jobs_of(tmp_path, "twice_fold0")) == 2
