"""The executor interface without a cluster: LocalExecutor, SlurmResources, TaskFailedError.

The Slurm executor itself is tested against a real cluster in test_slurm.py.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from fmri2img.core.config import from_dict
from fmri2img.core.errors import ConfigError, Fmri2imgError
from fmri2img.core.executors import (
    LocalExecutor,
    SlurmExecutor,
    SlurmResources,
    TaskExecutor,
    TaskFailedError,
)


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def _remember_initializer(path: str) -> None:
    os.environ["FMRI2IMG_TEST_INIT"] = path


def initialized(_: int) -> str | None:
    return os.environ.get("FMRI2IMG_TEST_INIT")


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_executor_yields_results_in_input_order(jobs):
    with LocalExecutor(jobs) as executor:
        assert isinstance(executor, TaskExecutor)
        results = list(executor.map(square_and_pid, range(7)))
    assert [square for square, _ in results] == [x * x for x in range(7)]
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) if jobs == 1 else (os.getpid() not in pids)


def test_local_executor_passes_pool_options_like_the_ablation_pool():
    """The ablation's pool (forkserver context + initializer) fits LocalExecutor's keywords."""
    ctx = multiprocessing.get_context("spawn")
    with LocalExecutor(2, mp_context=ctx, initializer=_remember_initializer, initargs=("set",)) as executor:
        assert list(executor.map(initialized, range(3))) == ["set"] * 3
        assert list(executor.map(initialized, range(2))) == ["set"] * 2  # one pool for every map call


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_executor_raises_the_task_exception_in_order(jobs):
    with LocalExecutor(jobs) as executor:
        results = executor.map(fail_on_three, range(5))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(results)


def test_local_executor_refuses_zero_jobs():
    with pytest.raises(ConfigError, match="jobs=0"):
        LocalExecutor(0).map(square_and_pid, [1])


def test_slurm_resources_from_yaml_mapping():
    resources = from_dict(SlurmResources, {"partition": "gpu", "cpus_per_task": 8, "mem_gb": 64, "gpus_per_task": 1,
                                           "timeout_min": 240, "array_parallelism": 16,
                                           "additional_parameters": {"qos": "high", "account": "lab"}}, where="slurm")
    assert resources.submitit_parameters() == {
        "timeout_min": 240, "cpus_per_task": 8, "slurm_array_parallelism": 16, "slurm_partition": "gpu",
        "mem_gb": 64.0, "slurm_gpus_per_task": 1, "slurm_additional_parameters": {"qos": "high", "account": "lab"}}
    assert SlurmResources().submitit_parameters() == {"timeout_min": 60, "cpus_per_task": 1,
                                                      "slurm_array_parallelism": 64}


@pytest.mark.parametrize(("data", "match"), [
    ({"cpus": 4}, "unknown key 'cpus'; allowed keys: additional_parameters, array_parallelism"),
    ({"cpus_per_task": 0}, "cpus_per_task=0"),
    ({"mem_gb": -1}, "mem_gb=-1"),
    ({"timeout_min": 0}, "timeout_min=0"),
    ({"timeout_min": 1}, "timeout_min=1; expected at least 2 minutes"),
    ({"gpus_per_task": -1}, "gpus_per_task=-1"),
    ({"partition": " "}, "partition"),
    ({"additional_parameters": {"--qos": "high"}}, "'--qos'"),
])
def test_slurm_resources_refuse_bad_values(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(SlurmResources, data, where="slurm")


def test_task_failed_error_is_a_runtime_failure_not_bad_input():
    error = TaskFailedError("Task 1 of 2 failed", job_id="12_1", state="FAILED", log_path="/x.err",
                            stderr_tail="ValueError: boom")
    assert isinstance(error, Fmri2imgError) and isinstance(error, RuntimeError)
    assert error.exit_code == 1 != Fmri2imgError.exit_code
    assert (error.job_id, error.state, error.log_path, error.stderr_tail) == ("12_1", "FAILED", "/x.err",
                                                                              "ValueError: boom")


def test_slurm_executor_submits_nothing_for_no_tasks(tmp_path):
    assert list(SlurmExecutor(tmp_path / "never").map(square_and_pid, [])) == []
    assert not (tmp_path / "never").exists()
