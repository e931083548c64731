"""PEFT's names, imported without bitsandbytes: dia2 and finetune import PEFT from here.

PEFT imports bitsandbytes whenever it is installed (at import, and again for every LoRA layer it
makes), and importing bitsandbytes on a CPU with AVX512-BF16 asks the Hugging Face Hub whether the
publisher of an optional CPU kernel is trusted: a network request on every command that loads an
adapter, and an alarming warning offline. So bitsandbytes is hidden while PEFT is imported, and
PEFT's (cached) answer to "is bitsandbytes installed?" is "no" until `dia2.model.quant` imports it,
when 8- or 4-bit weights are asked for, and calls `bitsandbytes_imported`.
"""

from __future__ import annotations

import importlib
import sys

_hide = "bitsandbytes" not in sys.modules
if _hide:
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import bitsandbytes -> ImportError
try:
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.import_utils import is_bnb_4bit_available, is_bnb_available
    from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
    from peft.utils.other import get_pattern_key

    if _hide:
        is_bnb_available(), is_bnb_4bit_available()  # cached now, while bitsandbytes looks absent
finally:
    if _hide and sys.modules.get("bitsandbytes", False) is None:
        del sys.modules["bitsandbytes"]


def bitsandbytes_imported() -> None:
    """Let PEFT see bitsandbytes (imported by `dia2.model.quant`): its 8/4-bit LoRA layers need it.

    A PEFT module that defines those layers only when bitsandbytes is there (`peft.tuners.lora.bnb`
    and its kin) and was imported while it looked absent is imported again."""
    seen_absent = not (is_bnb_available() and is_bnb_4bit_available())
    is_bnb_available.cache_clear()
    is_bnb_4bit_available.cache_clear()
    if seen_absent:
        stale = [name for name in sys.modules if name.startswith("peft.tuners.") and name.endswith(".bnb")]
        for name in stale:
            importlib.reload(sys.modules[name])


__all__ = ["BaseTunerLayer", "LoraConfig", "PeftModel", "bitsandbytes_imported", "check_target_module_exists",
           "get_peft_model", "get_pattern_key"]
