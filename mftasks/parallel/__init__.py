"""Tensor (model) and pipeline parallelism of the GPT-2, Megatron style, with explicit communication
(what MindSpore runs on CPU: `hybrid_parallel`-style code, AllReduce only).

Modules: layout (rank numbering, layout checks), groups (parallel_state: this rank's groups), mappings
(the communication operators), layers (column/row/vocabulary-parallel layers), shards (how a rank's slices
map to the full parameters, both ways), model (build one rank's model), optimizer (optimizer_shard:
ZeRO-1 over the dp group), pipeline (the stage and its schedules), step (one training step, one evaluation).

    state = initialize_model_parallel(layout)                       # after MindSpore's init()
    model = build_rank_model(config, state, full_state)             # only this rank's stage and slices
    step = ParallelTrainStep(model, state, build_parallel_optimizer(model, state, args, lrs),
                             args.max_grad_norm)
    result = step(input_ids, attention_mask)                        # this replica's rows of the global batch

Layout and shards are pure Python/numpy; the other modules import MindSpore.
"""
