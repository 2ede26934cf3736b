"""What the study's numbers show, in sentences computed from them (whatever they turn out to
be), and what they cannot show."""

from __future__ import annotations

from typing import Any

INSTRUCTION_SETS = ("ifeval_med", "ifeval_general")


def _fmt(change: dict[str, Any] | None) -> str:
    if change is None:
        return "not measured"
    text = f"{change['value']:+.3f}"
    if change.get("stderr") is not None:
        text += f" ± {change['stderr']:.3f}"
    if change.get("significant") is not None:
        text += " (p < 0.05)" if change["significant"] else " (not significant)"
    return text


def _value(row: dict[str, Any], member: str) -> float | None:
    score = row["scores"].get(member)
    return None if score is None else score.get("value")


def _recovery(rows: list[dict[str, Any]], ratio: str, member: str) -> str | None:
    """The best merge of one ratio's CPT model on ``member`` and the share of the CPT loss it
    regains (a clause), or None when no merge of it was scored."""
    by_name = {row["name"]: row for row in rows}
    instruct, cpt = by_name["instruct"], by_name[f"cpt-{ratio.replace(':', '-')}"]
    merges = [r for r in rows if r.get("ratio") == ratio and r["kind"] != "cpt"]
    scored = [r for r in merges if _value(r, member) is not None]
    if not scored or _value(cpt, member) is None:
        return None
    best = max(scored, key=lambda r: _value(r, member))
    lost = _value(instruct, member) - _value(cpt, member)
    gained = _value(best, member) - _value(cpt, member)
    share = (
        f"it regains {100 * gained / lost:.0f}% of the {lost:.3f} CPT lost (point estimates)"
        if lost > 0
        else "CPT lost nothing here, so there is nothing to recover"
    )
    size = instruct.get("sizes", {}).get(member)
    return (
        f"the best merge on `{member}`{f' ({size} prompts)' if size else ''} is "
        f"{best['label']}, {_value(best, member):.3f}, change "
        f"from instruct {_fmt(best['changes'].get(member))}; {share}"
    )


def headline_findings(rows: list[dict[str, Any]], settings: Any, member: str) -> list[str]:
    """The headline bullet: forgetting and recovery on every prompt of ``member``, for the
    grid ratio's CPT model and all its merges (evaluated apart from the main table)."""
    by_name = {row["name"]: row for row in rows}
    instruct = by_name.get("instruct")
    ratio = settings.grid_ratio
    cpt = by_name.get(f"cpt-{ratio.replace(':', '-')}")
    if not instruct or not cpt or _value(instruct, member) is None:
        return []
    size = instruct["sizes"].get(member)
    recovered = _recovery(rows, ratio, member)
    return [
        f"- **Headline: `{member}` on {size} prompts, CPT {ratio} and its merges** "
        "(prompt-level strict accuracy; instruct parent "
        f"{score_text(instruct['scores'][member])}). "
        f"Forgetting after continual pretraining: CPT {ratio} "
        f"{_fmt(cpt['changes'].get(member))}, paired over the same prompts"
        + (
            f"; {recovered}. The best is picked among {len(rows) - 2} merges on these same "
            "prompts, so its score leans optimistic by that choice."
            if recovered
            else "."
        )
    ]


def score_text(score: dict[str, Any] | None, digits: int = 3) -> str:
    """``value ± stderr`` (just the value without a stderr; "–" when not scored)."""
    if score is None or score.get("value") is None:
        return "–"
    value = f"{score['value']:.{digits}f}"
    stderr = score.get("stderr")
    return value if stderr is None else f"{value} ± {stderr:.{digits}f}"


def findings(rows: list[dict[str, Any]], settings: Any) -> list[str]:
    """Bullet lines: forgetting after CPT, what the best merge recovered, the domain signal,
    then the limits of what was measured."""
    by_name = {row["name"]: row for row in rows}
    instruct = by_name["instruct"]
    ratios = list(dict.fromkeys(row["ratio"] for row in rows if row.get("ratio")))
    cpts = {ratio: by_name[f"cpt-{ratio.replace(':', '-')}"] for ratio in ratios}
    lines = []
    for member in INSTRUCTION_SETS:
        base = _value(instruct, member)
        if base is None:
            continue
        parts = [f"CPT {r}: {_fmt(cpts[r]['changes'].get(member))}" for r in ratios]
        size = instruct.get("sizes", {}).get(member)
        lines.append(
            f"- **Forgetting on `{member}`** (prompt-level strict accuracy"
            f"{f' on {size} prompts' if size else ''}; instruct parent "
            f"{base:.3f}). Change after continual pretraining, model − instruct, paired over the "
            f"same prompts: {'; '.join(parts)}."
        )
    headline = "ifeval_med" if _value(instruct, "ifeval_med") is not None else None
    if headline:
        for ratio in ratios:
            recovered = _recovery(rows, ratio, headline)
            if recovered:
                lines.append(f"- **Recovery, CPT {ratio}**: {recovered}.")
    domain = [
        f"{r['label']} {_fmt(r['changes'].get('mm_pubmedqa'))}"
        for r in rows[1:]
        if r["changes"].get("mm_pubmedqa") is not None and r["kind"] == "cpt"
    ]
    if domain:
        base = _value(instruct, "mm_pubmedqa")
        lines.append(
            f"- **PubMedQA accuracy** (instruct {base:.3f}; 3 classes, the test split is 55% "
            f"yes): {'; '.join(domain)}. A 135M model is near the majority-class rate, so "
            "accuracy is a weak signal of domain knowledge here."
        )
    reference = _value(instruct, "pubmedqa_ppl")
    if reference:
        changes = [
            f"{r['label']} {100 * (_value(r, 'pubmedqa_ppl') - reference) / reference:+.1f}%"
            for r in rows[1:]
            if r["kind"] == "cpt" and _value(r, "pubmedqa_ppl") is not None
        ]
        lines.append(
            f"- **Medical perplexity** (held-out PubMedQA test abstracts; instruct "
            f"{reference:.2f}): {'; '.join(changes)}. The sharper domain signal; lm-eval gives "
            "no stderr for it."
        )
    general = _value(instruct, "general_ppl")
    if general:
        changes = [
            f"{r['label']} {100 * (_value(r, 'general_ppl') - general) / general:+.1f}%"
            for r in rows[1:]
            if r["kind"] == "cpt" and _value(r, "general_ppl") is not None
        ]
        lines.append(
            f"- **General perplexity** (held-out *Devil's Dictionary*; instruct {general:.2f}): "
            f"{'; '.join(changes)}."
        )
    size = "every document" if settings.limit is None else f"{settings.limit:g} documents per task"
    pubmedqa = instruct.get("sizes", {}).get("mm_pubmedqa")
    if pubmedqa and settings.pubmedqa_limit != settings.limit:
        size += f", PubMedQA {pubmedqa}"
    lines += [
        "- **What they do not show.** One training seed per ratio: the stderrs are over "
        f"documents ({size}), not over training runs, so a difference between two merges of "
        "the same size as their stderrs is not a finding. The instruct parent is the Q4_1 GGUF "
        "dequantized, not the original bfloat16 weights. IFEval-style scores use mergemed's "
        "offline Punkt sentence splitter (close to, not equal to, official IFEval numbers). "
        "TIES here is the CPT task vector (CPT − instruct) with its top 50% magnitudes kept, "
        "added to the instruct parent at lambda 1: with one task vector on the instruct parent, "
        "plain task arithmetic would equal a linear interpolation, which the SLERP rows cover.",
    ]
    return lines
