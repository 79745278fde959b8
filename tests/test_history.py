"""The pipeline's metrics history (mftasks.history): a run's metrics, the previous run, appending."""
import json

from mftasks import history

EVALS = {"pretrain_base": {"PPL": 40.5, "loss": 3.70}, "finetune_base": {"PPL": 80.25, "loss": 4.38},
         "finetune_merged": {"PPL": 20.125, "loss": 3.0}}


def test_run_metrics_pick_the_perplexities_and_final_losses():
    assert history.run_metrics(EVALS, {"final_loss": 3.5, "checkpoint": "c"}, {"final_loss": 2.75}) == {
        "pretrain_base_PPL": 40.5, "finetune_base_PPL": 80.25, "finetune_merged_PPL": 20.125,
        "finetune_merged_loss": 3.0, "train_final_loss": 3.5, "lora_final_loss": 2.75}


def test_last_run_is_the_newest_row_of_the_same_model_type(tmp_path):
    path = tmp_path / "history.jsonl"
    assert history.last_run(path, "gpt2_tiny") is None
    history.append_run(path, {"model_type": "gpt2_tiny", "finetune_merged_PPL": 30.0})
    history.append_run(path, {"model_type": "gpt2_small_cpu", "finetune_merged_PPL": 25.0})
    history.append_run(path, {"model_type": "gpt2_tiny", "finetune_merged_PPL": 28.0})
    assert history.last_run(path, "gpt2_tiny") == {"model_type": "gpt2_tiny", "finetune_merged_PPL": 28.0}
    assert history.last_run(path, "gpt2_small_cpu")["finetune_merged_PPL"] == 25.0
    assert history.last_run(path, "gpt2_medium") is None
    assert len(path.read_text().splitlines()) == 3


def test_an_unreadable_history_has_no_previous_run(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"model_type": "gpt2_tiny"}\n{"model_type": "gpt2_ti')  # a cut last line
    assert history.last_run(path, "gpt2_tiny") is None


def test_append_run_completes_a_history_without_a_final_newline(tmp_path):
    path = tmp_path / "work" / "history.jsonl"
    path.parent.mkdir()
    path.write_text('{"model_type": "a"}')
    history.append_run(path, {"model_type": "b", "time": 1.5})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"model_type": "a"},
                                                                           {"model_type": "b", "time": 1.5}]
