"""neftlib: a reproducible replication of NEFTune (Jain et al., 2023) as papermill notebooks over one small library."""
from neftlib.base.quiet import hide_unactionable_logs

hide_unactionable_logs()  # before any module here imports bitsandbytes (peft and transformers do, lazily)

__version__ = "0.1.0"
