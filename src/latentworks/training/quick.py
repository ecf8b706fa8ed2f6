"""The ``train-quick`` recipe: both training stages sized to finish on a 2-core CPU within a time budget.

A recipe is data: the presets, batch sizes and learning rates of each stage, how the wall-time budget is
split between them, and the step rates measured on the reference machine (2 CPU cores) that turn a budget
into step counts. ``latentworks train-quick`` (``commands/train_quick.py``) runs the ordinary ``train-vae``,
``train`` and ``convert --from-run`` commands with these settings; there is no separate training loop.

Each stage gets ``--max-seconds`` for its share of the budget as well as a step count, so a slower machine
stops on time (with a checkpoint) and a faster one finishes its steps early. The learning rate is constant
(neither loop has a schedule), so a run stopped by the clock is as usable as one that ran all its steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class QuickRecipe:
    """Settings of the two stages. Step rates are steps per second on the reference 2-core CPU (see
    docs/training.md for the measurement); ``*_share`` are fractions of the time left for training."""

    resolution: int = 32
    vae_preset: str = "quick32-f4c4"  # models.autoencoder.PRESETS
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_steps_per_second: float = 5.0
    unet_preset: str = "quick32-s"  # models.unet.PRESETS
    batch_size: int = 32
    lr: float = 5e-4
    ema_decay: float = 0.995
    steps_per_second: float = 8.0
    vae_share: float = 0.35  # the rest of the training time goes to the diffusion model
    # Seconds kept back for what is not a training step: loading the text encoder, encoding the latent
    # cache, previews, the final held-out check and writing the model folder.
    overhead_seconds: float = 25.0
    # Generation defaults written into the model folder.
    sample_steps: int = 20
    guidance: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.vae_share < 1:
            raise ValueError(f"QuickRecipe.vae_share must be in (0, 1), got {self.vae_share}")
        if self.resolution < 8 or self.resolution % 4:
            raise ValueError(
                f"QuickRecipe.resolution must be a multiple of 4 and >= 8, got {self.resolution}"
            )

    def plan(self, seconds: float) -> StagePlan:
        """Step counts and wall-time limits of both stages for a total budget of ``seconds``."""
        train = max(seconds - self.overhead_seconds, 0.2 * seconds)
        vae_s = self.vae_share * train
        return StagePlan(
            vae_seconds=vae_s,
            vae_steps=max(1, round(vae_s * self.vae_steps_per_second)),
            seconds=train - vae_s,
            steps=max(1, round((train - vae_s) * self.steps_per_second)),
        )


@dataclass(frozen=True)
class StagePlan:
    """Wall-time limits (s) and step counts of the autoencoder stage and the diffusion stage."""

    vae_seconds: float
    vae_steps: int
    seconds: float
    steps: int


QUICK = QuickRecipe()
