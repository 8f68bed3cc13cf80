"""Ending a multi-process run (``accelerate launch``) without a teardown deadlock."""

from __future__ import annotations

import time

from accelerate import PartialState

TEARDOWN_GRACE_S = 0.5


def finish_processes() -> None:
    """Wait for every process, then destroy the process group; nothing on a single process.

    Gloo's worker thread frees a finished collective's work (and the tensors it keeps) just after the
    collective returns, and needs the GIL for that. Destroying the process group at once can deadlock:
    its destructor joins that thread while holding the GIL (seen under load with py-spy: the main thread
    in ``~ProcessGroupGloo`` -> ``std::thread::join``, the worker in ``~AsyncAllgatherWork`` waiting
    for the GIL). Sleeping after the last barrier releases the GIL and lets the worker finish first.
    """
    state = PartialState()
    if state.num_processes == 1:
        return
    state.wait_for_everyone()
    time.sleep(TEARDOWN_GRACE_S)
    state.destroy_process_group()
