"""The report a person looks at: one HTML page with PNG plots for a conversion, a sweep or a comparison.

    data = gather_report(runtime, run_id)      # runs.py: an MLflow parent run → ReportData (plain values)
    report = render_report(data, folder)       # render.py: index.html + PNGs + report.json, atomically
    log_report(logger, report.folder)          # runs.py: the files as the run's `report/` artifacts

data.py holds the plain values (plans, sweep points, curves, evaluation rows, lineage); plots.py draws
them (matplotlib's object API on the Agg canvas: no pyplot state, safe in a task's thread); page.py writes
the HTML. The convert flow's report stage (tasks/report.py) and `moe2dense report RUN_ID` render with
the same `render_report`.
"""
