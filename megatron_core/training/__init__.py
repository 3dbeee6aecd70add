"""training: the pieces of the pretraining loop, each a small file of its own.

    config.py        dataclasses the flags fill (TrainingConfig, OptimizerConfig, SchedulerConfig,
                     PrecisionConfig, ParallelConfig, DataConfig, LoggingConfig, CheckpointConfig,
                     RunConfig) and build(cls, args, renames)
    arguments.py     Megatron-LM's flags: add_megatron_arguments, parse_args, validate(args, world_size),
                     build_run_config, transformer_config_from_args
    lr_schedule.py   LearningRateSchedule (lr_at / weight_decay_at a sample count), schedule_from_config
    loss_scaler.py   Dynamic / Constant loss scalers (Megatron's), unscale_and_check, found_inf_across
    param_groups.py  build_param_groups: no weight decay on norms and biases, lr multipliers
    optimizer.py     build_optimizer: AdamW (Apex FusedAdam / fused / foreach) or SGD
    backend.py       the Backend protocol the loop talks to (StepResult)
    backends/native.py  NativeBackend / build_backend(chunks, OptimizerConfig, PrecisionConfig, ParallelConfig):
                     grad_buffer.py (fp32 main_grad buckets, ZeRO shards), grad_sync.py (DP mean,
                     overlapped with backward), master_params.py (fp32 masters, ZeRO-1 pieces)
    microbatches.py  num_microbatches, BatchSchedule (Megatron's --rampup-batch-size)
    log_line.py      Megatron's training and validation log lines
    mfu.py           peak TFLOP/s by device name, --peak-tflops, MFU
    backend.py       the Backend protocol the loop talks to (zero_grad, prepare_accumulation, scale_loss, step)
    initialize.py    torch.distributed from the launcher's environment (or a world of one), groups, seeds
    loop.py          pretrain(spec): initialize, build chunks/backend/schedule, load hook, while: step, log, evaluate
    train_spec.py    TrainSpec (a family's forward step, datasets provider, flags; held by its entry point)
                     and TrainRun (what the loop hands them); the model side is models/registry.py
    train_step.py    one global batch through the pipeline schedule and the backend; SkipCounter
    evaluate.py      forward-only validation over --eval-iters batches
    train_log.py     Megatron's log lines every --log-interval, TensorBoard, progress bar, summary
    data_options.py  the families' data flags (--reset-position-ids, --mask-prob, --wwm, ...) -> DataOptions
    data_providers.py build_tokenizer(DataConfig), train_valid_test_num_samples, {gpt,bert,roformer,t5,
                     transformer_xl,finetune,seq2seq}_datasets -> (train, valid, test)
    data_iterators.py build_data_iterators: micro-batches per DP rank, resumable; TP peers and chunks
                     that need no batch get a receiver / None
    batches.py       get_batch_{gpt,finetune,bert,roformer,t5,transformer_xl}: micro-batch -> model inputs

Only entry points and tools import arguments.py; the rest takes the dataclasses.
"""
