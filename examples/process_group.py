"""A callback that destroys a ``gloo`` process group when ``fit()`` ends.

Lightning destroys only NCCL process groups at exit. A ``gloo`` group left alive until the
interpreter shuts down can abort a worker (``terminate called without an active exception``,
SIGABRT) after training finished normally, which ``ddp_spawn`` then reports as a failed run.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


class ReleaseGlooProcessGroup(Callback):
    """Barrier, then ``destroy_process_group()``, in ``teardown`` after a successful ``fit()``.

    Every rank reaches ``teardown`` after a successful ``fit()`` (after a failure Lightning does
    not call it, so no rank waits for a dead one); the barrier makes sure that no collective is
    still in flight when the group goes.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "gloo":
            dist.barrier()
            dist.destroy_process_group()
