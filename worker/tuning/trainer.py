"""Train a LoRA adapter with PEFT and TRL's `SFTTrainer`: loss on the assistant's answer only.

The dataset goes in as TRL's conversational prompt-completion form (the conversation up to the answer is
the prompt, the answer the completion) with `completion_only_loss`: TRL renders both with the model's own
chat template and masks every prompt token. (`assistant_only_loss` would need `{% generation %}` markers
that most chat templates, SmolLM2's among them, do not have.)

Checkpoints go to a work folder beside the output (`.<name>.partial/`); the adapter is written there and
renamed into place only once it is complete, so nothing half-written is ever served. An interrupted run
(Ctrl-C) continues from its last checkpoint with `resume=True`.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brandbot.errors import BrandbotError
from worker.tuning.adapters import (
    AdapterMismatch,
    check_adapter_fits,
    fingerprint,
    replace_folder,
    write_marker,
)
from worker.tuning.dataset import Example

CHECKPOINT_PREFIX = "checkpoint-"

PAUSE_AT_STEP = "BRANDBOT_TEST_TUNE_PAUSE_AT_STEP"
"""Test-only fault (read by the CLI entry point): after saving this step's checkpoint, training pauses
for a minute, so a test's Ctrl-C lands mid-run on any machine, however fast."""
PAUSE_SECONDS = 60.0


class TuneError(BrandbotError):
    """Training cannot start or go on (one line for the admin)."""


class TuneInterrupted(BrandbotError):
    """Ctrl-C: what was saved, and how to continue."""


@dataclass(frozen=True)
class TuneOptions:
    epochs: float = 3.0
    learning_rate: float = 2e-3
    rank: int = 8
    alpha: int = 16
    batch_size: int = 4
    max_length: int = 1024
    seed: int = 0
    save_steps: int = 5
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Progress:
    """What the trainer reports; the CLI draws it (a rich bar in a terminal, plain lines otherwise)."""

    on_start: Callable[[int, int], None] = lambda total, done: None
    on_step: Callable[[int, float | None], None] = lambda step, loss: None


@dataclass(frozen=True)
class TuneResult:
    adapter_dir: Path
    steps: int
    seconds: float
    fingerprint: str
    resumed_from: int | None = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def work_folder(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def latest_checkpoint(work: Path) -> Path | None:
    found = [path for path in (work / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if path.is_dir()]
    found = [path for path in found if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
    return max(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


def train_adapter(
    model_dir: Path,
    train: list[Example],
    output: Path,
    *,
    system: str | None,
    options: TuneOptions,
    resume: bool = False,
    progress: Progress | None = None,
    pause_at_step: int | None = None,
) -> TuneResult:
    """Train and write the adapter to `output` (replaced only once complete)."""
    report = progress or Progress()
    work = work_folder(output)
    checkpoint = latest_checkpoint(work)
    if resume and checkpoint is None:
        raise TuneError(f"nothing to resume: no checkpoint in {work}")
    if not resume and checkpoint is not None:
        raise TuneError(
            f"an interrupted run's checkpoints are in {work}:"
            " add --resume to continue it, or delete that folder"
        )
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    import datasets
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    # Our own progress only: the libraries' bars and log dicts would interleave with it.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")

    cuda = torch.cuda.is_available()
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.bfloat16 if cuda else torch.float32
    )
    if checkpoint is not None:
        try:
            check_adapter_fits(model, checkpoint)
        except AdapterMismatch as error:
            raise TuneError(f"cannot resume: {error} (is BASE the model the run started with?)") from None
    dataset = Dataset.from_list([example.prompt_completion(system) for example in train])
    config = SFTConfig(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        lr_scheduler_type="constant",
        seed=options.seed,
        data_seed=options.seed,
        completion_only_loss=True,
        max_length=options.max_length,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=0.0,
        target_modules=list(options.target_modules),
        task_type="CAUSAL_LM",
    )

    class Report(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            report.on_start(state.max_steps, state.global_step)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if pause_at_step is not None and state.global_step == pause_at_step:
                time.sleep(PAUSE_SECONDS)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                report.on_step(state.global_step, float(logs["loss"]))

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Report()],
    )
    trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    except KeyboardInterrupt:
        saved = latest_checkpoint(work)
        where = f"step {saved.name.removeprefix(CHECKPOINT_PREFIX)}" if saved else "no step yet"
        raise TuneInterrupted(
            f"interrupted at step {trainer.state.global_step}/{trainer.state.max_steps}; saved: {where}"
            f" in {work}; nothing was written to {output}. Run the same command with --resume to continue"
        ) from None
    seconds = time.monotonic() - started
    adapter = work / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    tuned: Any = trainer.model
    tuned.save_pretrained(str(adapter))
    identity = fingerprint(adapter)
    write_marker(
        adapter,
        adapter=identity,
        base=str(model_dir.resolve()),
        examples=len(train),
        options=asdict(options),
    )
    replace_folder(adapter, output)
    shutil.rmtree(work, ignore_errors=True)
    return TuneResult(
        adapter_dir=output,
        steps=int(trainer.state.global_step),
        seconds=seconds,
        fingerprint=identity,
        resumed_from=int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX)) if checkpoint else None,
        device="cuda" if cuda else "cpu",
    )


def describe(result: TuneResult) -> str:
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    return (
        f"adapter written to {result.adapter_dir} ({result.steps} steps in {result.seconds:.0f} s on"
        f" {result.device}{resumed}; fingerprint {result.fingerprint})"
    )
