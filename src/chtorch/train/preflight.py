"""Checks made before the first optimizer step: a run that would train nothing, or fail at its end, is refused.

A run is refused, with a :class:`~chtorch.config.ConfigError` that names the key and the fix, when:

- every optimizer step while the topology evolves is skipped: with ``skip_step_on_update`` (the MLP and
  LM recipes' default, as the official codes) an update iteration leaves out its optimizer step, so an
  update every step (``update_interval=1`` step, or one batch per epoch with ``update_unit=epoch``)
  changes the topology of weights that never train, and the run ends at chance accuracy;
- the learning-rate warm-up is longer than the run: the LR never reaches its peak;
- an object the run builds only at its end (the BLEU tokenizer of the translation recipe) cannot be
  built: it is built once here (a dry run), so a bad name does not cost a whole training run.
"""

from __future__ import annotations

from typing import Any

from chtorch._checks import closest
from chtorch.config import Config, ConfigError

__all__ = ["check_trains", "check_warmup", "check_bleu_tokenizer", "preflight"]


def check_trains(config: Config, sparsity: Any, steps_per_epoch: int, interval: int | None) -> None:
    """Refuse a run whose every optimizer step before the last topology update is skipped.

    ``sparsity`` is the run's :class:`~chtorch.dst.DynamicSparsity` (None for a dense run),
    ``interval`` its update interval in optimizer steps."""
    if sparsity is None or interval is None or not sparsity.options.skip_step_on_update:
        return
    if interval != 1 or not sparsity.is_update_step(1):
        return
    sp = config.sparsity
    if sp.update_unit == "epoch":
        why = (
            f"sparsity.update_unit=epoch with one batch per epoch (steps per epoch: {steps_per_epoch}) makes "
            "every step a topology update"
        )
        fix = (
            "lower data.batch_size or raise data.train_limit so that an epoch has several batches, "
            "raise sparsity.update_interval, or set sparsity.options.skip_step_on_update=false"
        )
    else:
        why = f"sparsity.update_interval={sp.update_interval} step makes every step a topology update"
        fix = "raise sparsity.update_interval (e.g. 100) or set sparsity.options.skip_step_on_update=false"
    raise ConfigError(
        f"this run would not train: {why}, and skip_step_on_update leaves out the optimizer step of every "
        f"update iteration, so no step before T_end={sparsity.t_end} changes a weight; {fix}",
        "sparsity.update_interval",
    )


def check_warmup(config: Config, total_steps: int) -> None:
    """Refuse an LR warm-up longer than the run (the LR would never reach ``optim.lr``)."""
    warmup = int(config.optim.warmup_steps)
    if warmup > total_steps:
        raise ConfigError(
            f"optim.warmup_steps={warmup} is longer than the run ({total_steps} optimizer steps = train.epochs × "
            "steps per epoch): the learning rate would never reach its peak; lower optim.warmup_steps or train longer",
            "optim.warmup_steps",
        )


def check_bleu_tokenizer(name: str) -> None:
    """Build sacrebleu's BLEU with tokenizer ``name`` once (a dry run of the run's last step)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise ConfigError(
            "the translation recipe scores BLEU with sacrebleu, which is not installed: pip install 'chtorch[nlp]'",
            "data.bleu_tokenize",
        ) from None
    known = tuple(getattr(BLEU, "TOKENIZERS", ()))
    try:
        BLEU(tokenize=name)
    except Exception as exc:  # KeyError for an unknown name, ImportError/RuntimeError for a missing tokenizer package
        detail = f"one of {', '.join(known)}{closest(name, known)}" if name not in known else str(exc).strip()
        raise ConfigError(
            f"data.bleu_tokenize={name!r} cannot be used by sacrebleu: {detail or type(exc).__name__}",
            "data.bleu_tokenize",
        ) from None


def preflight(config: Config, sparsity: Any, steps_per_epoch: int, total_steps: int, interval: int | None) -> None:
    """Every check of this module for a run about to start (or resume)."""
    check_trains(config, sparsity, steps_per_epoch, interval)
    check_warmup(config, total_steps)
    bleu = getattr(config.data, "bleu_tokenize", None)  # a recipe that scores BLEU at its end
    if bleu is not None:
        check_bleu_tokenizer(str(bleu))
