"""The `actprm` command: a table of verbs, each a config model (actprm.config) and a job (pipelines/).

Every flag, its help and its default come from the config model's fields; a verb's description is
the model's docstring and its examples the model's `examples`. Settings merge as defaults < `--config`
YAML < flags; the job's `run(cfg, progress)` does the work and returns a result whose `render()` is
printed. A user's mistake is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from actprm import __version__, config, provenance
from actprm.errors import UserError, disk_full
from actprm.judge.interrupt import stop_signals_interrupt
from actprm.redact import redact

#: the verbs, in --help order: `init-model` is config.InitModelConfig (the first line of its docstring is the
#: verb's help, the rest its description) and runs pipelines/init_model.py
VERBS = ("generate", "validate", "init-model", "import", "score", "filter", "annotate", "train", "evaluate", "loop",
         "demo", "estimate", "judge-check", "inspect", "export")
JOB_MODULES = {"import": "import_model"}  # a Python keyword is no module name


def config_model(verb: str) -> type[config.Config]:
    return getattr(config, "".join(w.title() for w in verb.split("-")) + "Config")


def job_module(verb: str) -> str:
    return "pipelines." + JOB_MODULES.get(verb, verb.replace("-", "_"))


EPILOG = """\
examples:
  actprm generate --world arith --n 100000 --output out/world
  actprm validate --input ../shared/data/processbench/ --output out/checked
  actprm score --input out/checked/valid --output out/scored
  actprm annotate --backend openai --base-url http://localhost:8000/v1 --judge-model Qwen/QwQ-32B \\
      --input out/scored/scored --output out/annotated
  actprm evaluate --data ../shared/data/processbench/*.json --output out/eval
  actprm loop --config configs/loop/rounds.yaml --output runs/loop
  actprm demo --output runs/demo
  actprm <verb> --help
"""


# ------------------------------------------------------------------ flags from fields


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether it is a list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _yaml_only(annotation: Any) -> bool:
    """Mappings and nested models (loop's judge: and train:) are set in the YAML only."""
    parts = typing.get_args(annotation) or (annotation,)
    return any(p is dict or typing.get_origin(p) is dict or (isinstance(p, type) and issubclass(p, BaseModel))
               for p in parts)


def _help(field: FieldInfo) -> str:
    text = (field.description or "").replace("%", "%%")  # argparse formats help with %
    if field.is_required():
        return text
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif default in (None, [], "") or isinstance(default, BaseModel):
        return text
    else:
        shown = ", ".join(map(str, default)) if isinstance(default, list) else repr(default).strip("'")
    return f"{text} (default: {shown})".strip()


def add_field_flags(parser: argparse.ArgumentParser, model: type[config.Config]) -> None:
    """One flag per field of `model`, grouped by the shared piece that declares it."""
    groups: dict[type, argparse._ArgumentGroup] = {}
    for name, field in model.model_fields.items():
        if _yaml_only(field.annotation):
            continue
        owner = next(k for k in model.__mro__ if name in vars(k).get("__annotations__", {}))
        if owner is model:
            group: Any = parser
        else:
            title = (owner.__doc__ or owner.__name__).strip().splitlines()[0]
            group = groups.setdefault(owner, parser.add_argument_group(title))
        extra = (field.json_schema_extra or {}) if isinstance(field.json_schema_extra, dict) else {}
        inner, is_list = _unwrap(field.annotation)
        kwargs: dict[str, Any] = {"help": _help(field)}
        if typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = [str(c) for c in typing.get_args(inner)]
        elif inner in (int, float):
            kwargs["metavar"] = "N" if inner is int else "X"
        if extra.get("positional"):
            group.add_argument(name, **kwargs, **({} if field.is_required() else {"nargs": "?"}))
            continue
        flags = ["--" + name.replace("_", "-"), *extra.get("cli", {}).get("aliases", [])]
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_list:
            kwargs["nargs"] = "*" if "choices" in kwargs else "+"  # `--step-features` alone: none
        group.add_argument(*flags, dest=name, **kwargs)
        for flag, value in extra.get("cli", {}).get("const", {}).items():
            group.add_argument(flag, dest=name, action="store_const", const=value, help=f"{name}: {value!r}")


# ------------------------------------------------------------------ the parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """A bad flag is a user error: one line naming it, exit code 2 (no usage block)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _summary(model: type) -> str:
    line = (model.__doc__ or "").strip().splitlines()[0].rstrip(".")
    return line[:1].lower() + line[1:]


def _description(model: type) -> str:
    paragraphs = (model.__doc__ or "").strip().split("\n\n")[1:]
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 100) for p in paragraphs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="actprm", formatter_class=_Formatter, epilog=EPILOG,
        description="actprm: train process reward models with active learning - score a corpus with an "
                    "ensemble PRM, send only the uncertain trajectories to a judge, fine-tune on the labels.")
    parser.add_argument("--version", action="version", version=f"actprm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        model = config_model(verb)
        examples = "".join(f"  {e}\n" for e in model.examples)
        p = sub.add_parser(verb, help=_summary(model), description=_description(model), formatter_class=_Formatter,
                           argument_default=argparse.SUPPRESS, epilog=f"examples:\n{examples}" if examples else None)
        add_field_flags(p, model)
        p.add_argument("--config", metavar="YAML", help="YAML with the same keys as the flags; flags win")
        p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    return parser


def _job_module(name: str) -> types.ModuleType:
    """The job's module; under `python -m pipelines.X` the running one (so it is not loaded twice)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if main is not None and spec is not None and spec.name == name:
        return main
    return importlib.import_module(name)


def run_verb(verb: str, args: argparse.Namespace) -> int:
    model = config_model(verb)
    overrides = {k: v for k, v in vars(args).items() if k in model.model_fields}
    cfg = config.load_config(model, getattr(args, "config", None), overrides)
    with provenance.job(verb, cfg):  # every Parquet file the job writes records it
        result = _job_module(job_module(verb)).run(cfg, progress=not getattr(args, "no_progress", False))
    print(result.render())
    return 0


def main(argv: list[str] | None = None) -> int:
    # our own bars and one summary line: keep transformers' loading bars out of the output
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before this call (a notebook, a test): the variable came too late
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.verb:
            parser.print_help()
            return 2
        with stop_signals_interrupt():  # SIGTERM, SIGHUP (Slurm, Kubernetes, `timeout`, a closed terminal): as Ctrl-C
            return run_verb(args.verb, args)
    except UserError as exc:
        print(f"actprm: error: {redact(str(exc))}", file=sys.stderr)  # no secret in any line printed
        return UserError.exit_code
    except KeyboardInterrupt:
        print("actprm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        # outputs are staged, so nothing half-written was committed; answers paid are in the judge cache
        print(f"actprm: error: {redact(full)}; free some space and run again (nothing was committed)",
              file=sys.stderr)
        return UserError.exit_code


if __name__ == "__main__":
    sys.exit(main())
