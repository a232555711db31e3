"""The seed article's claims set side by side with a run's measurements (report section).

docs/architecture.md, "The seed article's claims": each claim becomes rows of one HTML table,
one row per model of the run, with the figures measured here and a verdict (agrees, partly,
differs, or n/a with the reason). Recipes are recognised by their steps, not their names,
so any scenario with e.g. a dynamic-quantization recipe gets the matching row.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unified.spec.steps import (
    BinarizeStep,
    ClusterStep,
    FinetuneStep,
    PruneStep,
    QuantDType,
    QuantizeStep,
    QuantMethod,
    Recipe,
)

if TYPE_CHECKING:
    from unified.report.html import RunFolder
    from unified.spec.scenario import ModelSpec, Scenario

MEASURED = ("ok", "approximated")
AGREES, PARTLY, DIFFERS, NA = "agrees", "partly", "differs", "n/a"
# Reuse the report's status colours for verdicts.
VERDICT_CLASS = {AGREES: "ok", PARTLY: "approximated", DIFFERS: "failed", NA: "unsupported"}

# The article's three torchvision architectures; whether they end in a Linear layer decides
# what PyTorch dynamic quantization (Linear/LSTM/RNN only) can shrink.
ARCHITECTURES = {
    "mobilenet_v2": ("MobileNetV2", True),
    "resnet50": ("ResNet50", True),
    "squeezenet1_1": ("SqueezeNet1.1", False),
}

# Tolerances of the verdicts; latency on a shared CPU is noisy, sizes are exact.
SIZE_SAME = (0.95, 1.05)  # "no size gain"
SPEED_SAME = (0.8, 1.25)  # "no speed gain"
NO_SHRINK = (0.99, 1.01)  # dynamic quantization of a model without Linear layers
LITTLE_SHRINK = (1.005, 1.6)  # one Linear layer of a CNN
STATIC_SIZE = (3.0 * 0.95, 4.0 * 1.05)  # "3–4× smaller", 5% slack for graph overhead
STATIC_SPEED = (1.2, 3.0)
KEEPS_ACCURACY = 0.01  # accuracy drop that still counts as "keeps accuracy"
QAT_TIE = 0.002
PROPORTIONAL = 0.2  # weight file within 20% of 32/bits counts as "in proportion"
SHARING_SIZE = (10.0, 15.0)
BAD_DROP = 0.05
CHANCE_FACTOR = 2.0  # a reference below 2× chance accuracy did not learn: no accuracy verdicts


@dataclass(frozen=True)
class RecipeKind:
    """What an article claim needs to know about a recipe."""

    kind: str  # dynamic | static | qat | prune | weights | cluster | binarize
    bits: float | None = None
    label: str = ""


def classify(recipe: Recipe) -> RecipeKind | None:
    """The article technique a recipe is an instance of, or None (e.g. mixed recipes)."""
    steps = recipe.steps
    if any(isinstance(s, BinarizeStep) for s in steps):
        return RecipeKind("binarize", 1, "binarize")
    core = [s for s in steps if not isinstance(s, FinetuneStep)]
    if core and all(isinstance(s, PruneStep) for s in core):
        first = core[0]
        assert isinstance(first, PruneStep)
        return RecipeKind("prune", None,
                          f"{first.structure.value} {first.scope.value} {first.sparsity:g}")
    if len(steps) != 1:
        return None
    step = steps[0]
    if isinstance(step, ClusterStep):
        bits = step.bits if step.bits is not None else (
            math.log2(step.clusters) if step.clusters else None)
        return RecipeKind("cluster", bits, f"{2 ** bits:g} clusters" if bits else "clusters")
    if not isinstance(step, QuantizeStep):
        return None
    if step.method == QuantMethod.qat:
        return RecipeKind("qat", step.weights, "QAT")
    if step.activations is None:
        bits = 16 if step.dtype == QuantDType.float16 else step.weights
        return RecipeKind("weights", bits, f"{bits}-bit weights")
    if step.method == QuantMethod.dynamic:
        return RecipeKind("dynamic", step.weights, "dynamic")
    if step.weights == 8 and step.activations == 8:
        return RecipeKind("static", 8, "static int8")
    return None


# --- formatting --------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _acc(record: dict[str, Any]) -> str:
    acc, drop = record.get("accuracy"), record.get("accuracy_drop")
    if acc is None:
        return "acc –"
    return f"acc {acc:.3f}" + (f" (drop {drop:+.3f})" if drop is not None else "")


def _inside(value: float | None, bounds: tuple[float, float]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def _weight_factor(record: dict[str, Any]) -> tuple[float | None, str]:
    """How many times smaller the stored weights are: the Core ML weight file ratio when
    the adapter reported it, else fp32 ONNX / native artifact."""
    ratio = (record.get("details") or {}).get("weight_file_ratio")
    if ratio:
        return 1.0 / float(ratio), "weight file"
    return record.get("native_ratio"), "native"


def _best_storage(record: dict[str, Any]) -> tuple[float | None, str]:
    """The largest of the size ratios (ONNX, native artifact, gzip of the ONNX)."""
    options = [(record.get(f), name) for f, name in
               (("size_ratio", "ONNX"), ("native_ratio", "native"), ("gzip_ratio", "gzip"))]
    present = [(v, n) for v, n in options if v is not None]
    return max(present) if present else (None, "")


def _size_speed(record: dict[str, Any]) -> str:
    """ONNX size and speed ratios, plus the native artifact's when it tells more (Core ML
    weights-only rows: the ONNX carries decompressed float weights)."""
    size, native = record.get("size_ratio"), record.get("native_ratio")
    text = f"size {_x(size)}"
    if native is not None and (size is None or abs(native / size - 1) > 0.05):
        text += f" (native {_x(native)})"
    return text + f", speed {_x(record.get('speedup'))}"


# --- the claims --------------------------------------------------------------------------


@dataclass
class ModelRows:
    """The records of one model, grouped by article technique."""

    label: str
    spec: ModelSpec
    by_kind: dict[str, list[tuple[RecipeKind, dict[str, Any]]]]
    fp32_bytes: float | None
    reference_accuracy: float | None = None
    unmeasured: list[tuple[RecipeKind, dict[str, Any]]] | None = None  # failed / timeout

    @property
    def arch(self) -> tuple[str, bool] | None:
        name = self.spec.source.partition(":")[2]
        return ARCHITECTURES.get(name) if self.spec.source.startswith("torchvision:") else None

    @property
    def trained(self) -> bool:
        """Accuracy means something only for trained (or loaded) weights on labelled data
        whose fp32 reference beats chance clearly."""
        if self.spec.weights == "random":
            return False
        acc = self.reference_accuracy
        return acc is None or acc > CHANCE_FACTOR / self.spec.num_classes

    def rows(self, kind: str, backend: str | None = None) -> list[tuple[RecipeKind, dict]]:
        return [(k, r) for k, r in self.by_kind.get(kind, [])
                if backend is None or r["backend"] == backend]


Verdict = tuple[str, str]  # (verdict, why)
Claim = tuple[str, Callable[[ModelRows], tuple[str, Verdict] | None]]


def _others(rows: Iterable[tuple[RecipeKind, dict[str, Any]]], skip: str,
            fmt: Callable[[dict[str, Any]], str]) -> str:
    parts = [f"{r['backend']}: {fmt(r)}" for _, r in rows if r["backend"] != skip]
    return ("<br><small>other toolkits: " + html.escape("; ".join(parts)) + "</small>"
            if parts else "")


def claim_weights_size(m: ModelRows) -> tuple[str, Verdict] | None:
    if m.fp32_bytes is None:
        return None
    mb = m.fp32_bytes / 1e6
    ours = f"fp32 ONNX {mb:.1f} MB"
    if 50 <= mb <= 500:
        return ours, (AGREES, "inside 50–500 MB")
    side = "below" if mb < 50 else "above"
    why = (f"{side} 50–500 MB"
           + (f" ({m.spec.num_classes}-class head)" if m.spec.num_classes < 1000 else ""))
    return ours, (DIFFERS, why)


def claim_dynamic(m: ModelRows) -> tuple[str, Verdict] | None:
    rows = m.rows("dynamic")
    mine = [r for k, r in rows if r["backend"] == "pytorch"]
    refused = [r for k, r in m.unmeasured or [] if k.kind == "dynamic"
               and r["backend"] == "pytorch" and "Linear" in (r.get("reason") or "")]
    if not rows and not refused:
        return None
    fmt = _size_speed
    if not mine and refused and m.arch is not None and not m.arch[1]:
        # the adapter refuses a model without nn.Linear: nothing to shrink, as the article says
        why = (refused[0].get("reason") or "").split(" (log:")[0]
        return ("pytorch: " + html.escape(f"{refused[0]['status']}: {why}")
                + _others(rows, "pytorch", fmt),
                (AGREES, f"{m.arch[0]} has no Linear layer: nothing to quantize"))
    if not mine:
        return "no PyTorch row" + _others(rows, "pytorch", fmt), (NA, "PyTorch not in run")
    rec = mine[0]
    ours = "pytorch: " + html.escape(fmt(rec)) + _others(rows, "pytorch", fmt)
    ratio = rec.get("size_ratio")
    if ratio is None:
        return ours, (NA, f"not measured ({rec['status']})")
    if m.arch is None:
        return ours, (NA, "the article has no figure for this architecture")
    name, has_linear = m.arch
    if not has_linear:
        if _inside(ratio, NO_SHRINK):
            return ours, (AGREES, f"{name} has no Linear layer: size unchanged")
        return ours, (DIFFERS, f"{name} has no Linear layer, yet the size changed {_x(ratio)}")
    if _inside(ratio, LITTLE_SHRINK):
        return ours, (AGREES, "only the fully connected head shrank: a little smaller")
    if ratio < LITTLE_SHRINK[0]:
        why = "no measurable gain"
        if m.spec.num_classes < 1000:
            why += (f": the only Linear layer is a {m.spec.num_classes}-class head, a tiny "
                    "share of the weights (the article's had 1000 classes)")
        return ours, (DIFFERS, why)
    return ours, (DIFFERS, f"{_x(ratio)} is more than 'a little'")


def claim_static(m: ModelRows) -> tuple[str, Verdict] | None:
    rows = m.rows("static")
    if not rows:
        return None
    fmt = _size_speed
    mine = [r for _, r in rows if r["backend"] == "pytorch"]
    if not mine:
        return "no PyTorch row" + _others(rows, "pytorch", fmt), (NA, "PyTorch not in run")
    rec = mine[0]
    ours = "pytorch: " + html.escape(fmt(rec)) + _others(rows, "pytorch", fmt)
    size, speed = rec.get("size_ratio"), rec.get("speedup")
    if size is None:
        return ours, (NA, f"not measured ({rec['status']})")
    size_ok = _inside(size, STATIC_SIZE)
    # faster than the article's top figure still bears the claim out
    speed_ok = speed is not None and speed >= STATIC_SPEED[0]
    problems = []
    if not size_ok:
        problems.append(f"size {_x(size)} outside 3–4×")
    if not speed_ok:
        problems.append(f"speed-up {_x(speed)} below 1.2×")
    if size_ok and speed_ok:
        above = (f" (speed-up {_x(speed)} above the article's 3×)"
                 if speed is not None and speed > STATIC_SPEED[1] else "")
        return ours, (AGREES, "size and speed-up inside the article's ranges" + above)
    return ours, (PARTLY if size_ok or speed_ok else DIFFERS, "; ".join(problems))


def claim_qat(m: ModelRows) -> tuple[str, Verdict] | None:
    qat = m.rows("qat")
    if not qat:
        return None
    fmt = lambda r: _acc(r)  # noqa: E731
    mine = {k: [r for _, r in m.rows(k, "pytorch") if r.get("accuracy") is not None]
            for k in ("dynamic", "static", "qat")}
    ours = html.escape("pytorch: " + "; ".join(
        f"{k} {_acc(v[0])}" for k, v in mine.items() if v)) + _others(qat, "pytorch", fmt)
    if not m.trained:
        return ours, (NA, "untrained (random or chance-level) weights: accuracy carries no "
                          "meaning (size/latency only)")
    if not mine["qat"]:
        return ours, (NA, "no measured PyTorch QAT row")
    q = mine["qat"][0]["accuracy"]
    rivals = {k: v[0]["accuracy"] for k, v in mine.items() if k != "qat" and v}
    if not rivals:
        return ours, (NA, "no PyTorch dynamic/static row to compare with")
    best_name, best = max(rivals.items(), key=lambda kv: kv[1])
    if q >= best - QAT_TIE:
        return ours, (AGREES, f"QAT {q:.3f} ≥ {best_name} {best:.3f}")
    return ours, (DIFFERS, f"QAT {q:.3f} < {best_name} {best:.3f} (one short fine-tune budget)")


def claim_prune(m: ModelRows) -> tuple[str, Verdict] | None:
    rows = m.rows("prune")
    if not rows:
        return None
    fmt = lambda r: (f"size {_x(r.get('size_ratio'))}, native {_x(r.get('native_ratio'))}, "  # noqa: E731
                     f"speed {_x(r.get('speedup'))}")
    mine = [(k, r) for k, r in rows if r["backend"] == "pytorch"]
    lines = [f"{k.label}: size {_x(r.get('size_ratio'))}, speed {_x(r.get('speedup'))}, "
             f"sparsity {r['sparsity']:.2f}" if r.get("sparsity") is not None else
             f"{k.label}: not measured ({r['status']})" for k, r in mine]
    ours = html.escape("pytorch " + "; ".join(lines) if lines else "no PyTorch row") \
        + _others(rows, "pytorch", fmt)
    measured = [r for _, r in mine if r.get("size_ratio") is not None]
    if not measured:
        return ours, (NA, "no measured PyTorch pruning row")
    problems = []
    for k, r in mine:
        if r.get("size_ratio") is None:
            continue
        if not _inside(r["size_ratio"], SIZE_SAME):
            problems.append(f"{k.label}: size changed {_x(r['size_ratio'])}")
        if r.get("speedup") is not None and not _inside(r["speedup"], SPEED_SAME):
            problems.append(f"{k.label}: speed changed {_x(r['speedup'])}")
    if problems:
        return ours, (DIFFERS, "; ".join(problems))
    return ours, (AGREES, "zeros only: dense ONNX keeps its size and speed")


def claim_coreml_bits(m: ModelRows) -> tuple[str, Verdict] | None:
    rows = [(k, r) for kind in ("weights", "cluster") for k, r in m.rows(kind, "coreml")
            if k.bits]
    # Core ML on Linux quantizes only the weights of an int8 dynamic/static recipe: its
    # 8-bit point of the series
    rows += [(RecipeKind("weights", 8, f"8-bit weights ({r['recipe']})"), r)
             for kind in ("dynamic", "static") for _, r in m.rows(kind, "coreml")]
    if not rows:
        return None
    rows.sort(key=lambda kr: -(kr[0].bits or 0))
    parts, problems, checked = [], [], 0
    for k, r in rows:
        assert k.bits is not None
        factor, what = _weight_factor(r)
        if factor is None:
            parts.append(f"{k.label}: not measured ({r['status']})")
            continue
        checked += 1
        expected = 32 / k.bits
        parts.append(f"{k.label}: {what} {_x(factor)} (32/bits {_x(expected)}), {_acc(r)}")
        if abs(factor / expected - 1) > PROPORTIONAL:
            problems.append(f"{k.label}: {_x(factor)} vs {_x(expected)}")
        drop = r.get("accuracy_drop")
        if m.trained and k.bits >= 8 and drop is not None and drop > KEEPS_ACCURACY:
            problems.append(f"{k.label} loses {drop:.3f} accuracy")
    ours = "<br>".join(html.escape(p) for p in parts)
    if not checked:
        return ours, (NA, "no measured Core ML row")
    note = ("" if m.trained else "; accuracy not judged (untrained model)") + \
        "; latency not judged: the ONNX carries decompressed float weights"
    if not problems:
        return ours, (AGREES, "weight size in proportion to the bits" + note)
    verdict = PARTLY if len(problems) < checked else DIFFERS
    return ours, (verdict, "; ".join(problems) + note)


def claim_sharing(m: ModelRows) -> tuple[str, Verdict] | None:
    rows = [(k, r) for k, r in m.rows("cluster") if r.get("size_ratio") is not None]
    if not m.rows("cluster"):
        return None
    parts = []
    for k, r in m.rows("cluster"):
        best, how = _best_storage(r)
        parts.append(f"{r['backend']} {k.label}: {how} {_x(best)}, {_acc(r)}")
    ours = "<br>".join(html.escape(p) for p in parts)
    if not rows:
        return ours, (NA, "no measured clustering row")
    scored = []
    for k, r in rows:
        best, how = _best_storage(r)
        drop = r.get("accuracy_drop")
        keeps = (not m.trained) or (drop is not None and drop <= KEEPS_ACCURACY)
        scored.append((best or 0.0, keeps, k, r, how))
    winners = [s for s in scored if s[0] >= SHARING_SIZE[0] and s[1]]
    acc_note = "" if m.trained else " (accuracy not judged: untrained model)"
    if winners:
        best, _, k, r, how = max(winners, key=lambda s: s[0])
        kept = " with accuracy kept" if m.trained else ""
        return ours, (AGREES, f"{r['backend']} {k.label}: {how} {_x(best)} "
                              f"≥ 10×{kept}{acc_note}")
    best, keeps, k, r, how = max(scored, key=lambda s: s[0])
    why = f"largest {_x(best)} ({r['backend']} {k.label}, {how}) is below 10×"
    if k.bits:
        why += f"; {k.bits:g}-bit indices alone bound it near {_x(32 / k.bits)}"
    if best >= SHARING_SIZE[0] and not keeps:
        why = f"{r['backend']} {k.label} reaches {_x(best)} but loses accuracy"
    return ours, (DIFFERS, why + acc_note)


def claim_binarize(m: ModelRows) -> tuple[str, Verdict] | None:
    rows = m.rows("binarize")
    if not rows:
        return None
    parts = []
    for _, r in rows:
        best, how = _best_storage(r)
        parts.append(f"{r['backend']}: {how} {_x(best)}, {_acc(r)}")
    ours = html.escape("; ".join(parts))
    measured = [r for _, r in rows if _best_storage(r)[0] is not None]
    if not measured:
        return ours, (NA, "no measured binarization row")
    rec = max(measured, key=lambda r: _best_storage(r)[0] or 0.0)
    best, how = _best_storage(rec)
    assert best is not None
    others = [(_best_storage(r), k, r) for kind, kr in m.by_kind.items() if kind != "binarize"
              for k, r in kr if _best_storage(r)[0] is not None]
    top = max(others, key=lambda o: o[0][0] or 0.0, default=None)
    drop = rec.get("accuracy_drop")
    hurt = (f"accuracy drop {drop:.3f}" + (" (badly)" if drop > BAD_DROP else " (mild here)")
            if m.trained and drop is not None else "accuracy not judged")
    if top is None or best >= (top[0][0] or 0.0):
        return ours, (AGREES, f"highest compression of the run ({how} {_x(best)}); {hurt}")
    (t_best, t_how), t_kind, t_rec = top
    return ours, (PARTLY, f"{t_rec['backend']} {t_kind.label} compresses more ({t_how} "
                          f"{_x(t_best)} > {_x(best)}); {hurt}")


CLAIMS: tuple[Claim, ...] = (
    ("Constraint: CNN weights of 50–500 MB", claim_weights_size),
    ("PyTorch dynamic quantization covers only Linear/LSTM/RNN layers: MobileNetV2 and "
     "ResNet50 shrink a little (one fully connected layer each), SqueezeNet1.1 not at all",
     claim_dynamic),
    ("PyTorch static quantization: 3–4× smaller and 1.2–3× faster depending on the "
     "architecture", claim_static),
    ("QAT: best accuracy of the three (dynamic, static, QAT); needs training", claim_qat),
    ("PyTorch pruning (local and global) only zeroes weights: same architecture, no size or "
     "speed gain unless stored or executed sparsely", claim_prune),
    ("Core ML weight quantization (16, 8, … 1 bits): size falls in proportion to the bits; "
     "16 and 8 bits keep accuracy and inference time", claim_coreml_bits),
    ("Weight sharing (clustering): about the same accuracy at 10–15× smaller", claim_sharing),
    ("Binarization: highest compression, can hurt accuracy badly", claim_binarize),
)


# --- assembly ----------------------------------------------------------------------------


def model_rows(records: list[dict[str, Any]], scenario: Scenario) -> list[ModelRows]:
    """The run's measured records, per model (in scenario order) and technique."""
    kinds = {name: classify(recipe) for name, recipe in scenario.recipes.items()}
    out = []
    for view in scenario.views():
        label = view.model.label
        mine = [r for r in records if r.get("model") in (label, None)
                or len(scenario.views()) == 1]
        by_kind: dict[str, list[tuple[RecipeKind, dict[str, Any]]]] = {}
        fp32 = ref_acc = None
        unmeasured = []
        for r in mine:
            if r.get("status") not in MEASURED:
                kind = kinds.get(r.get("recipe", ""))
                if kind is not None and r.get("status") in ("failed", "timeout"):
                    unmeasured.append((kind, r))
                continue
            if fp32 is None and r.get("onnx_bytes") and r.get("size_ratio"):
                fp32 = r["onnx_bytes"] * r["size_ratio"]
            if ref_acc is None and r.get("accuracy") is not None \
                    and r.get("accuracy_drop") is not None:
                ref_acc = r["accuracy"] + r["accuracy_drop"]  # drop = fp32 - this
            kind = kinds.get(r.get("recipe", ""))
            if kind is not None:
                by_kind.setdefault(kind.kind, []).append((kind, r))
        out.append(ModelRows(label, view.model, by_kind, fp32, ref_acc, unmeasured))
    return out


def _describe(m: ModelRows) -> str:
    arch = m.arch[0] if m.arch else m.spec.source
    weights = ("random weights" if m.spec.weights == "random" else "trained weights"
               if m.trained else "trained weights, at chance level")
    shape = "×".join(str(d) for d in m.spec.input_shape)
    return f"{m.label}<br><small>{html.escape(arch)}, {shape}, {weights}</small>"


def comparison_table(models: list[ModelRows]) -> str | None:
    """The HTML table (claim | model | measured here | verdict), or None without rows."""
    body: list[str] = []
    technique_rows = 0
    for index, (claim, judge) in enumerate(CLAIMS):
        results = [(m, out) for m in models if (out := judge(m)) is not None]
        if not results:
            continue
        if index > 0:
            technique_rows += len(results)
        for i, (m, (ours, (verdict, why))) in enumerate(results):
            claim_cell = (f'<td class="l" rowspan="{len(results)}">{html.escape(claim)}</td>'
                          if i == 0 else "")
            body.append(
                f"<tr>{claim_cell}<td class=\"l\">{_describe(m)}</td>"
                f'<td class="l">{ours}</td>'
                f'<td class="l"><span class="{VERDICT_CLASS[verdict]}"><b>{verdict}</b>'
                f"</span>: {html.escape(why)}</td></tr>")
    if not technique_rows:
        return None
    head = ("<table><tr><th>the article says</th><th>model</th><th>measured here</th>"
            "<th>verdict</th></tr>")
    return head + "\n".join(body) + "</table>"


def article_sections(run: RunFolder) -> list[tuple[str, str]]:
    """(title, HTML) sections comparing the seed article's tables with ``run``; none when
    the run has nothing the article measured."""
    models = model_rows(run.records, run.scenario)
    table = comparison_table(models)
    if table is None:
        return []
    intro = (
        "<p>The seed article compressed MobileNetV2, ResNet50 and SqueezeNet1.1 trained on "
        "ImageNet. No pretrained weights can be downloaded here: size and latency come from "
        "the same architectures with random weights at their full input size, accuracy from "
        "versions trained on the run's labelled data at a small resolution. Ratios are "
        "fp32 / compressed (size: ONNX bytes, native: the toolkit's own artifact, gzip: the "
        "gzipped ONNX); speed = fp32 p50 latency / this p50 on the one onnxruntime harness "
        "(batch 1; on a shared machine latency ratios are noisy, sizes are exact). "
        "Verdict tolerances: sizes exact, 'no gain' = within "
        f"{SIZE_SAME[0]:g}–{SIZE_SAME[1]:g}× in size and {SPEED_SAME[0]:g}–{SPEED_SAME[1]:g}× "
        f"in speed, 'keeps accuracy' = drop ≤ {KEEPS_ACCURACY:g}, 'in proportion to the "
        f"bits' = within {PROPORTIONAL:.0%} of 32/bits.</p>")
    return [("The seed article vs this run", intro + table)]
