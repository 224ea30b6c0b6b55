"""Prompt templates: how a bare math problem becomes the text the policy continues.

- `qwen_math`: "<problem>\\nPlease reason step by step, and put your final answer within \\boxed{}."
  This is the raw-text template of Qwen2.5-Math's evaluation code (`PROMPT_TEMPLATES["mathstral"]`
  in QwenLM/Qwen2.5-Math evaluation/utils.py: "{input}\\nPlease reason step by step, and put your
  final answer within \\boxed{{}}."), and exactly the suffix that QwenLM/QwQ's eval/data/aime25.jsonl
  carries. The same sentence is the system message of Qwen's "qwen25-math-cot" chat template.
- `chat`: the tokenizer's own chat template applied to one user message holding the `qwen_math`
  text, with the generation prompt (the assistant turn header) appended.
- `plain`: the problem text unchanged.

Answers are graded from the last \\boxed{...}, so every template except `plain` asks for it.
"""
from __future__ import annotations

from typing import Any, Sequence

QWEN_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATES = ("qwen_math", "chat", "plain")


def qwen_math_prompt(problem: str) -> str:
    """'<problem>\\nPlease reason step by step, and put your final answer within \\boxed{}.'"""
    return f"{problem}\n{QWEN_MATH_INSTRUCTION}"


def _chat_prompt(problem: str, tokenizer: Any) -> str:
    if tokenizer is None:
        raise ValueError("template 'chat' needs a tokenizer (pass tokenizer=...); "
                         "use template='qwen_math' or 'plain' for raw text")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no chat template (tokenizer.chat_template is empty); "
                         "use template='qwen_math' (raw text) for base models")
    messages = [{"role": "user", "content": qwen_math_prompt(problem)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"tokenizer.apply_chat_template(tokenize=False) returned {type(text).__name__}, "
                        "expected str")
    return text


def build_prompt(problem: str, template: str, tokenizer: Any = None) -> str:
    """The prompt text for one problem under `template` (one of TEMPLATES).

    tokenizer: a transformers tokenizer; needed only for 'chat'.
    """
    if not isinstance(problem, str):
        raise TypeError(f"problem must be a str, got {type(problem).__name__}")
    if template == "qwen_math":
        return qwen_math_prompt(problem)
    if template == "chat":
        return _chat_prompt(problem, tokenizer)
    if template == "plain":
        return problem
    raise ValueError(f"unknown prompt template {template!r}; valid templates: {', '.join(TEMPLATES)}")


def build_prompts(problems: Sequence[Any], template: str, tokenizer: Any = None) -> list[str]:
    """build_prompt over a batch; items may be strings or records with a `.problem` attribute."""
    return [build_prompt(p if isinstance(p, str) else p.problem, template, tokenizer) for p in problems]
