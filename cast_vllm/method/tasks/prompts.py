"""Prompts from task items. Zero-shot = ``instruction + template(query) + answer_prefix``;
k-shot puts k blocks ``template(demo) + answer_prefix + completion(demo)`` before the query,
joined by ``separator``. With ``chat=True`` the same blocks become user/assistant turns
rendered with the tokenizer's chat template. Every prompt ends with the answer prefix, so its
last token is the position that predicts the answer (where CAST reads and steers)."""

from __future__ import annotations

from typing import Any, Sequence

from cast_vllm.method.tasks.formats import guess_format
from cast_vllm.method.tasks.items import TaskFileError, TaskItem
from cast_vllm.method.tasks.spec import TaskSpec, default_task, load_task_spec


def build_prompt(item: TaskItem, demos: Sequence[TaskItem] = (), task: "TaskSpec | str | None" = None,
                 *, chat: bool = False, tokenizer: Any = None) -> str:
    """The prompt for ``item`` with ``demos`` as worked examples (zero-shot when empty).

    ``chat=True`` renders user/assistant turns with ``tokenizer``'s chat template (the result
    already holds the special tokens: tokenize it without adding more).
    """
    spec = load_task_spec(task) if task is not None else default_task(guess_format(item))
    if chat:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TaskFileError("chat=True needs a tokenizer that has a chat template")
        messages = []
        if spec.instruction:
            messages.append({"role": "system", "content": spec.instruction})
        for demo in demos:
            messages.append({"role": "user", "content": (spec.render_query(demo) + spec.answer_prefix).strip()})
            messages.append({"role": "assistant", "content": spec.completion(demo).strip()})
        messages.append({"role": "user", "content": (spec.render_query(item) + spec.answer_prefix).strip()})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_prompt(item, demos, spec)


def build_prompts(items: Sequence[TaskItem], demos: Sequence[Sequence[TaskItem]] | None, task: "TaskSpec | str",
                  *, chat: bool = False, tokenizer: Any = None) -> list[str]:
    """``build_prompt`` for each item, with its own demonstrations (zero-shot when ``demos`` is None)."""
    if demos is None:
        return [build_prompt(it, (), task, chat=chat, tokenizer=tokenizer) for it in items]
    return [build_prompt(it, d, task, chat=chat, tokenizer=tokenizer) for it, d in zip(items, demos)]


def plain_prompt(item: TaskItem, demos: Sequence[TaskItem], spec: "TaskSpec",
                 demo_spec: "TaskSpec | None" = None) -> str:
    """Worked examples rendered in ``demo_spec``'s format (default: ``spec``), then the query in
    ``spec``'s, ending with its answer prefix (cross-task ICL uses two formats)."""
    demo_spec = demo_spec or spec
    blocks = [demo_spec.render_query(d) + demo_spec.answer_prefix + demo_spec.completion(d) for d in demos]
    blocks.append(spec.render_query(item) + spec.answer_prefix)
    prompt = spec.separator.join(blocks)
    if spec.instruction:
        prompt = spec.instruction.rstrip("\n") + "\n" + prompt
    return prompt
