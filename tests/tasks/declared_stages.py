"""Every stage of the pipeline declared (importing a stage module declares it: tasks/stage.py)."""

import flows.convert  # noqa: F401 (imports every stage module the convert flow runs)
from tasks.stage import STAGES

__all__ = ["STAGES"]
