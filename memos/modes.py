"""The forms memory takes on a request (MemOS): the vocabulary the planner, the scheduler and the local
runtime share."""

from __future__ import annotations

from enum import StrEnum


class MemoryMode(StrEnum):
    AUTO = "auto"  # the planner chooses (memos.chat.planner.choose_mode)
    PLAINTEXT = "plaintext"  # retrieved memories as a fenced block in the prompt
    ACTIVATION = "activation"  # the block as a precomputed KV cache (local models)
    PARAMETRIC = "parametric"  # the user's LoRA adapter (local models)
    OFF = "off"
