"""`actprm import`: another project's PRM checkpoint as an actprm PRM directory (actprm.importers).

    actprm import --from activeprm|qwen-prm|token-classification|math-shepherd SRC --output DIR

Reads SRC's config.json, safetensors weights and tokenizer (no remote code is run), maps the
backbone onto transformers' own class and the heads onto actprm's, stores the source's prompt
format, checks the mapped heads against the source head's formula on a probe text, and writes
DIR whole (a failure leaves no partial directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actprm.config import ImportConfig
from actprm.errors import UserError
from actprm.importers import ImportSummary, convert
from actprm.io.writers import check_output_dir, replaced_dir
from actprm.progress import JobResult


@dataclass
class ImportResult(JobResult):
    summary: ImportSummary
    output: Path

    def render(self) -> str:
        if not self.summary.extra.get("auto_map_left_out"):
            return self.summary_line()
        return (f"import: {self.summary.extra['source']}'s tokenizer_config.json asks for its own code (auto_map): "
                f"left out of {self.output}'s copy (actprm never runs code from a model directory)\n"
                + self.summary_line())

    def summary_line(self) -> str:
        s = self.summary
        kind = {0: "linear", 1: "1-hidden-layer", 2: "MLP"}.get(s.head_layers, f"{s.head_layers}-layer")
        parts = [(f"import: {s.layout} -> {self.output}: {s.backbone_model_type} backbone, K={s.n_heads} "
                  f"{kind} heads at {s.separator!r}")]
        if s.perturbed_heads:
            parts.append(f"{s.perturbed_heads} perturbed")
        if s.anchor:
            parts.append("anchor from reg_model")
        if s.max_abs_diff is not None:
            parts.append(f"probe max |dp| {s.max_abs_diff:.1e}")
        return ", ".join(parts)


def run(cfg: ImportConfig, progress: bool = True) -> ImportResult:
    if not cfg.source:
        raise UserError("no source: give the checkpoint directory to import (SRC)")
    out = check_output_dir(cfg.output, cfg.overwrite)
    if out.resolve() == Path(cfg.source).resolve():
        raise UserError(f"{out}: --output must not be the source directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_dir(out) as staging:
        summary = convert(cfg.source, staging, cfg.layout, n_heads=cfg.n_heads, perturb=cfg.perturb, seed=cfg.seed,
                          separator=cfg.separator, prompt=cfg.prompt(), good_token=cfg.good_token,
                          bad_token=cfg.bad_token, max_length=cfg.max_length)
    summary.output = out
    summary.extra["source"] = cfg.source
    return ImportResult(summary, out)
