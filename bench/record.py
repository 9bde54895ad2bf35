"""What the benchmarks share: timing a call, and how a benchmark ends (the machine's state beside its
numbers, written atomically and printed)."""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from neftlib.base.io import write_json


def timed(fn, device: torch.device):
    """Result, wall seconds, and this process's CPU seconds (all its threads).

    On a shared machine the wall time also counts other programs' turns on the cores; with one
    thread the CPU time is the work itself, close to the wall time the same work takes on an idle core."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - t0, time.process_time() - c0


def publish(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Add load, torch version, threads and date to `result`, write it to `out` (readers never see a
    half-written file) and print it."""
    result = {**result,
              "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return result
