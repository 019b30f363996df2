"""The signals that stop a run: the first is only remembered, a second one ends the process at once.

A scheduler (SLURM, Kubernetes, torchrun) asks a job to stop with a signal and kills
it a while later. The handler does no work of its own: the training loop looks at
:attr:`StopSignals.received` where stopping loses nothing (the end of an optimizer
step, :mod:`lit_lora.callbacks.preemption`). Kept free of imports beyond the standard
library, so the handler can be tested in a bare process.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from types import FrameType


class StopSignals:
    """Remembers the first stop signal this process receives; a second one ends the process by that signal.

    A second signal means whoever sent the first will not wait for the step to end
    (a user pressing twice, a scheduler's last warning), so the process dies as it
    would have without a handler: the exit status says which signal ended it.

    Args:
        forward: Called with each signal first, to pass it on to the processes this
            one started (Lightning's launcher of the other ranks); None for none.
    """

    def __init__(self, forward: Callable[[int], None] | None = None) -> None:
        self.forward = forward
        # The first signal's number; 0 until one arrives.
        self.received = 0
        self._owner = os.getpid()

    def install(self, signums: Iterable[int]) -> None:
        """Handle ``signums`` from now on, replacing their handlers (main thread only, as for any handler).

        Args:
            signums: The signal numbers that ask the run to stop.
        """
        for signum in signums:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # DataLoader workers are forked with this handler; they train nothing and
        # end with the process that started them, so the signal is not theirs to act on.
        if os.getpid() != self._owner:
            return
        if self.forward is not None:
            self.forward(signum)
        if not self.received:
            self.received = signum
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
