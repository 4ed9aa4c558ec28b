"""The bottom of the core is layered without loops: errors, pretrained, registry, process_owner ← io ← arch ←
checkpoint ← the rest.

`io/` reads and writes checkpoints (and holds the MXFP4 / FP8 codecs that `arch/` uses); `arch/` knows each
family; `checkpoint/` validates a checkpoint against its family and opens the teacher (open_teacher). A
module may import only from its own layer or a lower one — statically, every `import` statement, at
module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import moe2dense_core

LAYERS = {
    "errors": 0,
    "pretrained": 0,
    "registry": 0,
    "process_owner": 0,
    "io": 1,
    "arch": 2,
    "checkpoint": 3,
}
"""Rank of the bottom layers (errors, pretrained — the one from_pretrained gate —, the generic registry and
process_owner — which process owns a leftover, io/leftovers.py — import no core module);
every other part of moe2dense_core ranks above them."""
ROOT = Path(moe2dense_core.__file__).parent


def _rank(module: str) -> int:
    """Rank of `moe2dense_core.<part>…`."""
    return LAYERS.get(module.split(".")[1], len(LAYERS))


def _core_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.startswith("moe2dense_core.")]


def test_no_bottom_layer_module_imports_a_higher_layer():
    offenders = []
    for part, rank in LAYERS.items():
        paths = (
            [ROOT / f"{part}.py"] if (ROOT / f"{part}.py").is_file() else sorted((ROOT / part).rglob("*.py"))
        )
        for path in paths:
            offenders += [
                f"{path.relative_to(ROOT)}:{line} imports {name}"
                for line, name in _core_imports(path)
                if _rank(name) > rank
            ]
    assert offenders == []
