"""How a benchmark ends: the machine's state beside its numbers, written atomically and printed."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import torch

from neftlib.io import write_json


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
