"""Ending multi-process (gloo) runs: `exit_without_teardown`."""

from __future__ import annotations

import logging
import os
import sys


def exit_without_teardown(code: int = 0) -> None:
    """End a finished multi-process run without the interpreter's teardown.

    When Python frees a DDP model, the gloo process group's destructor joins its worker threads while holding the
    GIL; a worker that is still dropping a finished collective's tensors needs the GIL, so the rank hangs forever
    after its outputs are written (py-spy: `~ProcessGroupGloo` joining in the main thread, `~AsyncAllgatherWork`
    waiting for the GIL in the worker), or its threads abort at exit ("terminate called without an active
    exception"). Call it once everything is saved and the process group is destroyed
    (`Accelerator.end_training`): it finishes a wandb run, flushes the logs and leaves with `os._exit(code)`.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
