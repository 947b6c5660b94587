"""`monovl serve` with a device fault injected, for the dead-device tests: run as
`python -m tests.fault_injection serve ...`.

Once the file named by MONOVL_FAULT_TRIGGER exists, the device fails:
- MONOVL_FAULT=lost (any device): every forward raises and the device check fails, as for a GPU
  that fell off the bus;
- MONOVL_FAULT=device-assert (CUDA): the forward indexes out of bounds on the GPU, a real
  device-side assert, sticky for the process; nothing else is patched;
- MONOVL_FAULT=slow: no fault, each step takes MONOVL_STEP_SECONDS more (0.02), for tests that
  need responses open for a while.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from monovl.engine.model_runner import DeviceError, ModelRunner
from monovl.server.cli import main

TRIGGER = Path(os.environ["MONOVL_FAULT_TRIGGER"])
FAULT = os.environ.get("MONOVL_FAULT", "lost")
STEP_SECONDS = float(os.environ.get("MONOVL_STEP_SECONDS", "0.02"))
_execute, _check_device = ModelRunner.execute, ModelRunner.check_device


def execute(self: ModelRunner, chunks):
    if TRIGGER.exists():
        if FAULT == "slow":
            time.sleep(STEP_SECONDS)
        elif FAULT == "device-assert":
            table = torch.zeros(4, device=self.model.device)
            table[torch.tensor([1 << 30], device=self.model.device)] += 1  # asserts on the device
        else:
            raise RuntimeError("injected fault: the device is gone")
    return _execute(self, chunks)


def check_device(self: ModelRunner) -> None:
    if FAULT == "lost" and TRIGGER.exists():
        raise DeviceError("injected fault: the device no longer runs work")
    _check_device(self)


ModelRunner.execute = execute
ModelRunner.check_device = check_device

if __name__ == "__main__":
    main()
