"""Results of the hdrq_merge benchmark (one configuration, one family and seed) and the tables made from them.

Split from :mod:`benchmarks.hdrq_merge` (which runs the jobs) so each module stays short; see that module's doc.
Private to that benchmark (the ``_`` prefix): no other benchmark imports it, so it is not in ``benchmarks._common``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from benchmarks._common import fmt
from raysel.methods.hdrq import DEFAULT_BITS, HdrqConfig
from raysel.selection import evaluate_selector

PAPER_LAMBDA = 5e-2
# (row label, ptq_method, lambda_distance): QDrop+noise is HDRQ without the distance term (Table 3's middle row).
PTQ_ROWS = (("BRECQ", "brecq", PAPER_LAMBDA), ("QDrop", "qdrop", PAPER_LAMBDA), ("QDrop+noise", "hdrq", 0.0),
            ("HDRQ", "hdrq", PAPER_LAMBDA))
ROW_LABELS = ("FP", *(label for label, _, _ in PTQ_ROWS))
PAPER_MERGE_DRAWS = 30  # the paper's results are means over 30 merges (noise-sampling draws)
REGIME_GAP = 0.03  # "quantization clearly damages merging": QDrop's merged H at least 3 points below FP's
DASH = "—"  # a cell with no value (not measured yet, or not defined for the row)


@dataclass
class ConfigResult:
    """One configuration's specialists and merge, scored on held-out labels (fractions)."""

    label: str  # FP, BRECQ, QDrop, HDRQ, "+ noise", ...
    bits: str
    rounding: str  # noise | float | fp
    specialists: dict[str, float]  # each specialist on its own target
    merged: dict[str, float]  # the merged model on every target
    harmonic: float  # mean over merge draws, as merged and merge_quality
    merge_quality: float
    error_barrier: float
    ptq_method: str
    draws: int = 1  # merge draws averaged (1 when draws cannot differ: no rounding ties)
    ptq_iterations: int = 0
    ptq_loop_seconds: float = 0.0
    seconds: float = 0.0
    # Per target: how far reconstruction moved its specialist (raysel.quant.movement); {} for FP and for units
    # saved before it was recorded, None for a specialist whose PTQ stage was cached before it was recorded.
    movement: dict[str, dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class JobResult:
    """Everything one (family, seed) job measured."""

    family: str
    seed: int
    targets: tuple[str, ...]
    configs: list[ConfigResult] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def find(self, label: str, bits: str, rounding: str = "noise") -> ConfigResult | None:
        return next((c for c in self.configs if (c.label, c.bits, c.rounding) == (label, bits, rounding)), None)

    def find_specialists(self, label: str, bits: str) -> ConfigResult | None:
        """The configuration at any rounding: every rounding of a unit merges the same specialists."""
        return next((c for c in self.configs if (c.label, c.bits) == (label, bits)), None)


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------


def points(values: Sequence[float]) -> str:
    return " / ".join("-" if not np.isfinite(v) else f"{100 * v:.2f}" for v in values)


def mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def family_tables(runs: list[JobResult], seeds: Sequence[int], bits: Sequence[str]) -> list[str]:
    """Tables 1-2 (specialists and merged H), Table 3 (ablation, rounding) for one family, means over seeds."""
    targets = runs[0].targets
    metric = "mIoU" if runs[0].family == "street_scenes" else "accuracy"
    draws = max((c.draws for run in runs for c in run.configs), default=1)
    lines = [f"### {runs[0].family}: {len(targets)} targets ({', '.join(targets)}), held-out {metric} in points",
             "", "Specialist = each target's own (quantized) model on its target (Table 1a / Table 2 parentheses); "
             "merged = the one merged model on every target, H = their harmonic mean (Table 1b / Table 2), each "
             f"the mean over up to {draws} noise-sampling merge draws (one where draws cannot differ: no rounding "
             f"ties). Means over seeds {', '.join(map(str, seeds))}; H per seed in brackets.", "",
             f"| method | bits | specialists: {' / '.join(targets)} | merged: {' / '.join(targets)} | merged H "
             "[per seed] | merge quality | error barrier |",
             "|---|---|---|---|---|---:|---:|"]
    rows = [("FP", "FP")] + [(label, b) for b in bits for label, _, _ in PTQ_ROWS]
    for label, b in rows:
        entries = [e for e in (run.find(label, b, "fp" if b == "FP" else "noise") for run in runs) if e]
        if not entries:
            continue
        specialists = [mean([e.specialists[t] for e in entries]) for t in targets]
        merged = [mean([e.merged[t] for e in entries]) for t in targets]
        harmonic = mean([e.harmonic for e in entries])
        lines.append(f"| {label} | {b if b != 'FP' else '32/32'} | {points(specialists)} | {points(merged)} | "
                     f"**{100 * harmonic:.2f}** [{points([e.harmonic for e in entries])}] | "
                     f"{mean([e.merge_quality for e in entries]):.3f} | {mean([e.error_barrier for e in entries]):.3f} |")
    lines += ["", "Ablation (Table 3: QDrop, then + noise-based quantization, then + distance regularization), "
              "merged H in points:", "", "| bits | variant | merged H (mean) | per seed | Δ vs row above |",
              "|---|---|---:|---|---:|"]
    for b in bits:
        previous = None
        for label, name in (("QDrop", "baseline: QDrop"), ("QDrop+noise", "+ noise-based quantization"),
                            ("HDRQ", f"+ distance regularization (lambda {PAPER_LAMBDA:g}) = HDRQ")):
            values = [e.harmonic for e in (run.find(label, b) for run in runs) if e]
            if not values:
                continue
            value = mean(values)
            delta = "" if previous is None else f"{100 * (value - previous):+.2f}"
            lines.append(f"| {b} | {name} | {100 * value:.2f} | {points(values)} | {delta} |")
            previous = value
    return lines + rounding_table(runs, bits)


def rounding_table(runs: list[JobResult], bits: Sequence[str]) -> list[str]:
    """Noise-sampling vs float rounding of the same specialists (only an even target count has ties)."""
    rows = []
    for label, _, _ in PTQ_ROWS:
        for b in bits:
            noise = [e.harmonic for e in (run.find(label, b, "noise") for run in runs) if e]
            flat = [e.harmonic for e in (run.find(label, b, "float") for run in runs) if e]
            if noise and flat:
                rows.append(f"| {label} | {b} | {100 * mean(noise):.2f} | {100 * mean(flat):.2f} | "
                            f"{100 * (mean(noise) - mean(flat)):+.2f} |")
    if not rows:
        return []
    return ["", "Merge rounding of the same quantized specialists (§4.3): noise sampling with cosine rejection "
            "(eq. 12) vs plain float rounding (eq. 11), merged H in points (mean over seeds):", "",
            "| PTQ | bits | noise sampling | float rounding | Δ |", "|---|---|---:|---:|---:|", *rows]


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval (over seeds) of paired differences; the interval is NaN for fewer than 2."""
    values = np.asarray(values, dtype=float)
    centre = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return centre, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return centre, centre - half, centre + half


def paired_table(runs: list[JobResult], bits: Sequence[str], partial: bool = False) -> list[str]:
    """Per bit-width: FP - QDrop merged H (is quantization damaging the merge?) and the per-seed paired
    difference HDRQ - QDrop with its 95 % t-interval over seeds (points). ``partial`` (units still pending): an
    interval over fewer than 2 seeds reads "pending", missing cells "pending" too."""
    lines = [f"| family | bits | FP H | QDrop H | FP − QDrop (regime: ≥ {100 * REGIME_GAP:.0f}) | HDRQ − QDrop per "
             "seed | mean | 95 % t-interval |", "|---|---|---:|---:|---:|---|---:|---|"]
    for b in bits:
        fp, qdrop, differences = [], [], []
        for run in runs:
            fp_entry, qdrop_entry, hdrq_entry = run.find("FP", "FP", "fp"), run.find("QDrop", b), run.find("HDRQ", b)
            fp += [fp_entry.harmonic] if fp_entry else []
            qdrop += [qdrop_entry.harmonic] if qdrop_entry else []
            if qdrop_entry and hdrq_entry:
                differences.append(hdrq_entry.harmonic - qdrop_entry.harmonic)
        if not qdrop:
            continue
        centre, low, high = t_interval(differences)
        gap = mean(fp) - mean(qdrop)
        missing = "pending" if partial else "-"
        interval = (f"[{100 * low:+.2f}, {100 * high:+.2f}]" if np.isfinite(low)
                    else "pending (needs ≥ 2 seeds)" if partial else "-")
        gap_cell = f"{100 * gap:+.2f}{' (yes)' if gap >= REGIME_GAP else ''}" if np.isfinite(gap) else missing
        fp_cell = f"{100 * mean(fp):.2f}" if fp else missing
        lines.append(f"| {runs[0].family} | {b} | {fp_cell} | {100 * mean(qdrop):.2f} | {gap_cell} | "
                     f"{' / '.join(f'{100 * d:+.2f}' for d in differences) or missing} | "
                     f"{f'{100 * centre:+.2f}' if np.isfinite(centre) else missing} | {interval} |")
    return lines


def default_candidate(pool: Sequence[ConfigResult]) -> ConfigResult | None:
    """The hdrq method's default configuration among one seed's quantized merges: :class:`HdrqConfig`'s PTQ method,
    λ and merge rounding (HDRQ, λ 5e-2, noise sampling) at ``DEFAULT_BITS``, or at the run's one bit-width when it
    did not measure ``DEFAULT_BITS`` (a sweep over the other hyperparameters at that width); None without one."""
    defaults = HdrqConfig()
    label = next((name for name, method, lam in PTQ_ROWS
                  if method == defaults.ptq_method and lam == defaults.lambda_distance), None)
    rounding = "noise" if defaults.noise_sampling else "float"
    matches = [c for c in pool if c.label == label and c.rounding == rounding]
    at_default_bits = [c for c in matches if c.bits == DEFAULT_BITS]
    if at_default_bits:
        return at_default_bits[0]
    return matches[0] if len({c.bits for c in matches}) == 1 else None


def selector_table(results: list[JobResult]) -> list[str]:
    """Regret of the label-free merge_quality pick over every quantized merge of a family and seed, beside the
    method's default configuration (:func:`default_candidate`) and a random pick; a mean row over seeds."""
    lines = ["| family | seed | candidates | merge_quality picks | its H | best H (config) | regret (points) | "
             "default configuration: regret | random pick: expected regret | Kendall τ |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    columns: list[tuple[float, float, float, float]] = []
    for run in results:
        pool = [c for c in run.configs if c.rounding != "fp"]
        if len(pool) < 2:
            continue
        scores = np.array([c.merge_quality for c in pool])
        truth = np.array([c.harmonic for c in pool])
        evaluation = evaluate_selector(scores, truth)
        picked, best = pool[evaluation["selected_index"]], pool[int(np.argmax(truth))]
        default = default_candidate(pool)
        default_regret = 100 * (truth.max() - default.harmonic) if default is not None else float("nan")
        random_regret = 100 * float(np.mean(truth.max() - truth))
        columns.append((evaluation["regret"], default_regret, random_regret, evaluation["kendall_tau"]))
        lines.append(f"| {run.family} | {run.seed} | {len(pool)} | {describe(picked)} | {100 * picked.harmonic:.2f} | "
                     f"{100 * best.harmonic:.2f} ({describe(best)}) | {evaluation['regret']:.2f} | "
                     f"{fmt(default_regret)} | {random_regret:.2f} | {evaluation['kendall_tau']:.2f} |")
    if len(columns) > 1:
        means = [float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
                 for column in np.array(columns, dtype=float).T]
        lines.append(f"| mean | | | | | | {fmt(means[0])} | {fmt(means[1])} | {fmt(means[2])} | "
                     f"{fmt(means[3])} |")
    return lines


def describe(entry: ConfigResult) -> str:
    return f"{entry.label} {entry.bits}{'' if entry.rounding == 'noise' else ' float-rounded'}"


def speed_table(results: list[JobResult]) -> list[str]:
    """Reconstruction iterations per second per PTQ method and family, and the cost per iteration vs QDrop."""
    lines = ["| family | PTQ method | specialists | iterations | loop s | iterations / s | s per iteration vs QDrop |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for family in dict.fromkeys(r.family for r in results):
        totals: dict[str, list[float]] = {}
        for run in (r for r in results if r.family == family):
            seen = set()
            for entry in run.configs:
                key = (entry.label, entry.bits)
                if entry.label not in ROW_LABELS[1:] or key in seen:
                    continue  # a configuration's specialists are built once per rounding set
                seen.add(key)
                total = totals.setdefault(entry.ptq_method, [0, 0.0, 0.0])
                total[0] += len(entry.specialists)
                total[1] += entry.ptq_iterations
                total[2] += entry.ptq_loop_seconds
        qdrop = totals.get("qdrop")
        qdrop_cost = qdrop[2] / qdrop[1] if qdrop and qdrop[1] else float("nan")
        for method, (count, iterations, seconds) in totals.items():
            rate = iterations / seconds if seconds else float("nan")
            relative = (seconds / iterations) / qdrop_cost if iterations else float("nan")
            # No QDrop unit finished yet (or no loop time): "—", not "nanx".
            lines.append(f"| {family} | {method} | {count} | {iterations:.0f} | {seconds:.1f} | "
                         f"{f'{rate:.1f}' if np.isfinite(rate) else DASH} | "
                         f"{f'{relative:.2f}x' if np.isfinite(relative) else DASH} |")
    return lines


# (column header, raysel.quant.movement measure) of the weight-movement table, in column order.
MOVEMENT_COLUMNS = (("codes changed %", "codes_changed"), ("weight steps moved %", "weight_step_movement"),
                    ("activation steps moved %", "activation_step_movement"),
                    ("float weights moved %", "weight_movement"),
                    ("dequantized weights moved %", "dequantized_weight_movement"))


def specialist_movements(entry: ConfigResult) -> list[dict[str, Any]] | None:
    """The movement of every specialist of a configuration; None when any lacks it (measured before it was
    recorded): a mean over some specialists would compare unlike things."""
    movements = [entry.movement.get(target) for target in entry.specialists]
    return None if not movements or any(m is None for m in movements) else movements


def movement_mean(movements: list[dict[str, Any]] | None, measure: str) -> float | None:
    """The layer mean of ``measure`` averaged over specialists; None when not recorded or not learned (the float
    weights of AdaRound methods)."""
    values = [m.get(measure) for m in movements or []]
    return None if not values or any(v is None for v in values) else mean(values)


def movement_cell(movements: list[dict[str, Any]] | None, measure: str) -> str:
    """``mean (max)`` in %: :func:`movement_mean`, the largest single layer of any specialist in brackets; "—"
    where there is no mean."""
    average = movement_mean(movements, measure)
    if average is None or not movements:
        return DASH
    largest = max(m.get(f"{measure}_max", float("nan")) for m in movements)
    return f"{100 * average:.2f} ({100 * largest:.1f})"


def movement_table(results: list[JobResult], bits: Sequence[str]) -> list[str]:
    """Per family, bit-width, seed and PTQ row: how far reconstruction moved the specialists from their
    calibrated round-to-nearest start (codes changed, step and weight movement), so a merged-H tie or loss of
    HDRQ against QDrop can be told apart: regularisers that did not act vs a different solution that did not help."""
    lines = ["| family | bits | seed | PTQ | specialists | "
             + " | ".join(header for header, _ in MOVEMENT_COLUMNS) + " |",
             "|---|---|---:|---|---:|" + "---:|" * len(MOVEMENT_COLUMNS)]
    for b in bits:
        for run in results:
            for label, _, _ in PTQ_ROWS:
                entry = run.find_specialists(label, b)
                if entry is None:
                    continue
                movements = specialist_movements(entry)
                lines.append(f"| {run.family} | {b} | {run.seed} | {label} | {len(entry.specialists)} | "
                             + " | ".join(movement_cell(movements, measure) for _, measure in MOVEMENT_COLUMNS) + " |")
    return lines if len(lines) > 2 else []


def movement_summary(results: list[JobResult], bits: Sequence[str]) -> str:
    """One sentence comparing QDrop, QDrop+noise and HDRQ: codes changed and dequantized weights moved (means over
    seeds and specialists) per family and bit-width, or that no movement is recorded yet."""
    parts = []
    for family in dict.fromkeys(r.family for r in results):
        for b in bits:
            cells = []
            for label in ("QDrop", "QDrop+noise", "HDRQ"):
                entries = [run.find_specialists(label, b) for run in results if run.family == family]
                movements = [m for entry in entries if entry is not None for m in specialist_movements(entry) or []]
                codes, moved = (movement_mean(movements, measure)
                                for measure in ("codes_changed", "dequantized_weight_movement"))
                if codes is not None and moved is not None:
                    cells.append(f"{label} {100 * codes:.2f} / {100 * moved:.2f}")
            if cells:
                parts.append(f"{family} {b}: {', '.join(cells)}")
    if not parts:
        return "No unit has its weight movement recorded yet (units finished before it was measured show —)."
    return ("Codes changed % / dequantized weights moved % (means over seeds and specialists): " + "; ".join(parts)
            + ". HDRQ's regularisers changed the solution relative to QDrop only where its row moves differently "
            "from QDrop's (and from QDrop+noise's, for the distance term).")
