"""The Kaleido subject-to-video model: DiT with R-RoPE, engine, prompt/output I/O, weight-layout maps."""

import logging as _logging

# torchao (int8 / fp8 weights) logs a warning at import for each optional kernel library that this build or GPU
# generation lacks; transformers, peft and diffusers import it whenever it is installed: noise in every command.
_logging.getLogger("torchao").setLevel(_logging.ERROR)


class _TorchaoEnumNotice(_logging.Filter):
    """torch warns, once per torchao enum, that torchao registers it in a deprecated way: not ours to act on."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Calling register_constant() on Enum subclasses" not in record.getMessage()


_logging.getLogger("torch.utils._pytree").addFilter(_TorchaoEnumNotice())
