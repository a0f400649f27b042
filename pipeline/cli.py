"""`hsi <stage>`: parse arguments and dispatch to pipeline.stages; nothing else lives here."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline.errors import PipelineError
from pipeline.io import describe_os_error
from pipeline.params import load_params


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsi", description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    sub.add_parser("fetch", help="download/copy and verify the dataset into data/raw/<dataset>/")
    sub.add_parser("prepare", help="validate, split, PCA → data/prepared/<dataset>/")
    for name, text in (
        ("train", "train one model for one seed"),
        ("evaluate", "test-split metrics, confusion reports and scene maps for one model/seed"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--model", required=True)
        s.add_argument("--seed", type=int, required=True)
    sub.add_parser("report", help="compare every model × seed: mean ± std, McNemar, maps")
    s = sub.add_parser("predict", help="classify a user's own scene with a trained checkpoint")
    s.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        help="a checkpoint .pt, or a registered MLflow model models:/NAME/VERSION",
    )
    s.add_argument("--cube", required=True, help=".mat (v5/v7.3), .npy or ENVI .hdr")
    s.add_argument("--key", default=None, help="array key inside a .mat (auto-detected if unique)")
    s.add_argument("--out", default=None, help="output folder (default: beside the cube)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s = sub.add_parser("denoise_train", help="train a denoiser of denoise.models")
    s.add_argument("--model", default=None, help="one of denoise.models (default: each in turn)")
    sub.add_parser("denoise_evaluate", help="MPSNR/MSSIM/SAM of the denoisers vs baselines")
    sub.add_parser(
        "robustness", help="classification OA vs noise level, with and without denoising"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        params = None if args.stage == "predict" else load_params(args.params)
        stage = importlib.import_module(f"pipeline.stages.{args.stage}")
        stage.main(params, args)
    except PipelineError as e:
        print(f"hsi {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hsi {args.stage}: interrupted; outputs of this run not written", file=sys.stderr)
        return 130
    except OSError as e:  # a file-system fault outside pipeline/io.py (e.g. a stage's unlink)
        print(f"hsi {args.stage}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
