"""``python -m lit_lora evaluate``: lm-evaluation-harness scores with and without an adapter.

The base model is built as the adapter was trained (:mod:`lit_lora.model.pretrained`:
quantized as then; GGUF and random-weights bases rebuilt from the adapter folder) and handed to lm-eval as a
model object, so the harness scores the model that training validated. With
``--include_base true`` that one loaded model is scored twice, the second time with
the adapter switched off: "with and without the adapter" is one command and one load.

Tasks come from lm-eval's own registry (hub datasets: they need the network or a
cached copy), from lit_lora's offline tasks (:mod:`lit_lora.eval_tasks`, always
included) and from the task folders given with ``--include_path``.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.adapter_dir import check_adapter_dir, trained_template
from lit_lora.artifacts.tokenizer import load_tokenizer
from lit_lora.data.render import has_chat_template, resolve_template
from lit_lora.errors import ConfigError
from lit_lora.eval_tasks import TASKS_DIR
from lit_lora.model.pretrained import resolve_trained_model, shared_option_docs

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

INSTALL_HINT = "pip install 'lit_lora[eval]'"


@shared_option_docs
def evaluate(
    tasks: list[str] | str,
    adapter: str | None = None,
    base: str | None = None,
    gguf_file: str | None = None,
    include_path: list[str] | str | None = None,
    include_base: bool = False,
    quantized: bool = True,
    apply_chat_template: bool | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int | Literal["auto"] = 8,
    output: str | None = None,
) -> dict[str, Any]:
    """Score a base model and its LoRA adapter on lm-evaluation-harness tasks.

    Prints one row per task and metric with the score of each model, and returns
    (and with ``--output`` writes) lm-eval's full results. Needs the ``eval`` extra
    (``pip install 'lit_lora[eval]'``).

    Args:
        tasks: lm-eval task, group or tag names: a list (``'[mmlu, lit_lora]'``) or
            lm-eval's comma-separated form (``mmlu,lit_lora``). lit_lora's own tasks
            run offline: ``lit_lora_json_extraction`` (likelihood of the reference
            answers to the quickstart's held-out prompts), ``lit_lora_json_extraction_gen``
            (greedy answers to them, exact match), or both as ``lit_lora``. Hub-hosted
            tasks such as ``mmlu`` or ``hellaswag`` download their data once, so they
            need the network or a copy in the ``datasets`` cache (then set
            ``HF_DATASETS_OFFLINE=1``).
        adapter: Adapter folder written by ``fit`` (``<default_root_dir>/adapter``) or
            any PEFT LoRA adapter folder. Null scores the base model alone (``--base``
            is then required).
        base: {base}
        gguf_file: {gguf_file}
        include_path: Extra folders of lm-eval task YAML files (searched recursively);
            lit_lora's task folder is always included. Data files named in a task's
            ``dataset_kwargs.data_files`` are read relative to the current directory.
        include_base: Also score the base model without the adapter, in the same run
            and from the same loaded model (the adapter is switched off for that pass).
            Without ``--adapter`` the base is what is scored anyway.
        quantized: {quantized}
        apply_chat_template: Render each prompt as a user turn with the tokenizer's chat
            template (few-shot examples as earlier turns), as chat fine-tunes are
            trained. Null does as the adapter was trained: on unless its
            ``training_config.yaml`` says ``data.template: plain`` or the tokenizer
            has no template. False gives the plain-text prompts that published
            lm-eval scores use.
        num_fewshot: Examples put before each prompt; null keeps each task's default.
        limit: Score only the first ``limit`` documents of each task, or this fraction
            of them when below 1 (quick checks; the scores are then not comparable).
        batch_size: Requests per forward pass, or ``auto`` to find the largest that fits.
        output: JSON file to write the results to: lm-eval's results per model
            (``runs.base``, ``runs.adapter``) and what was evaluated (``setup``).

    Returns:
        ``{"setup": ..., "runs": {"base": ..., "adapter": ...}}``, each run lm-eval's
        results dictionary; ``runs`` holds only the models that were scored.
    """
    names = task_names(tasks)
    check_settings(num_fewshot, limit, batch_size, output)
    adapter_dir = check_adapter_dir(adapter, "--adapter") if adapter is not None else None
    task_manager = build_task_manager(include_path)
    check_task_names(names, task_manager)
    trained = resolve_trained_model([adapter_dir] if adapter_dir is not None else [], base, gguf_file, quantized)
    tokenizer = load_tokenizer(*trained.tokenizer_source())
    chat = resolve_chat_template(apply_chat_template, tokenizer, adapter_dir)
    model = trained.load()

    from lm_eval.models.huggingface import HFLM

    # lm-eval accepts a built model (a PeftModel passes for one: it forwards config,
    # device and generate) and then loads nothing itself.
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    settings = {
        "tasks": names,
        "task_manager": task_manager,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "batch_size": batch_size,
        "apply_chat_template": chat,
        "fewshot_as_multiturn": chat,
    }
    if not isinstance(model, PeftModel):
        runs = {"base": run_harness(lm, settings)}
    else:
        runs = {}
        if include_base:
            with model.disable_adapter():
                runs["base"] = run_harness(lm, settings)
        runs["adapter"] = run_harness(lm, settings)

    setup = {
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "base": trained.spec.model_name_or_path,
        "gguf_file": trained.spec.gguf_file,
        "quantization": asdict(trained.spec.quantization),
        "apply_chat_template": chat,
        "num_fewshot": num_fewshot,
        "limit": limit,
    }
    report = {"setup": setup, "runs": runs}
    print(format_table(runs))
    if output is not None:
        write_report(report, Path(output).expanduser())
    return report


def task_names(tasks: list[str] | str) -> list[str]:
    """The task names in ``tasks``, splitting lm-eval's comma-separated form.

    Args:
        tasks: A list of names, or one string of comma-separated names.

    Raises:
        ConfigError: No name is given.
    """
    entries = tasks.split(",") if isinstance(tasks, str) else tasks
    names = [name.strip() for name in entries if name.strip()]
    if not names:
        raise ConfigError("--tasks: no task given. Name at least one, such as --tasks lit_lora_json_extraction.")
    return names


def check_settings(
    num_fewshot: int | None,
    limit: float | None,
    batch_size: int | str,
    output: str | None,
) -> None:
    """Fail on a value that lm-eval, or writing the results, would only reject after the run.

    Args:
        num_fewshot: Few-shot examples per prompt.
        limit: Documents per task, or a fraction of them.
        batch_size: Requests per forward pass.
        output: The results file.
    """
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"--num_fewshot: {num_fewshot} is negative; use 0 or more, or leave it unset.")
    if limit is not None and not limit > 0:
        raise ConfigError(
            f"--limit: {limit:g} scores no document; use a count, a fraction in (0, 1), or leave it unset."
        )
    if isinstance(batch_size, int) and batch_size < 1:
        raise ConfigError(f"--batch_size: {batch_size} must be at least 1 (or 'auto').")
    if output is not None and Path(output).expanduser().is_dir():
        raise ConfigError(
            f"--output: '{output}' is a folder; name the JSON file to write, such as {Path(output) / 'eval.json'}."
        )


def build_task_manager(include_path: list[str] | str | None) -> TaskManager:
    """lm-eval's task index over its own tasks, lit_lora's and the ``include_path`` folders.

    Args:
        include_path: Extra task folders, as a list or a single folder.

    Raises:
        ConfigError: lm-eval is not installed, or an extra folder does not exist.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ConfigError(
            f"evaluate needs EleutherAI's lm-evaluation-harness, which is not installed ({error}). "
            f"Install lit_lora's eval extra: {INSTALL_HINT}"
        ) from None
    folders = [include_path] if isinstance(include_path, str) else list(include_path or [])
    for folder in folders:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(
                f"--include_path: '{folder}' is not a folder. Point it at a folder of lm-eval task YAML files."
            )
    return TaskManager(
        include_path=[
            str(TASKS_DIR),
            *(str(Path(folder).expanduser()) for folder in folders),
        ]
    )


def check_task_names(names: list[str], task_manager: TaskManager) -> None:
    """Fail before any model loads when a task name is unknown to lm-eval.

    Args:
        names: The requested task, group or tag names.
        task_manager: The index of every known task.

    Raises:
        ConfigError: A name is unknown; the message lists near matches and lit_lora's tasks.
    """
    known = task_manager.all_tasks
    for name in names:
        if name in known:
            continue
        near = difflib.get_close_matches(name, known, n=5)
        shipped = sorted(
            task
            for task, entry in task_manager.task_index.items()
            if entry.yaml_path is not None and Path(entry.yaml_path).parent == TASKS_DIR
        )
        raise ConfigError(
            f"--tasks: unknown task '{name}'. Close matches: {', '.join(near) or 'none'}; lit_lora's offline "
            f"tasks: {', '.join(shipped)}. `lm-eval ls tasks` lists all of lm-eval's; add a folder of your "
            "own task YAML files with --include_path."
        )


def resolve_chat_template(
    apply_chat_template: bool | None,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path | None,
) -> bool:
    """Whether prompts are rendered with the chat template; null: as the adapter trained.

    Args:
        apply_chat_template: The setting as given.
        tokenizer: The tokenizer the adapter was trained with.
        adapter_dir: The adapter folder, whose ``training_config.yaml`` records the
            ``data.template`` it trained with; None when scoring the base alone.

    Raises:
        ConfigError: The template is asked for and the tokenizer has none.
    """
    if apply_chat_template is None:
        template = trained_template(adapter_dir) if adapter_dir is not None else "auto"
        return resolve_template(template, tokenizer) == "chat"
    if apply_chat_template and not has_chat_template(tokenizer):
        raise ConfigError(
            f"--apply_chat_template: tokenizer '{tokenizer.name_or_path}' has no chat template. "
            "Set it to false (or leave it unset) to score plain-text prompts."
        )
    return apply_chat_template


def run_harness(lm: LM, settings: dict[str, Any]) -> dict[str, Any]:
    """One ``lm_eval.simple_evaluate`` pass over the tasks with the model as it is now.

    Args:
        lm: lm-eval's wrapper around the loaded model.
        settings: ``simple_evaluate`` arguments shared by every pass.
    """
    from lm_eval import simple_evaluate

    # Per-document samples would only bloat the output; scores are what is reported.
    return simple_evaluate(model=lm, log_samples=False, **settings)


def format_table(runs: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per task and metric, one score column per run.

    Args:
        runs: lm-eval's results per run name (``base``, ``adapter``).
    """
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for run, results in runs.items():
        for task, metrics in results["results"].items():
            better = results.get("higher_is_better", {}).get(task, {})
            for key, value in metrics.items():
                metric, _, filter_name = key.partition(",")
                if not filter_name or metric.endswith("_stderr"):
                    # Keys without a filter ("alias", "sample_len") describe the task;
                    # standard errors stay in the results file.
                    continue
                label = metric if filter_name == "none" else f"{metric} ({filter_name})"
                arrow = {True: " ↑", False: " ↓"}.get(better.get(metric), "")
                rows.setdefault((task, label + arrow), {})[run] = format_score(value)
    header = ["task", "metric", *runs]
    table = [header] + [[task, label, *(cells.get(run, "-") for run in runs)] for (task, label), cells in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_score(value: Any) -> str:
    """A score with four decimals; anything else (lm-eval's ``N/A``) as it is.

    Args:
        value: One metric value from lm-eval's results.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return str(value)


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the results as JSON, creating the folder.

    Args:
        report: The setup and the runs' results.
        path: The JSON file.
    """
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    # lm-eval's results hold numpy numbers and other objects json cannot write as such.
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=handle_non_serializable))
    print(f"lit_lora: results written to {path}")
