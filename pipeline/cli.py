"""`hsi <stage>`: parse the arguments and dispatch to pipeline.stages; nothing else lives here."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline.errors import PipelineError
from pipeline.io import describe_os_error
from pipeline.params import load_params

DESCRIPTION = """\
HybridSN and its variants, classical baselines and DnCNN denoisers on hyperspectral scenes.
Each command is one stage of the DVC pipeline (`dvc repro` runs them in order; `dvc dag` shows
the graph) and reads params.yaml, which is validated on load. Outputs go to data/, models/ and
reports/; every run is logged to MLflow (`mlflow ui`). Errors are one line, exit code 2;
Ctrl-C exits 130 and writes nothing half-done."""

EPILOG = """\
examples:
  hsi fetch && hsi prepare                    the scene, verified; split and PCA
  hsi train --model hybridsn --seed 0         one model (resumes after a kill)
  hsi evaluate --model hybridsn --seed 0      test metrics and scene maps
  hsi report                                  every model x seed compared
  hsi study                                   models x seeds x folds, fanned out over Ray
  hsi predict --checkpoint models/indian_pines/hybridsn-seed0.pt --cube my_scene.mat"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hsi",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    sub.add_parser("fetch", help="download or copy the scene and verify it: data/raw/<dataset>/")
    sub.add_parser("prepare", help="check the scene, split it, fit PCA: data/prepared/<dataset>/")
    for name, text in (
        ("train", "train one model for one seed (a CNN with the loop, or svm/rf)"),
        ("evaluate", "test metrics, confusion reports and scene maps of one model × seed"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--model", required=True, help="a classification model of the registry")
        s.add_argument("--seed", type=int, required=True)
    sub.add_parser("report", help="every model × seed compared: verdicts, CIs, per-class, maps")
    sub.add_parser("study", help="the models × seeds × folds grid of `study:` (Ray or serial)")
    s = sub.add_parser("predict", help="classify your own scene with a trained checkpoint")
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
    sub.add_parser("robustness", help="classification OA vs noise, with and without denoising")
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
