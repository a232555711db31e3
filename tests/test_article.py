"""The seed article's comparison table: verdicts on hand-made records; the scenario file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from unified.load.scenario_file import load_scenario
from unified.report.article import article_sections, classify
from unified.report.html import RunFolder, html_report
from unified.run.results import append_record, new_record
from unified.spec.scenario import Scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"

RECIPES: dict[str, Any] = {
    "dyn": [{"quantize": {"method": "dynamic", "weights": 8, "activations": 8}}],
    "static": [{"quantize": {"method": "static", "weights": 8, "activations": 8}}],
    "qat": [{"quantize": {"method": "qat", "weights": 8, "activations": 8}}],
    "pl": [{"prune": {"sparsity": 0.5, "scope": "local"}}],
    "w16": [{"quantize": {"method": "static", "weights": 16, "dtype": "float16",
                          "activations": None}}],
    "w4": [{"quantize": {"method": "static", "weights": 4, "activations": None}}],
    "c16": [{"cluster": {"clusters": 16}}],
    "bin": [{"binarize": {}}],
}


def _scenario(models: dict[str, dict[str, Any]], recipes: dict[str, Any]) -> Scenario:
    return Scenario.model_validate({
        "name": "t", "models": models, "backends": ["pytorch", "coreml", "nni"],
        "data": {"source": "digits", "train": 100, "calibration": 10, "test": 50},
        "recipes": recipes,
    })


def _model(source: str, weights: str = "random", classes: int = 1000) -> dict[str, Any]:
    return {"source": source, "weights": weights, "input_shape": [3, 32, 32],
            "num_classes": classes}


def _rec(model: str, recipe: str, backend: str, status: str = "ok",
         **fields: Any) -> dict[str, Any]:
    fields.setdefault("onnx_bytes", 1000)
    return new_record("t", model, recipe, backend, status, **fields)


def _run(tmp_path: Path, scenario: Scenario, records: list[dict[str, Any]]) -> RunFolder:
    tmp_path.mkdir(exist_ok=True)
    # model: is derived from models: (the first one); a dump holding both does not load back
    (tmp_path / "scenario.json").write_text(scenario.model_dump_json(exclude={"model"}))
    (tmp_path / "results.jsonl").touch()
    for r in records:
        append_record(tmp_path / "results.jsonl", r)
    return RunFolder(tmp_path)


def _rows(html_text: str) -> list[str]:
    return re.findall(r"<tr>.*?</tr>", html_text, flags=re.S)


def _verdict(html_text: str, claim_word: str, model: str) -> str:
    """The verdict word of the row of ``model`` under the claim containing ``claim_word``."""
    rows = _rows(html_text)
    start = next(i for i, r in enumerate(rows) if claim_word in r)
    for i, row in enumerate(rows[start:]):
        if i and "rowspan" in row:  # the next claim
            break
        if f"<td class=\"l\">{model}<br>" in row:
            return re.search(r"<b>(\w+|n/a)</b>", row).group(1)  # type: ignore[union-attr]
    raise AssertionError(f"no row for {model} under {claim_word!r}")


def test_seed_article_scenario_validates() -> None:
    scenario = load_scenario(SCENARIOS / "seed-article.yaml")
    labels = [view.model.label for view in scenario.views()]
    sources = {view.model.source for view in scenario.views()}
    assert {"torchvision:mobilenet_v2", "torchvision:resnet50",
            "torchvision:squeezenet1_1"} <= sources
    assert len(labels) == len(set(labels))
    kinds = {k.kind for r in scenario.recipes.values() if (k := classify(r)) is not None}
    assert {"dynamic", "static", "qat", "prune", "weights", "cluster"} <= kinds
    bits = {k.bits for r in scenario.recipes.values()
            if (k := classify(r)) is not None and k.kind in ("weights", "cluster")}
    assert {16, 4, 2} <= bits  # 8 bits: the int8 recipes, weights-only on Core ML


def test_classify_by_steps_not_names() -> None:
    sc = _scenario({"m": _model("torchvision:resnet50")}, RECIPES)
    got = {name: classify(r) for name, r in sc.recipes.items()}
    assert {n: k.kind for n, k in got.items() if k} == {
        "dyn": "dynamic", "static": "static", "qat": "qat", "pl": "prune",
        "w16": "weights", "w4": "weights", "c16": "cluster", "bin": "binarize"}
    assert got["w16"].bits == 16 and got["c16"].bits == 4  # type: ignore[union-attr]


def test_no_article_rows_no_section(tmp_path: Path) -> None:
    sc = _scenario({"m": _model("torchvision:resnet50")},
                   {"kd": [{"distill": {"student": "builtin:convnet-thin"}}]})
    run = _run(tmp_path, sc, [_rec("m", "kd", "pytorch", size_ratio=2.0)])
    assert article_sections(run) == []


def test_dynamic_static_and_pruning_verdicts(tmp_path: Path) -> None:
    sc = _scenario({"mnv2": _model("torchvision:mobilenet_v2"),
                    "sq": _model("torchvision:squeezenet1_1"),
                    "r50": _model("torchvision:resnet50", classes=10)},
                   {k: RECIPES[k] for k in ("dyn", "static", "pl")})
    records = [
        _rec("mnv2", "dyn", "pytorch", size_ratio=1.37, speedup=1.0),  # FC shrank: a little
        _rec("sq", "dyn", "pytorch", size_ratio=1.0, speedup=1.0),  # no Linear: unchanged
        _rec("r50", "dyn", "pytorch", size_ratio=1.001, speedup=1.0),  # 10-class head
        _rec("mnv2", "static", "pytorch", size_ratio=3.8, speedup=2.0),
        _rec("sq", "static", "pytorch", size_ratio=3.7, speedup=0.9),  # size ok, slower
        _rec("r50", "static", "pytorch", size_ratio=1.5, speedup=0.9),
        _rec("r50", "static", "nni", size_ratio=3.9, speedup=2.5),  # context only
        _rec("mnv2", "pl", "pytorch", size_ratio=1.0, speedup=1.02, sparsity=0.5),
        _rec("sq", "pl", "pytorch", size_ratio=1.9, speedup=1.0, sparsity=0.5),
        _rec("r50", "pl", "pytorch", "failed", reason="boom"),
    ]
    [(title, body)] = article_sections(_run(tmp_path, sc, records))
    assert "seed article" in title
    # the PyTorch adapter refuses a model without nn.Linear: that bears the claim out
    refused = [r for r in records if not (r["model"] == "sq" and r["recipe"] == "dyn")]
    refused.append(_rec("sq", "dyn", "pytorch", "failed",
                        reason="SqueezelabError: dynamic quantization: no nn.Linear matches"))
    [(_, body2)] = article_sections(_run(tmp_path / "refused", sc, refused))
    assert _verdict(body2, "dynamic quantization", "sq") == "agrees"
    assert "no nn.Linear" in body2
    assert _verdict(body, "dynamic quantization", "mnv2") == "agrees"
    assert _verdict(body, "dynamic quantization", "sq") == "agrees"
    assert _verdict(body, "dynamic quantization", "r50") == "differs"
    assert "10-class head" in body
    assert _verdict(body, "static quantization", "mnv2") == "agrees"
    assert _verdict(body, "static quantization", "sq") == "partly"
    assert _verdict(body, "static quantization", "r50") == "differs"
    assert "nni: size 3.90×" in body
    assert _verdict(body, "only zeroes", "mnv2") == "agrees"
    assert _verdict(body, "only zeroes", "sq") == "differs"
    with pytest.raises(AssertionError, match="no row for r50"):  # failed rows: no figure
        _verdict(body, "only zeroes", "r50")
    # fp32 size = onnx_bytes × size_ratio = 1000 × 1.37 bytes: far below 50 MB
    assert _verdict(body, "50–500 MB", "mnv2") == "differs"


def test_coreml_bits_sharing_qat_binarize(tmp_path: Path) -> None:
    sc = _scenario({"good": _model("torchvision:mobilenet_v2", "train", 10),
                    "bad": _model("torchvision:squeezenet1_1", "train", 10),
                    "rand": _model("torchvision:resnet50")},
                   {k: RECIPES[k] for k in ("static", "dyn", "qat", "w16", "w4", "c16", "bin")})

    def coreml(model: str, recipe: str, factor: float, drop: float) -> dict[str, Any]:
        return _rec(model, recipe, "coreml", "ok", accuracy=0.9 - drop, accuracy_drop=drop,
                    size_ratio=1.0, native_ratio=factor * 0.98,
                    details={"weight_file_ratio": 1 / factor})

    records = [
        coreml("good", "w16", 2.0, 0.0), coreml("good", "w4", 7.9, 0.004),
        coreml("good", "static", 3.95, 0.001),  # Core ML int8 = weights only: the 8-bit point
        coreml("good", "c16", 7.8, 0.003),
        coreml("bad", "w16", 2.0, 0.03),  # 16 bits loses accuracy
        coreml("bad", "w4", 4.0, 0.2),  # not in proportion
        coreml("bad", "c16", 4.0, 0.2),
        coreml("rand", "w16", 2.0, 0.5), coreml("rand", "w4", 8.0, 0.5),  # drop not judged
        _rec("good", "c16", "nni", gzip_ratio=12.0, size_ratio=1.0, accuracy_drop=0.005),
        _rec("good", "static", "pytorch", accuracy=0.90, size_ratio=3.9, speedup=2.0),
        _rec("good", "dyn", "pytorch", accuracy=0.91, size_ratio=1.0),
        _rec("good", "qat", "pytorch", accuracy=0.912, size_ratio=3.9),
        _rec("bad", "static", "pytorch", accuracy=0.90, size_ratio=3.9, speedup=2.0),
        _rec("bad", "qat", "pytorch", accuracy=0.85, size_ratio=3.9),
        _rec("good", "bin", "nni", gzip_ratio=20.0, accuracy_drop=0.3),
        _rec("bad", "bin", "nni", gzip_ratio=3.0, accuracy_drop=0.01),
    ]
    run = _run(tmp_path, sc, records)
    [(_, body)] = article_sections(run)
    assert _verdict(body, "Core ML weight quantization", "good") == "agrees"
    assert _verdict(body, "Core ML weight quantization", "bad") == "differs"
    assert _verdict(body, "Core ML weight quantization", "rand") == "agrees"
    assert "weight file 7.90× (32/bits 8.00×)" in body
    assert "8-bit weights (static): weight file 3.95× (32/bits 4.00×)" in body
    assert _verdict(body, "Weight sharing", "good") == "agrees"  # nni gzip 12× kept accuracy
    assert _verdict(body, "Weight sharing", "bad") == "differs"  # 4× < 10×
    assert _verdict(body, "QAT", "good") == "agrees"
    assert _verdict(body, "QAT", "bad") == "differs"
    assert _verdict(body, "Binarization", "good") == "agrees"
    assert _verdict(body, "Binarization", "bad") == "partly"  # Core ML 4-bit compresses more
    # the report embeds the section, escaped and well formed
    page = html_report(run, article_sections(run))
    assert "The seed article vs this run" in page
    assert page.count("<table>") == page.count("</table>")


def test_chance_level_reference_is_not_judged_on_accuracy(tmp_path: Path) -> None:
    sc = _scenario({"m": _model("torchvision:squeezenet1_1", "train", 10)},
                   {k: RECIPES[k] for k in ("static", "qat")})
    records = [  # fp32 reference = accuracy + drop = 0.10: chance for 10 classes
        _rec("m", "static", "pytorch", accuracy=0.09, accuracy_drop=0.01, size_ratio=3.8),
        _rec("m", "qat", "pytorch", accuracy=0.05, accuracy_drop=0.05, size_ratio=3.8),
    ]
    [(_, body)] = article_sections(_run(tmp_path, sc, records))
    assert _verdict(body, "QAT", "m") == "n/a"
    assert "chance level" in body


@pytest.mark.parametrize("status", ["unsupported", "failed", "timeout"])
def test_unmeasured_rows_only(tmp_path: Path, status: str) -> None:
    sc = _scenario({"m": _model("torchvision:mobilenet_v2")}, {"static": RECIPES["static"]})
    run = _run(tmp_path, sc, [_rec("m", "static", "pytorch", status, reason="x")])
    assert article_sections(run) == []


def test_records_json_roundtrip(tmp_path: Path) -> None:
    """Records read back from results.jsonl (details as JSON) give the same table."""
    sc = _scenario({"m": _model("torchvision:squeezenet1_1")}, {"w4": RECIPES["w4"]})
    rec = _rec("m", "w4", "coreml", native_ratio=7.5, details={"weight_file_ratio": 0.125})
    run = _run(tmp_path, sc, [json.loads(json.dumps(rec))])
    [(_, body)] = article_sections(run)
    assert "weight file 8.00×" in body
