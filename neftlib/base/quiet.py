"""Messages from the pinned libraries that a user cannot act on, kept out of notebooks and terminals."""
import logging

# bitsandbytes >= 0.50 logs this at import on CPUs with AVX512-BF16: its fused CPU kernel would come from a
# hub download (the `kernels` package). Its portable kernels serve instead, and neftlib keeps 4-bit layers on
# those anyway (training.models.portable_4bit), so nothing is lost and there is nothing to install.
UNACTIONABLE = {"bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",)}


class _Drop(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def hide_unactionable_logs() -> None:
    """Drop the records above; idempotent, and cheap enough for `import neftlib` (no library is imported)."""
    for name, prefixes in UNACTIONABLE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(prefixes))
