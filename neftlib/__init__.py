"""neftlib: a reproducible replication of NEFTune (Jain et al., 2023) as papermill notebooks over one small library."""

__version__ = "0.1.0"
