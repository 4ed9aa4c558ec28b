"""The platform every stage runs on: settings, recipes, the artifact store (local / S3), MLflow tracking,
cache keys, result storage, log redaction, progress lines, and the local team stack.

Layers (imports point down only; tests/core/test_core_layers.py and tests/test_package_layers.py check them):

    flows/               pipelines and the CLI
      │
    tasks/               one Prefect task per stage (+ the shared stage helpers: stage, publish, results)
      │
    moe2dense_platform/  this package — never imports tasks/ or flows/; its recipe schema
      │                  (recipe, recipe_io, recipe_teacher, corpus, field_errors) imports no Prefect
    moe2dense_core/      the library (never prefect / mlflow / boto3)
"""
