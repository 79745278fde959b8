"""The bad-input matrix (docs/RELIABILITY.md): the cases no other test pins down completely.

Each case goes in through the door a user would use (the `mftasks` command line, a deployment's
parameters, a pipeline stage, the Trainer) and checks both halves of the promise: the message says what
is wrong and where, and nothing was started, written or overwritten.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from flows import stack as st
from flows.cli import main  # the `mftasks` command: the library's commands and the Prefect ones
from mftasks import checkpoint as ckpt
from mftasks.errors import CheckpointError, ConfigError
from mftasks.stage import StageSpec, run_stage

TINY = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}
GOOD_YAML = Path(__file__).resolve().parents[1] / "configs" / "gpt2" / "run_gpt2_tiny.yaml"


def cli(argv: list[str], capfd) -> tuple[int, str]:
    """`mftasks ARGV` in this process: (exit status, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capfd.readouterr().err


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def no_server(monkeypatch):
    """Any attempt to talk to a Prefect server fails the test: nothing may be created there."""
    def refuse(*a, **k):
        raise AssertionError("the Prefect server was contacted")
    monkeypatch.setattr(st.Stack, "client", refuse)


# ---------------------------------------------------------------------------------------------- command line
def test_cli_run_with_a_missing_config_file(tmp_path, capfd):
    code, err = cli(["run", "--config", tmp_path / "nope.yaml", "--output_dir", tmp_path / "out"], capfd)
    assert code == 2 and f"run config file not found: {tmp_path / 'nope.yaml'}" in err
    assert not (tmp_path / "out").exists()


def test_cli_run_with_a_bad_yaml_names_keys_and_file(tmp_path, tiny_dataset, capfd):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_mode: train\ntraining:\n  lerning_rate: 0.1\n  batch_size: 0\n")
    code, err = cli(["run", "--config", bad, "--output_dir", tmp_path / "out", "--train_dataset", tiny_dataset],
                    capfd)
    assert code == 2 and err.startswith("error: ")
    assert f"unknown key 'lerning_rate' at training.lerning_rate in {bad}; did you mean 'learning_rate'?" in err
    assert "training.batch_size=0" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--run_mode", "pretrain"], "argument --run_mode: invalid choice: 'pretrain'"),
    (["--use_parallel", "maybe"], "argument --use_parallel: invalid _bool value: 'maybe'"),
    (["--data_parallel", "two"], "argument --data_parallel: invalid int value: 'two'"),
], ids=["run_mode", "use_parallel", "data_parallel"])
def test_cli_run_flag_values(tmp_path, capfd, argv, needle):
    code, err = cli(["run", "--config", GOOD_YAML, "--output_dir", tmp_path / "out", *argv], capfd)
    assert code == 2 and needle in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, needle", [
    ("training: [unclosed\n", "not valid YAML"),
    ("seed: 1\ntraining: {seed: 3}\n", "training.seed=3: set 'seed' at the top level"),
    ("parallel_config: {model_parallel: 2}\nuse_parallel: true\n", "parallel_config.model_parallel=2"),
    ("training: 3\n", "training: expected a mapping"),
    ("context: {device_target: TPU}\n", "context.device_target='TPU'"),
], ids=["syntax", "seed", "model_parallel", "shape", "device"])
def test_cli_run_yaml_cases_name_the_key_and_start_nothing(tmp_path, capfd, text, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, err = cli(["run", "--config", bad, "--output_dir", tmp_path / "out"], capfd)
    assert code == 2 and needle in err and str(bad) in err, err
    assert not (tmp_path / "out").exists()


def test_cli_data_prepare_with_a_missing_input(tmp_path, capfd):
    code, err = cli(["data", "prepare", "--input", tmp_path / "nope", "--output", tmp_path / "out",
                     "--vocab-size", "100"], capfd)
    assert code == 2 and f"--input {tmp_path / 'nope'}: no such file or folder" in err
    assert tree(tmp_path) == []  # no output, no staging folder


def test_cli_launch_env_without_a_value(tmp_path, capfd):
    code, err = cli(["launch", "--nproc-per-node", "2", "--log-dir", tmp_path / "log", "--env", "GLOG_v",
                     "--", "python", "-c", "pass"], capfd)
    assert code == 2 and "--env 'GLOG_v' must be KEY=VALUE" in err and "mftasks launch" in err
    assert not (tmp_path / "log").exists()


def test_cli_launch_preflight_lists_script_port_and_rank_table(tmp_path, capfd):
    table = tmp_path / "hccl.json"
    table.write_text('{\n  "version": "1.0",\n  "server_count": "1"\n  "server_list": []\n}')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = cli(["launch", "--nproc-per-node", "2", "--log-dir", tmp_path / "log", "--master-port", port,
                         "--rank-table", table, "--", "python", tmp_path / "missing.py"], capfd)
    assert code == 2
    assert "missing.py' (argv[1] of program) does not exist" in err
    assert f"master_port {port} is in use" in err
    assert str(table) in err and "line 4 column 3" in err  # the table's JSON error, with file, line and column
    assert [p for p in (tmp_path / "log").rglob("*") if p.is_file()] == []  # nothing started: no rank log


def _table(tmp_path: Path, edit) -> Path:
    from mftasks import ranktable

    data = ranktable.generate("127.0.0.1", [0, 1], device_ips=["192.168.100.101", "192.168.100.102"],
                              pod_ip="127.0.0.1").to_json()
    edit(data)
    path = tmp_path / "hccl.json"
    path.write_text(json.dumps(data, indent=4))
    return path


def _device(data, i):
    return data["server_list"][0]["device"][i]


@pytest.mark.parametrize("edit, needle", [
    (lambda d: _device(d, 1).update(rank_id="0"),
     "server_list[0].device[1].rank_id: rank 0 is also server_list[0].device[0].rank_id"),
    (lambda d: d.update(server_count="2"), 'server_count: "2" but server_list has 1 server; set it to "1"'),
    (lambda d: _device(d, 0).update(device_ip="192.168.100.300"),
     "server_list[0].device[0].device_ip: '192.168.100.300' is not a valid IPv4 address"),
    (lambda d: d["server_list"][0]["device"].append({"device_id": "2", "device_ip": "192.168.100.103",
                                                     "rank_id": "2"}),
     "lists 3 devices on 1 server(s), but the world size is 2"),
], ids=["duplicate_rank", "server_count", "device_ip", "world_size"])
def test_cli_launch_with_a_bad_rank_table_starts_nothing(tmp_path, capfd, edit, needle):
    table = _table(tmp_path, edit)
    code, err = cli(["launch", "--nproc-per-node", "2", "--mode", "rank-table", "--rank-table", table,
                     "--log-dir", tmp_path / "log", "--", "python", "-c", "pass"], capfd)
    assert code == 2 and needle in err and str(table) in err, err
    assert [p for p in (tmp_path / "log").rglob("*") if p.is_file()] == []


def test_cli_deployment_run_with_a_malformed_parameter(capfd, no_server):
    code, err = cli(["deployment", "run", "finetune-gpt2", "-p", "nproc", "-p", "=3"], capfd)
    assert code == 2 and "-p 'nproc': expected KEY=VALUE" in err and "-p '=3': expected KEY=VALUE" in err
    assert "mftasks deployment run" in err


# ---------------------------------------------------------------------------------------------- deployment parameters
@pytest.fixture(scope="module")
def finetune_deployment():
    from prefect.utilities.callables import parameter_schema

    import flows.pipeline as pipeline

    return {"id": "00000000-0000-0000-0000-000000000000", "name": "finetune-gpt2", "flow_name": "finetune-gpt2",
            "parameter_openapi_schema": parameter_schema(pipeline.finetune_gpt2).model_dump_for_openapi()}


@pytest.mark.parametrize("params, needle", [
    ({"batch_size": 5000}, "batch_size: 5000 is greater than the maximum of 4096"),
    ({"model_type": "gpt3"}, "model_type: 'gpt3' is not one of"),
    ({"master_port": 80}, "master_port: 80 is less than the minimum of 1024"),
    ({"learning_rate": 0}, "learning_rate: 0 is less than or equal to the minimum of 0"),
    ({"train_steps": "ten"}, "train_steps: 'ten' is not of type 'integer'"),
    ({"dropout": 1.0}, "dropout: 1.0 is not valid under any of the given schemas"),
    ({"nproc": 2, "bogus": 1}, "unknown parameter 'bogus'; valid: batch_size"),
], ids=["batch_size", "model_type", "master_port", "learning_rate", "train_steps", "dropout", "unknown"])
def test_deployment_parameters_rejected_before_any_run(monkeypatch, no_server, finetune_deployment, params, needle):
    monkeypatch.setattr(st, "find_deployment", lambda stack, name: finetune_deployment)
    with pytest.raises(ConfigError) as err:
        st.run_deployment(st.Stack(project=Path.cwd(), port=1), "finetune-gpt2", params)
    assert needle in str(err.value) and err.value.where == "parameters of finetune-gpt2/finetune-gpt2"


# ---------------------------------------------------------------------------------------------- pipeline stages
@pytest.mark.parametrize("change, needle", [
    ({"train_dataset": "NOT_PREPARED"}, "train_dataset=NOT_PREPARED: not a prepared dataset (no manifest.json); "
                                        "run `mftasks data prepare`"),
    ({"load_checkpoint": "NO_SUCH.ckpt"}, "load_checkpoint=NO_SUCH.ckpt: no such file or folder"),
    ({"run_mode": "pretrain"}, "run_mode='pretrain': must be one of train, finetune, eval, predict"),
    ({"run_mode": "predict", "predict_data": []}, "predict needs predict_data (a list of prompts)"),
    ({"nproc": 0}, "nproc=0: must be >= 1"),
], ids=["dataset", "checkpoint", "run_mode", "prompts", "nproc"])
def test_stage_refuses_before_starting_a_gang(tmp_path, tiny_dataset, monkeypatch, change, needle):
    monkeypatch.chdir(tmp_path)
    spec = StageSpec(name="train", run_mode="train", output_dir="out", train_dataset=str(tiny_dataset), max_steps=2)
    for key, value in change.items():
        setattr(spec, key, value)
    with pytest.raises(ConfigError) as err:
        run_stage(spec, "work")
    assert needle in str(err.value) and err.value.where == "stage train"
    assert tree(tmp_path) == []  # no stage folder, run.yaml, pids.json or log: nothing started


# ---------------------------------------------------------------------------------------------- datasets, checkpoints
def _fake_checkpoint(output_dir: Path, step: int = 2) -> Path:
    """A committed (manifest-vouched) train checkpoint of a small cell, in the Trainer's layout."""
    from mindspore import nn

    info = ckpt.save(nn.Dense(2, 2), output_dir, 0, "mindformers", 1, step,
                     {"prefix": "mindformers", "stage": "train", "kind": "full", "global_step": step, "world_size": 1})
    return info.path


def test_batch_larger_than_the_dataset(tmp_path, tiny_dataset):
    from mftasks import Trainer

    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        Trainer(model=TINY, args={"output_dir": str(out), "batch_size": 4096, "max_steps": 2},
                train_dataset=str(tiny_dataset)).train()
    msg = str(err.value)
    assert f"the train split of {tiny_dataset} has" in msg and "too few for one step of batch_size 4096" in msg
    assert "lower batch_size or add data" in msg and err.value.where == "Trainer"
    assert not (out / "checkpoint").exists() and not (out / "log").exists()


def test_training_into_a_folder_with_checkpoints_leaves_them_alone(tmp_path, tiny_dataset):
    from mftasks import Trainer

    out = tmp_path / "out"
    old = _fake_checkpoint(out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in old.parent.iterdir()}
    with pytest.raises(ConfigError) as err:
        Trainer(model=TINY, args={"output_dir": str(out), "max_steps": 2},
                train_dataset=str(tiny_dataset)).train()
    msg = str(err.value)
    assert f"{old.parent} already holds 1 train checkpoint(s) (newest {old.name})" in msg
    assert "resume_training=True" in msg and "overwrite_output_dir=True" in msg
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in old.parent.iterdir()} == before
    assert not (out / "log").exists()


def test_resume_without_a_checkpoint_writes_nothing(tmp_path, tiny_dataset):
    from mftasks import Trainer

    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as err:
        Trainer(model=TINY, args={"output_dir": str(out), "max_steps": 2},
                train_dataset=str(tiny_dataset)).train(resume_training=True)
    assert f"{ckpt.rank_dir(out, 0)} has no verified train checkpoint to resume from" in str(err.value)
    assert tree(out) == []


def test_evaluating_a_truncated_checkpoint_names_the_file(tmp_path, tiny_dataset):
    from mftasks import Trainer

    path = _fake_checkpoint(tmp_path / "train")
    os.chmod(path, 0o600)
    os.truncate(path, path.stat().st_size // 2)
    out = tmp_path / "eval"
    with pytest.raises(CheckpointError) as err:
        Trainer(model=TINY, args={"output_dir": str(out)}, eval_dataset=str(tiny_dataset)).evaluate(
            eval_checkpoint=str(path))
    assert f"{path}: {path.stat().st_size} bytes, manifest says" in str(err.value)
    assert "truncated or changed" in str(err.value)
    # At most its log, and that empty: the Trainer opens its log before it checks the checkpoint (it
    # used to read `tree(out) in ([], [log...])`, which never looked inside the log).
    written = [p for p in out.rglob("*") if p.is_file()]
    assert [p.relative_to(out).as_posix() for p in written] in ([], ["log/rank_0/mindformer.log"])
    assert all(p.stat().st_size == 0 for p in written), [p.read_text()[:200] for p in written]
    assert not (out / "checkpoint").exists()


def test_a_checkpoint_without_its_manifest_is_not_trusted(tmp_path, tiny_dataset):
    out = tmp_path / "train"
    path = _fake_checkpoint(out)
    ckpt.manifest_path_of(path).unlink()
    with pytest.raises(CheckpointError) as err:
        ckpt.load_verified(path)
    assert f"{path}: no manifest" in str(err.value) and "nothing vouches for it" in str(err.value)
    # "untouched" through a door that does write meta.json (the Trainer, after each save): resuming from
    # the folder finds nothing verified and changes nothing.  (load_verified above never writes meta.json,
    # so checking meta.json after it, as this test did, could not fail.)
    from mftasks import Trainer

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.parent.iterdir()}
    assert json.loads((path.parent / "meta.json").read_text())["last_ckpt_file"] == path.name
    with pytest.raises(CheckpointError) as err:
        Trainer(model=TINY, args={"output_dir": str(out), "max_steps": 2},
                train_dataset=str(tiny_dataset)).train(resume_training=True)
    assert f"{path.parent} has no verified train checkpoint to resume from" in str(err.value)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.parent.iterdir()} == before
    assert not (out / "log").exists()
