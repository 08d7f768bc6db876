"""The GPU check's printed table: one row per phase (and per data-loader configuration), plus the goal line."""

from __future__ import annotations

from typing import Any

from ray_jobs.measure.gpu.measure import FLOP_NOTE

COLUMNS = ("arch", "phase", "batch", "img/s", "step ms", "peak GiB", "TFLOP/s", "MFU", "finite", "note")
MFU_GOAL = 0.40


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def phase_row(arch: str, name: str, rec: dict[str, Any]) -> dict[str, str]:
    """A table row; phases that did not run show their status and reason in the note."""
    if rec.get("status") != "ok":
        why = rec.get("reason") or rec.get("error") or ""
        return dict(zip(COLUMNS, (arch, name, "-", "-", "-", "-", "-", "-", "-", f"{rec.get('status')}: {why}"[:90])))
    settings = rec.get("settings", {})
    note = [settings.get("precision", "")]
    if settings.get("grad_sample_mode"):
        note.append(settings["grad_sample_mode"])
    if rec.get("compile_first_step_s") is not None:
        note.append(f"compile+1st step {rec['compile_first_step_s']:.0f} s, {sum(rec.get('graph_breaks', {}).values())} graph breaks")
    note += rec.get("notes", [])
    return dict(zip(COLUMNS, (
        arch, name, str(rec["batch"]), _num(rec["images_per_s"], ".1f"), _num(rec["step_s"] * 1e3, ".1f"),
        _num(rec.get("peak_mem_gib"), ".2f"), _num(rec.get("tflops"), ".2f"), rec.get("mfu_text", "-"),
        "yes" if rec.get("finite") else "NO", "; ".join(n for n in note if n)[:90])))


def loader_rows(rec: dict[str, Any]) -> list[dict[str, str]]:
    if rec.get("status") != "ok":
        return [phase_row("data", "loader", rec)]
    rows = []
    for cfg in rec["configs"].values():
        name = f"loader {cfg['workers']}w" + (" pinned" if cfg["pin_memory"] else "")
        rows.append(dict(zip(COLUMNS, ("data", name, str(rec["batch"]), f"{cfg['images_per_s']:.1f}", "-", "-", "-", "-",
                                       "-", f"PNG decode+resize {rec['source_size'][0]}x{rec['source_size'][1]}"
                                       f"->{rec['image_size'][0]}x{rec['image_size'][1]}"))))
    return rows


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for arch, entry in result["archs"].items():
        rows += [phase_row(arch, name, rec) for name, rec in entry["phases"].items()]
    rows += [phase_row("attack", name, rec) for name, rec in result["attack"].items()]
    if result.get("loader"):
        rows += loader_rows(result["loader"])
    return rows


def goal(result: dict[str, Any]) -> dict[str, Any]:
    """Best MFU of the non-private training phases of the largest architecture vs the 40% goal."""
    arch = result.get("largest_arch")
    phases = result["archs"].get(arch, {}).get("phases", {}) if arch else {}
    train = {n: r for n, r in phases.items() if n.startswith("train") and r.get("status") == "ok"}
    if not train:
        return {"arch": arch, "phase": None, "mfu": None, "target": MFU_GOAL, "met": None}
    name, best = max(train.items(), key=lambda kv: kv[1]["images_per_s"])
    mfu = best.get("mfu")
    return {"arch": arch, "phase": name, "mfu": mfu, "mfu_text": best.get("mfu_text"), "images_per_s": best["images_per_s"],
            "target": MFU_GOAL, "met": None if mfu is None else mfu >= MFU_GOAL}


def format_table(rows: list[dict[str, str]]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS), "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    """Header, table and footer as printed at the end of a run."""
    d, p = result["device"], result["profile"]
    head = (f"segleak gpu-check on {d['name']} ({d['kind']}), torch {result['versions'].get('torch')}, "
            f"{'QUICK (tiny archs, CPU)' if result['quick'] else 'paper profile'}: images {p['image_size'][0]}x"
            f"{p['image_size'][1]}, batch {p['batch']}, release 1/{p['output_stride']} batch {p['release_batch']}, "
            f"attack crop {p['attack_crop']} batch {p['attack_batch']}")
    g = result["goal"]
    if g["met"] is None:
        verdict = "n/a" if g.get("mfu_text") in (None, "n/a (cpu)", "unknown") else "n/a"
        goal_line = f"goal: >= {g['target']:.0%} of bf16 peak, non-private training of {g['arch']}: {g.get('mfu_text') or '-'} ({verdict})"
    else:
        goal_line = (f"goal: >= {g['target']:.0%} of bf16 peak, non-private training of {g['arch']}: best {g['phase']} "
                     f"{g['mfu']:.1%} ({'ok' if g['met'] else 'MISS'})")
    foot = [f"{FLOP_NOTE}; MFU against {d['peak_note']}.", goal_line,
            f"elapsed {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget"
            + (f"; skipped for time: {', '.join(result['skipped_for_time'])}" if result["skipped_for_time"] else "")]
    return "\n".join([head, format_table(result["table"]), *foot])
