"""Stage `fetch`: bring the dataset's cube and ground truth into data/raw/<dataset>/, verified."""

from __future__ import annotations

import logging

from pipeline.data.fetching import fetch_dataset
from pipeline.stages.common import raw_dir

log = logging.getLogger(__name__)


def run(params) -> dict:
    ds = params.dataset
    out = raw_dir(params)
    manifest = fetch_dataset(
        ds.name,
        out,
        source=ds.source,
        data_dir=ds.data_dir,
        custom=ds.custom.to_dict() if ds.name == "custom" else None,
    )
    log.info("fetched %s into %s (%s)", ds.name, out, manifest["cube"]["sha256"][:12])
    return manifest


def main(params, args) -> None:
    run(params)
