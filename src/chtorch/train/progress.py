"""Console progress: a tqdm bar over the whole run on a terminal, one line per epoch elsewhere.

``train.progress``: ``auto`` (a bar when stderr is a terminal, else epoch lines — logs and CI stay
readable), ``bar``, ``lines`` or ``off`` (only the final summary).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress over ``total`` optimizer steps, starting at ``done`` (a resumed run)."""

    def __init__(self, mode: str, total: int, done: int, epochs: int, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.bar: Any = None
        if mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency of the cli extra
                mode = "lines"
            else:
                self.bar = tqdm(
                    total=total, initial=done, unit="step", dynamic_ncols=True, leave=False, file=sys.stderr
                )
        self.mode = mode
        self.total, self.start_done, self.epochs = total, done, epochs
        self.t0 = time.perf_counter()

    def eta(self, done: int) -> float | None:
        """Seconds left, from this session's speed."""
        steps = done - self.start_done
        if steps <= 0:
            return None
        return (time.perf_counter() - self.t0) / steps * (self.total - done)

    def step(self, epoch: int, postfix: dict[str, str] | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if postfix is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
            self.bar.set_postfix(postfix, refresh=False)

    def line(self, text: str) -> None:
        """An epoch summary (or any message) that stays on screen."""
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def message(self, text: str) -> None:
        """Printed in every mode except off, above the bar."""
        self.line(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
