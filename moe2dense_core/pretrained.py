"""Every Hugging Face `from_pretrained` of moe2dense goes through here, with remote code off.

`TRUST_REMOTE_CODE` is the one setting, and it is False: moe2dense never runs a checkpoint's own Python
code (a recipe's `source.trust_remote_code` accepts only false; lineage records the value as the
`moe2dense.trust_remote_code` tag). Passing it explicitly matters: transformers' default (None) ASKS on
the terminal whether to run the code an `auto_map` in config.json / tokenizer_config.json names, and runs
it on "y"; with False, such a checkpoint is refused with an error naming its folder. Keyword arguments
pass through to `from_pretrained`, except `trust_remote_code` itself (a TypeError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

TRUST_REMOTE_CODE: Final = False


def load_config(path: str | Path, **kwargs: Any) -> Any:
    """`AutoConfig.from_pretrained(path)` without remote code."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=TRUST_REMOTE_CODE, **kwargs)


def load_tokenizer(path: str | Path, **kwargs: Any) -> Any:
    """`AutoTokenizer.from_pretrained(path)` without remote code."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=TRUST_REMOTE_CODE, **kwargs)


def load_causal_lm(path: str | Path, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained(path)` without remote code (`output_loading_info=True`
    returns (model, info) as transformers does)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=TRUST_REMOTE_CODE, **kwargs)
