"""Drives neurolite_demo.py through standard input, as a pipe would."""

import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO = REPO / "neurolite_demo.py"
SESSION = """\
Le match de football a fini tard.
/remember Marie est partie vivre à Lyon avec son chien.
/teach health Les urgences de cet hôpital sont saturées.
Où vit Marie maintenant ?
/recall Où vit Marie ?
/rule travel 0.9 lyon
Je pars à Lyon demain.
/norule user_rule_1
/norule no_such_rule
/teach no_such_label Un texte.
/frobnicate

/forget
/recall Marie
/quit
This line comes after /quit and must be ignored.
"""


def run_demo(*args, stdin="", timeout=1800):
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", keras.backend.backend())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    return subprocess.run(
        [sys.executable, str(DEMO), *map(str, args)],
        input=stdin,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def _block(lines, start):
    """The lines of one classification, from its `text:` line on."""
    index = lines.index(start)
    block = [start]
    for line in lines[index + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    data = pathlib.Path(os.environ["NEUROLITE_DATA_DIR"])
    if not (data / "sib200").is_dir():
        pytest.skip(f"data sets not found under {data}")
    saved = tmp_path_factory.mktemp("demo") / "demo.keras"
    completed = run_demo(
        "--size",
        "tiny",
        "--train-sentences",
        32,
        "--train-epochs",
        1,
        "--max-sequence-length",
        32,
        "--save",
        saved,
        stdin=SESSION,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.splitlines(), saved


def test_banner_names_backend_and_modules(session):
    lines, _ = session
    (banner,) = [line for line in lines if line.startswith("NeuroLite demo")]
    assert f"backend: {keras.backend.backend()}" in banner
    assert "modules: memory, experts, rules" in banner
    # Not a terminal: no prompt is printed.
    assert not any(line.startswith("> ") for line in lines)
    assert lines[-1] == "bye"
    assert not any("must be ignored" in line for line in lines)


def test_classification_shows_labels_rules_and_experts(session):
    lines, _ = session
    block = _block(lines, "text: Le match de football a fini tard.")
    ranked = [re.match(r"  (\d)\. (\S+) +([\d.]+)", line) for line in block]
    ranked = [m for m in ranked if m]
    assert [int(m.group(1)) for m in ranked] == [1, 2, 3]
    probabilities = [float(m.group(3)) for m in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.001
    assert any(
        line.startswith("  rule fired: sports_words supports sports")
        for line in block
    )
    (experts,) = [line for line in block if "experts" in line]
    shares = [int(s) for s in re.findall(r"#\d+ (\d+)%", experts)]
    assert len(shares) == 4 and abs(sum(shares) - 100) <= 4
    assert "  recalls: nothing (memory is empty)" in block


def test_memory_writes_are_recalled_then_forgotten(session):
    lines, _ = session
    assert (
        "remembered in slot 0: 'Marie est partie vivre à Lyon avec son "
        "chien.'" in lines
    )
    assert any(
        line.startswith("remembered in slot 1 with label health")
        for line in lines
    )
    block = _block(lines, "query: Où vit Marie ?")
    recalled = [line for line in block if line.startswith("  recalls:")]
    assert len(recalled) == 2
    assert any("Marie est partie vivre" in line for line in recalled)
    weights = [
        float(re.search(r"weight ([\d.]+)", line).group(1)) for line in recalled
    ]
    assert all(0 <= w <= 1 for w in weights) and sum(weights) <= 1.001
    assert "memory emptied" in lines
    after = _block(lines, "query: Marie")
    assert after[1] == "  recalls: nothing (memory is empty)"


def test_rule_edits_take_effect_and_errors_are_reported(session):
    lines, _ = session
    assert "added rule user_rule_1: supports travel (weight 0.9)" in lines
    block = _block(lines, "text: Je pars à Lyon demain.")
    assert any(
        line.startswith("  rule fired: user_rule_1 supports travel")
        for line in block
    )
    assert "removed rule user_rule_1" in lines
    assert any(
        line.startswith("error: ") and "no_such_rule" in line for line in lines
    )
    assert any(
        line.startswith("error: ") and "no_such_label" in line for line in lines
    )
    assert "unknown command '/frobnicate'; /help lists them" in lines


def test_saved_demo_model_loads_with_model_flag(session):
    _, saved = session
    completed = run_demo(
        "--model", saved, stdin="/labels\nUn match de tennis.\n"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert f"loaded from {saved}" in out
    assert "labels: science/technology, travel, politics, sports" in out
    assert "rule fired: sports_words supports sports" in out
    assert out.rstrip().endswith("bye")


def test_missing_model_file_is_a_clear_error():
    completed = run_demo("--model", "no/such/model.keras")
    assert completed.returncode == 2
    assert "no model file at 'no/such/model.keras'" in completed.stderr
