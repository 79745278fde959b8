"""GPT-2 text generation with the MindFormers-style Trainer: train, eval, finetune (LoRA), predict.

The same API and command-line flags as MindFormers' single-card sample, on CPU:

    python examples/gpt2_text_generation.py --run_mode train    --model_type gpt2_small_cpu --train_dataset DATA
    python examples/gpt2_text_generation.py --run_mode eval     --model_type gpt2_small_cpu --eval_dataset DATA
    python examples/gpt2_text_generation.py --run_mode finetune --model_type gpt2_small_cpu --train_dataset FT --pet_method lora
    python examples/gpt2_text_generation.py --run_mode predict  --model_type gpt2_small_cpu --predict_data 'hello!'

Datasets come from `mftasks data prepare --seq-length 256` (the seq_length of gpt2_small_cpu);
`make demo` builds a pair under demo/data/.  Extra flags: --output_dir, --max_steps, --batch_size.
"""
from __future__ import annotations

import argparse

import mindspore as ms

from mftasks import Trainer, TrainingArguments


def main(run_mode: str, task: str, model_type: str, pet_method: str, train_dataset: str | None,
         eval_dataset: str | None, predict_data: str, output_dir: str, max_steps: int, batch_size: int):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    args = TrainingArguments(output_dir=output_dir, batch_size=batch_size, learning_rate=1e-3, warmup_steps=2,
                             max_steps=max_steps, save_steps=max(max_steps // 2, 1), logging_steps=1,
                             overwrite_output_dir=True)
    trainer = Trainer(task=task, model=model_type, pet_method=pet_method, args=args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset)
    if run_mode == "train":
        result = trainer.train()
        print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}, checkpoint {result.checkpoint}")
    elif run_mode == "finetune":
        result = trainer.finetune()
        print(f"finetuned {result.steps} steps, final loss {result.final_loss:.4f}, adapter {result.checkpoint}")
    elif run_mode == "eval":
        print(trainer.evaluate())
    elif run_mode == "predict":
        print(trainer.predict(input_data=predict_data, max_new_tokens=16))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_mode", required=True, choices=["train", "finetune", "eval", "predict"])
    parser.add_argument("--task", default="text_generation")
    parser.add_argument("--model_type", default="gpt2_small_cpu")
    parser.add_argument("--train_dataset", default=None)
    parser.add_argument("--eval_dataset", default=None)
    parser.add_argument("--predict_data", default="hello!")
    parser.add_argument("--pet_method", default="", help="'' or 'lora'")
    parser.add_argument("--output_dir", default="./output")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    a = parser.parse_args()
    main(a.run_mode, a.task, a.model_type, a.pet_method, a.train_dataset, a.eval_dataset, a.predict_data,
         a.output_dir, a.max_steps, a.batch_size)
