"""Progress lines for long steps: percent done and an ETA, on stderr.

On a terminal one line is rewritten in place; into a file or pipe (the demo's
set-up log) a new line is written every ``every_s`` seconds, so the log shows
how far a step got and how long it still needs.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


class Progress:
    """``Progress("train", total).update(done, "loss 0.12")``; ``close()`` prints the last line."""

    def __init__(self, label: str, total: float, unit: str = "", every_s: float = 5.0,
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.total = max(float(total), 1e-9)
        self.unit = unit
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._last = -1e9
        self._done = 0.0
        self._extra = ""
        self._open = False

    def line(self, done: float, extra: str = "", now: float | None = None) -> str:
        """``[label] 42% (420/1000 unit) 12s elapsed, ETA 17s extra``."""
        elapsed = (now if now is not None else time.monotonic()) - self.t0
        frac = min(1.0, max(0.0, done / self.total))
        eta = _duration(elapsed * (1 - frac) / frac) if 0 < frac < 1 else ("-" if frac == 0 else "0s")
        count = f"{done:,.0f}/{self.total:,.0f}{' ' + self.unit if self.unit else ''}"
        return (f"[{self.label}] {frac * 100:3.0f}% ({count}) {_duration(elapsed)} elapsed, ETA {eta}"
                + (f" {extra}" if extra else ""))

    def update(self, done: float, extra: str = "") -> None:
        self._done, self._extra = done, extra
        now = time.monotonic()
        if not self.enabled or (now - self._last < self.every_s and done < self.total):
            return
        self._last = now
        self._write(self.line(done, extra, now))

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, extra: str | None = None) -> None:
        """The final line (100% when the work is done), ending the in-place line on a terminal."""
        if not self.enabled:
            return
        text = self.line(self._done, self._extra if extra is None else extra)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K\n")
        elif self._last < 0 or self._done < self.total or time.monotonic() - self._last > 0.5:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.enabled = False


__all__ = ["Progress"]
