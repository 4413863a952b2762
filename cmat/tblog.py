"""Run logging: TensorBoard scalars/figures under ``tb/`` and a JSON-lines log ``log.jsonl``."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional


class RunLogger:
    """Writes every scalar to TensorBoard and, with its tag and step, to ``log.jsonl``.

    ``enabled=False`` (non-zero DDP ranks, or tests that do not need it) makes every call a no-op.
    """

    def __init__(self, out: Optional[Path], enabled: bool = True):
        self.enabled = bool(enabled and out is not None)
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            out = Path(out)
            self._tb = SummaryWriter(log_dir=str(out / "tb"))
            self._jsonl = open(out / "log.jsonl", "a", encoding="utf-8")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if not self.enabled:
            return
        self._tb.add_scalar(tag, float(value), step)
        self.event(tag=tag, value=float(value), step=int(step))

    def event(self, **fields) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"time": round(time.time(), 3), **fields}) + "\n")
        self._jsonl.flush()

    def figure(self, tag: str, fig, step: int) -> None:
        if self.enabled:
            self._tb.add_figure(tag, fig, step)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False
