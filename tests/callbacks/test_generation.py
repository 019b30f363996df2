"""The before/after generation preview: scoring, and a run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from lit_lora.callbacks.generation import exact_match, format_report, summarize
from lit_lora.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_exact_match_ignores_only_surrounding_whitespace():
    assert exact_match(' {"a": 1}\n', '{"a": 1}')
    assert not exact_match('{"a":1}', '{"a": 1}')


def test_summarize_scores_before_and_after():
    report = summarize(["x", "b"], ["a", "b "], ["a", "b"])
    assert report["exact_match_before"] == 0.5 and report["exact_match_after"] == 1.0
    assert report["examples"][0] == {"reference": "a", "before": "x", "after": "a"}
    assert "before 50%, after 100%" in format_report(report, num_printed=1)


def test_preview_runs_at_fit_start_and_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks+=lit_lora.callbacks.GenerationPreview",
            "--trainer.callbacks.num_examples",
            "3",
            "--trainer.callbacks.max_new_tokens",
            "4",
        ]
    )
    report = json.loads((tmp_path / "generation_preview.json").read_text())
    val = [json.loads(line) for line in (REPO / "data/quickstart/val.jsonl").read_text().splitlines()[:3]]
    assert [e["reference"] for e in report["examples"]] == [row["messages"][-1]["content"] for row in val]
    assert all(isinstance(e["before"], str) and isinstance(e["after"], str) for e in report["examples"])
    assert 0.0 <= report["exact_match_after"] <= 1.0
