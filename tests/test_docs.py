"""The docs agree with the repository: no pointers outside it, and the default model's training stages are
counted the same way in scripts/train_default.sh, the model card and the model.json card (`info --model`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = {
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
}


def test_docs_point_only_inside_the_repository() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"`([^`\s]+\.(?:md|py|sh))`|\]\(([^)\s]+)\)", text):
            path = next(t for t in target if t)
            if path.startswith(("http://", "https://", "#")):
                continue
            assert not path.startswith(("../", "/")), f"{doc.name} points outside the repository: {path}"
        assert "kept outside the repo" not in text, doc.name


def test_training_stages_agree_between_script_model_card_and_model_json() -> None:
    script = (ROOT / "scripts" / "train_default.sh").read_text()
    stages = [int(n) for n in re.findall(r"^# Stage (\d+):", script, flags=re.M)]
    assert stages == list(range(1, len(stages) + 1)), stages
    (said,) = re.findall(r"\((\w+) stages\)", script.splitlines()[1])
    assert WORDS[said] == len(stages)

    card = (ROOT / "docs" / "model_card_default.md").read_text()
    training = card[card.index("## Training") : card.index("**What was compared")]
    numbered = [int(n) for n in re.findall(r"^(\d+)\. `latentworks", training, flags=re.M)]
    assert numbered == stages, f"the model card lists stages {numbered}; the script has {stages}"
    assert f"{said} training stages" in training

    meta = json.loads((ROOT / "src" / "latentworks" / "assets" / "default" / "model.json").read_text())
    assert meta["card"]["training"].startswith(f"{said} stages"), meta["card"]["training"][:60]
