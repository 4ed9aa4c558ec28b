"""tasks/caching.py: keys change exactly when what a stage's output depends on changes."""

from __future__ import annotations

from types import SimpleNamespace

from moe2dense_core.plan import PlanConfig
from tasks.caching import plan_key, source_key
from tasks.recipe import SourceConfig


def _context():
    def fn():
        return None

    return SimpleNamespace(task=SimpleNamespace(fn=fn))


def test_plan_key_depends_on_stats_and_config_only():
    stats = SimpleNamespace(stats_digest="s" * 64)
    base = plan_key(_context(), {"calibration": stats, "plan": PlanConfig(), "parent_run_id": "a"})
    assert base == plan_key(_context(), {"calibration": stats, "plan": PlanConfig(), "parent_run_id": "b"})
    assert base != plan_key(
        _context(), {"calibration": stats, "plan": PlanConfig(scoring="sf"), "parent_run_id": "a"}
    )
    other_stats = SimpleNamespace(stats_digest="t" * 64)
    assert base != plan_key(
        _context(), {"calibration": other_stats, "plan": PlanConfig(), "parent_run_id": "a"}
    )


def test_source_key_follows_hub_revision_and_local_file_edits(tmp_path):
    hub = source_key(_context(), {"source": SourceConfig(model="org/name", revision="abc")})
    assert hub != source_key(_context(), {"source": SourceConfig(model="org/name", revision="def")})
    (tmp_path / "config.json").write_text("{}")
    local = SourceConfig(model=str(tmp_path))
    first = source_key(_context(), {"source": local})
    assert first == source_key(_context(), {"source": local})
    (tmp_path / "config.json").write_text('{"edited": true}')
    assert first != source_key(_context(), {"source": local})
