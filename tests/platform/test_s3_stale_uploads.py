"""Which incomplete multipart uploads a put aborts: its artifact's keys only, and only old ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from moe2dense_platform.s3_store import STALE_UPLOAD_AGE_S, stale_uploads

NOW = datetime(2026, 1, 2, 12, tzinfo=UTC)


def upload(key: str, hours_ago: float) -> dict:
    return {"Key": key, "UploadId": f"{key}@{hours_ago}", "Initiated": NOW - timedelta(hours=hours_ago)}


def test_only_uploads_of_the_key_or_below_it_older_than_the_age_are_stale():
    key = "store/blob/ab12/model"
    listed = [
        upload(key, 25),  # the artifact's file: stale
        upload(f"{key}/sub/w.safetensors", 48),  # a file of the artifact folder: stale
        upload(key, 23),  # young: perhaps a live writer
        upload(f"{key}-other", 99),  # shares the prefix, another key
        upload(f"{key}.manifest.json", 99),
    ]
    stale = stale_uploads(listed, key, NOW, STALE_UPLOAD_AGE_S)
    assert [u["UploadId"] for u in stale] == [f"{key}@25", f"{key}/sub/w.safetensors@48"]
    assert stale_uploads(listed, key, NOW, 0.0) == listed[:3]
