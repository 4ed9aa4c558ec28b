"""Assembly: merge + concatenate + scale the planned experts into a standard dense checkpoint.

merge.py        W_g = Σ_{e∈g} m_e W_e                                   (METHOD.md step 3)
concatenate.py  dense(x) = Σ_g c_g f_g(x) (+ s f_shared(x)), zero padding  (steps 4-5, paper Eq. 2)
layer_ffn.py    one student layer's dense FFN from streamed teacher weights
checkpoint.py   `assemble`: the whole checkpoint, config, tokenizer, model card, provenance
"""

from moe2dense_core.assembly.checkpoint import AssemblyResult, assemble
from moe2dense_core.assembly.concatenate import concatenate_blocks, pad_to_width
from moe2dense_core.assembly.merge import merge_group
from moe2dense_core.assembly.output_dir import OutputDirError
from moe2dense_core.assembly.provenance import PROVENANCE_FILE, AssemblyProvenance

__all__ = [
    "PROVENANCE_FILE",
    "AssemblyProvenance",
    "AssemblyResult",
    "OutputDirError",
    "assemble",
    "concatenate_blocks",
    "merge_group",
    "pad_to_width",
]
