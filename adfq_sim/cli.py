"""Command line: parses arguments and calls the pipeline functions; nothing else lives here.

Bad input (UserInputError) becomes one line on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from adfq_sim.errors import UserInputError

EXIT_USER_ERROR = 2


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the usage block before errors; we keep errors to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _config(args: argparse.Namespace):
    """The validated config, with --out / --seed / --executor / --hardware overriding the file; checked
    before the command imports torch, so bad input answers at once."""
    from adfq_sim.config import load_config

    overrides = {key: value for key, value in (("out", args.out), ("seed", args.seed),
                                               ("hardware", getattr(args, "hardware", None))) if value is not None}
    if getattr(args, "executor", None) is not None:
        overrides["executor"] = {"kind": args.executor}
    return load_config(args.config, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    from adfq_sim.pipeline import run_experiment

    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    folder = run_experiment(config, mode)
    print(folder / "results.json")
    return 0


EXIT_MISMATCH = 1


def _config_or_run(args: argparse.Namespace, command: str):
    """The validated config of `--config`, or None for a RUN_DIR; exactly one of the two is given."""
    if (args.config is None) == (args.run_dir is None):
        raise UserInputError(f"{command}: give --config CFG (calibrate afresh) or a RUN_DIR (a finished run), "
                             "one of the two")
    if args.run_dir is None:
        return _config(args)
    given = [flag for flag, value in (("--out", args.out), ("--seed", args.seed)) if value is not None]
    if given:
        raise UserInputError(f"{command} RUN_DIR: {' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                             "to --config only (a run's outputs go in the run folder)")
    if not (args.run_dir / "results.json").is_file():
        raise UserInputError(f"{args.run_dir}: no results.json (is it an `adfq-sim run` folder?)")
    return None


def _cmd_verify(args: argparse.Namespace) -> int:
    config = _config_or_run(args, "verify")
    if args.program is not None and (config is None or not args.program.is_file()):
        raise UserInputError("verify RUN_DIR: --program goes with --config" if config is None
                             else f"{args.program}: no such program file")
    from adfq_sim.verification import run_verification, verify_run

    path, mismatches = verify_run(args.run_dir) if config is None else run_verification(config, args.program)
    print(path)
    if mismatches:
        print(f"adfq-sim: {mismatches} mismatched codes between the simulator and the integer-faithful "
              "fake-quant (see the table above)", file=sys.stderr)
        return EXIT_MISMATCH
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    config = _config_or_run(args, "cost")
    if config is None and args.hardware is not None:
        from hw_models.spec import load_specs

        load_specs(args.hardware)  # refused before torch is imported, as a config's would be
    from adfq_sim.costing import cost_run, run_cost

    for path in cost_run(args.run_dir, args.hardware) if config is None else run_cost(config):
        print(path)
    return 0


def _cmd_export_workload(args: argparse.Namespace) -> int:
    config = _config(args)
    from adfq_sim.workload_export import run_export

    print(run_export(config, args.format))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reports.render import render

    for path in render(args.run_dir):
        print(path)
    return 0


def _cmd_train_demo(args: argparse.Namespace) -> int:
    import hashlib

    from adfq_sim.models.train_demo import DemoTrainRecipe, save_checkpoint, train_demo_vit

    if args.epochs is not None and args.epochs < 1:
        raise UserInputError(f"--epochs: must be >= 1, got {args.epochs}")
    recipe = DemoTrainRecipe(**{k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None})
    model, accuracies = train_demo_vit(recipe)
    save_checkpoint(model, args.out)
    digest = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    logging.getLogger("adfq_sim").info(
        "top-1: train %.2f %%, calib %.2f %%, test %.2f %%", *(100 * accuracies[s] for s in ("train", "calib", "test")))
    print(f"{args.out} sha256 {digest}")
    return 0


def _experiment_arguments(parser: argparse.ArgumentParser, or_run_dir: bool = False) -> None:
    """--config, --out, --seed; with `or_run_dir`, a finished run folder may stand instead of --config."""
    if or_run_dir:
        parser.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR",
                            help="a folder written by `adfq-sim run` (instead of --config)")
    parser.add_argument("--config", required=not or_run_dir, type=Path, metavar="CFG",
                        help="experiment YAML (see docs/config.md); a file with only a "
                             "hardware section runs the embedded demo")
    parser.add_argument("--out", metavar="DIR", help="parent folder of the run folder (overrides the config's out)")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed (overrides the config's seed)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="adfq-sim",
        description="Post-training quantization of Vision Transformers (ADFQ-ViT and baselines), "
                    "integer-only simulation and accelerator cost modelling.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineErrorParser)

    run = sub.add_parser("run", help="run an experiment config end to end and write a run folder",
                         description="Load the model and data the config names, evaluate FP32, calibrate and "
                                     "evaluate every (method, bits) pair on the integer simulator too, price "
                                     "each on the config's accelerators, and write <out>/<name>/ with "
                                     "results.json, results.csv, run.log, plots/, report.md and report.html. "
                                     "Each (method, bits) is kept as it finishes, so an interrupted run "
                                     "continues with --resume; an existing run is replaced only with "
                                     "--overwrite.")
    _experiment_arguments(run)
    existing = run.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue an interrupted run of the same config: finished cells are read back, "
                               "only the rest run")
    existing.add_argument("--overwrite", action="store_true",
                          help="start again, replacing the run folder (and any interrupted run) of this config")
    run.add_argument("--executor", choices=("local", "ray"),
                     help="where the cells run (overrides the config's executor.kind; ray needs the [ray] extra)")
    run.set_defaults(func=_cmd_run)

    ver = sub.add_parser("verify", help="check the integer-only simulator against the integer-faithful fake-quant",
                         description="For every (method, bits) of the config: calibrate, export the "
                                     "IntegerProgram, run the Numba simulator and the integer-faithful "
                                     "PyTorch mode on verify.images eval images, print a per-tensor table "
                                     "of mismatched codes and write <out>/<name>/verify.json and each "
                                     "program with its op listing under programs/. With a RUN_DIR instead of "
                                     "--config, verify the finished run's saved programs (nothing is "
                                     "calibrated) into RUN_DIR/verify.json. With --program, verify that saved "
                                     "program on the config's data into <out>/<name>/verify-<file stem>.json. "
                                     "Exit status 1 on any mismatch.")
    _experiment_arguments(ver, or_run_dir=True)
    ver.add_argument("--program", type=Path, metavar="FILE",
                     help="a saved IntegerProgram (.npz, e.g. from a previous verify's programs/) to verify "
                          "instead of calibrating the config's methods")
    ver.set_defaults(func=_cmd_verify)

    cost = sub.add_parser("cost", help="price every (method, bits) of a config or a finished run on an accelerator, "
                                       "per layer",
                          description="For every (method, bits) of the config: calibrate, export the "
                                      "IntegerProgram and price one inference on each accelerator (the "
                                      "config's hardware, or --hardware): per-layer table and totals on "
                                      "stderr, <out>/<name>/cost-<accelerator>.json. With a RUN_DIR instead of "
                                      "--config, price the finished run's saved programs with the outlier counts "
                                      "it measured (nothing is calibrated): RUN_DIR/cost-<accelerator>.json.")
    _experiment_arguments(cost, or_run_dir=True)
    cost.add_argument("--hardware", metavar="PRESET_OR_FILE",
                      help="accelerator preset name or spec YAML file (overrides the config's hardware)")
    cost.set_defaults(func=_cmd_cost)

    exp = sub.add_parser("export-workload", help="write every (method, bits) of a config as Timeloop, ZigZag or "
                                                 "SCALE-Sim inputs",
                         description="For every (method, bits) of the config: calibrate, export the IntegerProgram "
                                     "and write its GEMMs in a peer tool's format with each accelerator's hardware "
                                     "file (the config's hardware, or --hardware) under "
                                     "<out>/<name>/workloads/<format>/<method>_<bits>/: timeloop (v0.4 problem per "
                                     "GEMM shape, layers.yaml, arch-<accelerator>.yaml), zigzag (workload.yaml, "
                                     "<accelerator>.yaml), scalesim (topology.csv, <accelerator>.cfg, layout.csv). "
                                     "docs/cost-model.md says what each format cannot express.")
    _experiment_arguments(exp)
    exp.add_argument("--format", required=True, choices=("timeloop", "zigzag", "scalesim"))
    exp.add_argument("--hardware", metavar="PRESET_OR_FILE",
                     help="accelerator preset name or spec YAML file (overrides the config's hardware)")
    exp.set_defaults(func=_cmd_export_workload)

    rep = sub.add_parser("report", help="re-render a run folder's plots and reports from its results.json",
                         description="Draw plots/ (PNG and SVG) and write report.md and report.html in RUN_DIR "
                                     "from its results.json alone, without recomputing anything (`adfq-sim run` "
                                     "does this at the end of every run).")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder written by `adfq-sim run`")
    rep.set_defaults(func=_cmd_report)

    train = sub.add_parser("train-demo", help="retrain the embedded demo ViT deterministically",
                           description="Train the demo ViT on the bundled digits' train split with the fixed "
                                       "recipe and write its weights (safetensors). The committed checkpoint "
                                       "was made by this command with the defaults.")
    train.add_argument("--out", type=Path, default=Path("demo_vit.safetensors"), metavar="PATH",
                       help="where to write the checkpoint (default: ./demo_vit.safetensors)")
    train.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: the recipe's)")
    train.add_argument("--seed", type=int, metavar="N", help="training seed (default: the recipe's)")
    train.set_defaults(func=_cmd_train_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our messages at INFO; other libraries' (timm's checkpoint chatter) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("adfq_sim").setLevel(logging.INFO)
    from adfq_sim.progress import heartbeat

    try:
        with heartbeat():
            return args.func(args)
    except UserInputError as exc:
        print(f"adfq-sim: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("adfq-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
