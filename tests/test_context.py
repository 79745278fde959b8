import glob

import pytest

from mftasks import context
from mftasks.context import (
    ContextConfig, ParallelConfig, ParallelContextConfig, check_parallel_setup, check_parallel_supported,
    device_available, init_context, resolve_parallel_mode,
)
from mftasks.errors import ConfigError, DeviceError

NO_ASCEND = not glob.glob("/dev/davinci[0-9]*")


@pytest.fixture
def no_cluster(monkeypatch):
    for var in context._CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)


def test_context_config_normalises():
    ctx = ContextConfig(mode="PYNATIVE_MODE", device_target="ascend", device_id=1, max_device_memory="31GB")
    assert (ctx.mode, ctx.device_target) == (1, "Ascend")
    assert ContextConfig(mode="graph_mode", device_target="cpu").mode == 0


def test_context_config_reports_every_problem():
    with pytest.raises(ConfigError) as err:
        ContextConfig(mode=2, device_target="TPU", device_id=-1, max_device_memory="lots",
                      runtime_num_threads=0, save_graphs=True)
    message = str(err.value)
    assert len(err.value.problems) == 6
    for needle in ("mode=2", "device_target='TPU'", "CPU, GPU, Ascend", "device_id=-1", "max_device_memory='lots'",
                   "runtime_num_threads=0", "save_graphs_path"):
        assert needle in message


def test_parallel_context_config():
    assert ParallelContextConfig(parallel_mode="semi_auto_parallel").parallel_mode == "SEMI_AUTO_PARALLEL"
    assert ParallelContextConfig(parallel_mode=1).parallel_mode == "SEMI_AUTO_PARALLEL"  # MindFormers' int
    with pytest.raises(ConfigError, match="parallel_mode='MAGIC'.*STAND_ALONE, DATA_PARALLEL"):
        ParallelContextConfig(parallel_mode="MAGIC")


def test_parallel_config_world_size_and_checks():
    assert ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2).world_size == 8
    with pytest.raises(ConfigError) as err:
        ParallelConfig(data_parallel=0, pipeline_stage=4, micro_batch_num=2)
    message = str(err.value)
    assert "data_parallel=0" in message and "micro_batch_num=2: must be >= pipeline_stage=4" in message


def test_cpu_refuses_model_and_pipeline_parallel():
    problems = check_parallel_supported(ParallelConfig(model_parallel=2), "CPU")
    assert len(problems) == 1 and "model_parallel=2" in problems[0] and "Ascend" in problems[0]
    problems = check_parallel_supported(ParallelConfig(pipeline_stage=2, micro_batch_num=2), "cpu",
                                        ParallelContextConfig(enable_parallel_optimizer=True))
    assert len(problems) == 2 and all("Ascend" in p for p in problems)
    assert check_parallel_supported(ParallelConfig(model_parallel=2, pipeline_stage=2, micro_batch_num=2),
                                    "Ascend") == []


def test_check_parallel_setup():
    one, two = ParallelConfig(), ParallelConfig(data_parallel=2)
    assert check_parallel_setup(False, ParallelContextConfig(), one, "CPU") == []
    [problem] = check_parallel_setup(False, ParallelContextConfig(), two, "CPU")
    assert "world size 1" in problem and "mftasks launch" in problem
    [problem] = check_parallel_setup(True, ParallelContextConfig(parallel_mode="STAND_ALONE"), two, "CPU")
    assert "STAND_ALONE" in problem


def test_semi_auto_on_cpu_is_data_parallel():
    semi = ParallelContextConfig(parallel_mode="SEMI_AUTO_PARALLEL", gradients_mean=False)
    plan = resolve_parallel_mode(semi, ParallelConfig(data_parallel=2), "CPU")
    assert (plan.parallel_mode, plan.gradients_mean) == ("DATA_PARALLEL", True) and "DATA_PARALLEL" in plan.notes[0]
    plan = resolve_parallel_mode(semi, ParallelConfig(data_parallel=2), "Ascend")
    assert (plan.parallel_mode, plan.gradients_mean, plan.notes) == ("SEMI_AUTO_PARALLEL", False, [])


def test_device_available():
    assert device_available("CPU") and device_available("cpu")
    if NO_ASCEND:
        assert not device_available("Ascend")


def test_init_context_is_repeatable(no_cluster):
    import mindspore as ms

    assert init_context() == (0, 1)
    assert init_context(context_config=ContextConfig(mode=1)) == (0, 1)
    assert ms.get_context("mode") == 1
    assert init_context(False, ContextConfig(mode="GRAPH_MODE")) == (0, 1)
    assert ms.get_context("mode") == 0 and ms.get_context("runtime_num_threads") == 2
    assert ms.get_context("device_target") == "CPU"


@pytest.mark.skipif(not NO_ASCEND, reason="this machine has an Ascend device")
def test_ascend_on_cpu_machine_is_a_device_error(no_cluster):
    with pytest.raises(DeviceError) as err:
        init_context(context_config=ContextConfig(mode=0, device_target="Ascend", device_id=0))
    message = str(err.value)
    assert "Ascend" in message and "ContextConfig.device_target" in message and 'device_target="CPU"' in message


def test_use_parallel_outside_a_cluster(no_cluster):
    with pytest.raises(ConfigError) as err:
        init_context(use_parallel=True)
    message = str(err.value)
    assert "mftasks launch" in message and "msrun" in message and "world size 1" in message


def test_rank_table_alone_is_refused_on_cpu(no_cluster, monkeypatch):
    monkeypatch.setenv("RANK_TABLE_FILE", "/tmp/hccl.json")
    with pytest.raises(ConfigError, match="dynamic cluster"):
        init_context(use_parallel=True)


def test_world_size_must_match_the_launcher(no_cluster, monkeypatch):
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "4")
    with pytest.raises(ConfigError, match=r"= 2, but the launcher started 4 processes.*data_parallel: 4"):
        init_context(True, parallel_layout=ParallelConfig(data_parallel=2))


def test_model_parallel_on_cpu_refused_before_init(no_cluster, monkeypatch):
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    with pytest.raises(ConfigError, match="model_parallel=2.*Ascend"):
        init_context(True, ContextConfig(), ParallelContextConfig(parallel_mode="SEMI_AUTO_PARALLEL"),
                     parallel_layout=ParallelConfig(model_parallel=2))
