"""The targets a simulated world is built from: :class:`TargetSpec` and the synthetic mix.

:func:`generate_targets` draws a realistic population of agent groups from a seed (its own random
stream, so the same seed gives the same targets whatever the world later does);
:class:`pacing.simulator.world.World` is built on a sequence of these specs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pacing.domain import is_valid_target_id

#: Channels of the synthetic mix, with their share of targets.
CHANNEL_SHARES: Mapping[str, float] = {"chat": 0.7, "webcallback": 0.2, "email": 0.1}


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """The fixed parameters of one synthetic target (an agent group)."""

    target_id: str
    channel: str
    slots: int  # logged-in slots; an agent taking 3 chats is 3 slots
    not_ready: int  # logged-in slots that never take work
    accept_probability: float  # p: an invitation is accepted with this probability
    resolution_delay_seconds: float  # d: mean time from invitation to accept/decline
    handle_mean_seconds: float  # mean of the lognormal handle time, wrap-up included
    handle_cv: float  # coefficient of variation of the handle time
    patience_seconds: float  # mean of the exponential patience of a waiting visitor
    reactive_rate_per_second: float = 0.0  # > 0 makes the target dual
    name: str = ""
    #: exponential handle times instead of lognormal (the evaluation's Erlang-A self-check)
    exponential_handle: bool = False

    def __post_init__(self) -> None:
        if not is_valid_target_id(self.target_id):
            raise ValueError(f"Target id {self.target_id!r} does not match TARGET_ID_PATTERN.")
        if self.slots < 0 or not 0 <= self.not_ready <= self.slots:
            raise ValueError(f"Target {self.target_id}: need 0 <= not_ready <= slots.")
        if not 0.0 <= self.accept_probability <= 1.0:
            raise ValueError(f"Target {self.target_id}: accept_probability must be in [0, 1].")
        positive = (
            self.resolution_delay_seconds,
            self.handle_mean_seconds,
            self.patience_seconds,
        )
        if not all(math.isfinite(value) and value > 0 for value in positive):
            raise ValueError(
                f"Target {self.target_id}: delay, handle time and patience must be positive."
            )
        if not (math.isfinite(self.handle_cv) and self.handle_cv >= 0):
            raise ValueError(f"Target {self.target_id}: handle_cv must be >= 0.")
        if not (
            math.isfinite(self.reactive_rate_per_second) and self.reactive_rate_per_second >= 0
        ):
            raise ValueError(f"Target {self.target_id}: reactive rate must be >= 0.")

    @property
    def dual(self) -> bool:
        """True if reactive traffic shares the group with proactive invitations."""
        return self.reactive_rate_per_second > 0

    @property
    def staffed(self) -> int:
        """Slots that take work (ready or busy)."""
        return self.slots - self.not_ready

    @property
    def algorithm(self) -> str:
        """The pacing algorithm an operator would configure for this group."""
        base = "SUPER_PROGRESSIVE" if self.slots <= 30 else "PREDICTIVE_B"
        return f"{base}_DUAL" if self.dual else base


def generate_targets(count: int, *, seed: int = 7) -> list[TargetSpec]:
    """A realistic mix of ``count`` targets: mostly small groups, some large, three channels.

    About 70 % are small groups (1–10 slots) and 30 % large (30–200 slots); channels are chat
    (~70 %), web callback (~20 %) and email (~10 %); about 10 % of chat and web-callback targets
    are dual (reactive traffic worth roughly a third of their capacity). Ids look like
    ``chat-0001`` and are numbered per channel.
    """
    if count < 0:
        raise ValueError("The number of targets must be >= 0.")
    # A separate stream from the world's dynamics: the same seed gives the same targets
    # whatever the world later does.
    rng = np.random.default_rng([seed, 0x7A46])
    channels = list(CHANNEL_SHARES)
    shares = np.array(list(CHANNEL_SHARES.values()), dtype=np.float64)
    channel_index = rng.choice(len(channels), size=count, p=shares / shares.sum())
    small = rng.random(count) < 0.7
    slots = np.where(small, rng.integers(1, 11, count), rng.integers(30, 201, count))
    not_ready = rng.binomial(slots, 0.08)
    accept = np.clip(rng.beta(5.0, 15.0, count), 0.03, 0.8)
    delay = np.clip(10.0 * rng.lognormal(0.0, 0.3, count), 3.0, 20.0)
    handle = 180.0 * rng.lognormal(0.0, 0.25, count)
    patience = 60.0 * rng.lognormal(0.0, 0.3, count)
    dual = (rng.random(count) < 0.1) & (channel_index != channels.index("email"))
    reactive_share = rng.uniform(0.15, 0.45, count)
    staffed = slots - not_ready
    reactive_rate = np.where(dual, reactive_share * staffed / handle, 0.0)

    numbers = dict.fromkeys(channels, 0)
    specs: list[TargetSpec] = []
    for i in range(count):
        channel = channels[int(channel_index[i])]
        numbers[channel] += 1
        specs.append(
            TargetSpec(
                target_id=f"{channel}-{numbers[channel]:04d}",
                name=f"{channel.capitalize()} group {numbers[channel]}",
                channel=channel,
                slots=int(slots[i]),
                not_ready=int(not_ready[i]),
                accept_probability=float(accept[i]),
                resolution_delay_seconds=float(delay[i]),
                handle_mean_seconds=float(handle[i]),
                handle_cv=1.0,
                patience_seconds=float(patience[i]),
                reactive_rate_per_second=float(reactive_rate[i]),
            )
        )
    return specs
