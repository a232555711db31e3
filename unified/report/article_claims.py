"""The seed article's claims, one judge each: given a model's measured rows, the figures
measured here and a verdict (agrees, partly, differs, or n/a with the reason)."""

from __future__ import annotations

import html

from unified.report.article_rows import (
    AGREES,
    BAD_DROP,
    DIFFERS,
    KEEPS_ACCURACY,
    LITTLE_SHRINK,
    NA,
    NO_SHRINK,
    PARTLY,
    PROPORTIONAL,
    QAT_TIE,
    SHARING_SIZE,
    SIZE_SAME,
    SPEED_SAME,
    STATIC_SIZE,
    STATIC_SPEED,
    Claim,
    ModelRows,
    RecipeKind,
    Verdict,
    _acc,
    _best_storage,
    _inside,
    _others,
    _size_speed,
    _weight_factor,
    _x,
)


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
