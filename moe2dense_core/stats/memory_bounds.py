"""The default memory bounds of calibration (bytes), in a module that imports nothing, so that settings and
recipe schemas can name them without loading the statistics machinery (transformers, torch).

DEFAULT_MAX_CHUNK_BYTES   all-expert outputs [E, T_chunk, H] and one block's intermediates computed at once
                          (hooks.py)
DEFAULT_MAX_HIDDEN_BYTES  calibration hidden states held in RAM by layer-by-layer collection; beyond it they
                          spill to a memory-mapped temporary file (hidden_store.py)
DEFAULT_MAX_BLOCK_BYTES   float32 bytes of one block of routed experts read from disk at a time
                          (streamed_experts.py)
The peak memory of layer-by-layer calibration as a function of them: collect.py's module docstring.
"""

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
DEFAULT_MAX_HIDDEN_BYTES = 2 * 2**30
DEFAULT_MAX_BLOCK_BYTES = 64 * 2**20
