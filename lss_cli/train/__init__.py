"""LSS training and the tiny CLIP's pretraining.

- `build`: the pure builder of a run's components (student, EMA teacher, loss, AdamW, schedules,
  compiled forwards, autocast dtype), shared by `loop.setup` and benchmarks/train_step.py.
- `step`: one self-distillation step on those components.
- `loop`: setup (device, process group, run dir, inputs, loader), the epoch loop, checkpoints.
- `resume`: which checkpoint `--resume` continues from, a changed config (refused unless
  `run.allow_config_change`), and what `--overwrite` moves aside.
- `losses`, `schedules`, `ema`: the objective, the per-step values, the teacher update.
- `inputs`: a run's inputs, checked (and made, for the synthetic dataset) before heavy work.
- `pretrain`: contrastive pretraining of the tiny CLIP (`lss pretrain-tiny`).
"""
