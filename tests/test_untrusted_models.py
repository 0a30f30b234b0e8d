"""A model directory is untrusted input: no code from it runs, broken files are one line and exit 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, good_row

from actprm.cli import main
from actprm.model import default_prm_path

EVIL_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "evilmodel"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


def plant(directory, marker, *, model_type="evilmodel", tokenizer_auto_map=False):
    """A copy of the shipped PRM whose config asks transformers to import evil.py (which writes `marker`)."""
    shutil.copytree(default_prm_path(), directory)
    cfg = json.loads((directory / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    if tokenizer_auto_map:  # the tokenizer's config asks instead; the model's config is clean
        del cfg["auto_map"]
        tok = json.loads((directory / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (directory / "tokenizer_config.json").write_text(json.dumps(tok))
    (directory / "config.json").write_text(json.dumps(cfg))
    (directory / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    return directory


def cli(args, cwd):
    """The CLI in a fresh process answering `y` to any prompt (what a user in a terminal might type)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "actprm.cli", *args], check=False, input="y\ny\n", capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(good_row(i)) + "\n" for i in range(3)))
    return path


@pytest.mark.parametrize("verb", ["score", "evaluate", "init-model", "implicit"])
def test_no_code_from_a_model_directory_runs(tmp_path, corpus, verb):
    marker = tmp_path / "MARKER"
    model = plant(tmp_path / "evil", marker)
    out = tmp_path / "out"
    args = {
        "score": ["score", "--input", str(corpus), "--model", str(model), "--output", str(out)],
        "evaluate": ["evaluate", "--data", str(corpus), "--model", str(model), "--output", str(out)],
        "init-model": ["init-model", "--backbone", str(model), "--output", str(out)],
        "implicit": ["score", "--scorer", "implicit", "--input", str(corpus), "--model", str(model),
                     "--output", str(out)],
    }[verb]
    proc = cli(args, tmp_path)
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "auto_map" in lines[0] and "never runs code" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "[y/N]" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("how", ["known-type-with-auto-map", "tokenizer-auto-map"])
def test_auto_map_is_refused_whatever_the_model_type(tmp_path, corpus, capsys, how):
    marker = tmp_path / "MARKER"
    model = plant(tmp_path / "evil", marker, model_type="qwen2", tokenizer_auto_map=how == "tokenizer-auto-map")
    assert main(["score", "--input", str(corpus), "--model", str(model), "--output", str(tmp_path / "o")]) == 2
    assert "auto_map" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_unknown_model_type_without_auto_map_is_refused(tmp_path, corpus, capsys):
    model = plant(tmp_path / "evil", tmp_path / "MARKER")
    cfg = json.loads((model / "config.json").read_text())
    del cfg["auto_map"]
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["init-model", "--backbone", str(model), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'evilmodel' is not an architecture" in err and len(err.strip().splitlines()) == 1


def test_transformers_itself_refuses_with_trust_remote_code_false(tmp_path):
    """The second line of defence: the flag every call passes makes transformers raise, not ask."""
    from transformers import AutoModel

    marker = tmp_path / "MARKER"
    model = plant(tmp_path / "evil", marker)
    with pytest.raises(ValueError, match="custom code"):
        AutoModel.from_pretrained(model, trust_remote_code=False)
    assert not marker.exists()


def test_every_from_pretrained_in_the_project_refuses_remote_code():
    """Source check: each `from_pretrained(` call of actprm/ and pipelines/ passes trust_remote_code=False."""
    import re

    missing = []
    for root in ("actprm", "pipelines"):
        for path in (REPO / root).rglob("*.py"):
            text = path.read_text()
            for m in re.finditer(r"\b(Auto\w+)\.from_pretrained\(", text):
                call = text[m.end():text.index("\n\n", m.end()) if "\n\n" in text[m.end():] else None]
                depth, end = 1, 0
                for end, ch in enumerate(call):
                    depth += {"(": 1, ")": -1}.get(ch, 0)
                    if depth == 0:
                        break
                if "trust_remote_code=False" not in call[:end]:
                    missing.append(f"{path.relative_to(REPO)}: {m.group(0)}{call[:end]})")
    assert not missing, missing


# ------------------------------------------------------------------------- broken model files


def _score(tmp_path, corpus, model):
    return main(["score", "--input", str(corpus), "--model", str(model), "--output", str(tmp_path / "o")])


def test_weights_that_are_not_safetensors_are_one_line(tmp_path, corpus, capsys):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n" * 10)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(text)
    assert _score(tmp_path, corpus, model) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors: not a safetensors file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_huge_sizes_in_prm_config_are_refused_before_allocating(tmp_path, corpus, capsys):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    cfg = json.loads((model / "prm_config.json").read_text())
    for value, expect in ((1e9, "n_heads must be an integer in 1..4096"),
                          (16, "do not match heads.safetensors"), ("8", "n_heads must be an integer")):
        cfg["n_heads"] = value
        (model / "prm_config.json").write_text(json.dumps(cfg))
        assert _score(tmp_path, corpus, model) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and len(err.splitlines()) == 1, err


def test_backbone_config_far_larger_than_its_weights_is_refused(tmp_path, corpus, capsys):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 1_000_000, 4_000_000
    (model / "config.json").write_text(json.dumps(cfg))
    assert _score(tmp_path, corpus, model) == 2
    assert "does not match the weights" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "[" * 100_000])
def test_prm_config_that_is_not_an_object_is_one_line(tmp_path, corpus, capsys, content):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    (model / "prm_config.json").write_text(content)
    assert _score(tmp_path, corpus, model) == 2
    err = capsys.readouterr().err.strip()
    assert "prm_config.json" in err and len(err.splitlines()) == 1, err


def test_the_shipped_models_pass_the_checks():
    from actprm.io.model_files import check_model_dir
    from actprm.model import default_backbone_path

    check_model_dir(default_prm_path())
    check_model_dir(default_backbone_path())


def test_dangling_weights_link_is_one_line(tmp_path, corpus, capsys):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    assert _score(tmp_path, corpus, model) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors" in err and len(err.splitlines()) == 1, err


def _rewrite_header(path, change):
    """Rewrite a safetensors file's header with `change(header)` (the tensor data untouched)."""
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _first_tensor(header):
    return header[next(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize("change, expect", [
    (lambda h: _first_tensor(h).update(shape=[2**62, 2**62]), "does not fit its"),
    (lambda h: _first_tensor(h).update(dtype="Q9"), "unknown dtype 'Q9'"),
], ids=["shape overflow", "unknown dtype"])
@pytest.mark.parametrize("verb", ["score", "init-model"])
def test_a_safetensors_header_that_lies_is_one_line(tmp_path, corpus, capsys, change, expect, verb):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    _rewrite_header(model / "model.safetensors", change)
    if verb == "score":
        code = _score(tmp_path, corpus, model)
    else:
        code = main(["init-model", "--backbone", str(model), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expect in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_chat_template_the_sandbox_blocks_is_one_line(tmp_path, corpus, capsys):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    (model / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert _score(tmp_path, corpus, model) == 2
    err = capsys.readouterr().err.strip()
    assert "chat template cannot be rendered (SecurityError" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("verb", ["score", "init-model"])
def test_a_tokenizer_json_nested_200k_deep_is_one_line(tmp_path, corpus, capsys, verb):
    model = tmp_path / "m"
    shutil.copytree(default_prm_path(), model)
    (model / "tokenizer.json").write_text("[" * 200_000 + "]" * 200_000)
    if verb == "score":
        code = _score(tmp_path, corpus, model)
    else:
        code = main(["init-model", "--backbone", str(model), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nest too deep" in err and len(err.splitlines()) == 1, err
