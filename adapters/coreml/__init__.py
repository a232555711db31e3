"""Apple coremltools backend: torch → Core ML mlprogram, compressed two ways.

* post-training (``coremltools.optimize.coreml`` on the converted mlprogram): weight-only
  linear quantization (int8/int4), palettization (k-means / uniform LUT), magnitude and n:m
  pruning, and joint compression of several of them;
* training-time (``coremltools.optimize.torch`` on the torch model): DKM palettization,
  scheduled MagnitudePruner, LinearQuantizer (QAT).

Which route a step takes follows the recipe (see :func:`routes`): ``quantize qat``, a prune
with a schedule or followed by a finetune, and a cluster followed by a finetune train in torch;
every other step is post-training on the mlprogram. A future ``route: coreml|torch`` field on
a step overrides the rule. Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.base import (
    NATIVE,
    Adapter,
    Artifacts,
    Capabilities,
    Plan,
    StepCapability,
    Verdict,
    approximated,
    unsupported,
)
from unified.spec.steps import ClusterStep, PruneStep, QuantizeStep, Step, prune_run

if TYPE_CHECKING:
    from unified.context import JobContext

COREML = "coreml"  # optimize.coreml on the converted mlprogram (post-training)
TORCH = "torch"  # optimize.torch on the torch model (training-time)
TRAIN = "train"  # a finetune step: extends the training of the torch step before it

# Core ML's LUT index types are uint1/2/3/4/6/8 (no uint5/uint7).
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
MACOS_ACTIVATIONS = (
    "weights only: Core ML activation quantization (linear_quantize_activations) calibrates by "
    "running the model with predict, which needs macOS; activations stay float"
)
LOW_BIT_QUANT = (
    "Core ML linear weight quantization supports only 8 and 4 bits: done as uniform "
    "palettization (a LUT of 2^bits evenly spaced levels between min and max, per tensor or "
    "per channel), i.e. asymmetric linear quantization stored as a LUT"
)

CAPABILITIES = Capabilities(
    backend="coreml",
    toolkit="coremltools",
    input_framework="pytorch",  # torch.jit.trace → ct.convert(convert_to="mlprogram")
    packages=("coremltools", "torch"),
    modules=("coremltools", "torch"),
    preload=("torch._dynamo",),
    install_hint="pip install 'squeezelab[coreml]'",
    artifact=".mlpackage",
    steps={
        "quantize": StepCapability(
            options={
                "method": {"static": NATIVE, "dynamic": NATIVE, "qat": NATIVE},
                "weights": {
                    16: NATIVE,
                    8: NATIVE,
                    4: NATIVE,
                    2: approximated(LOW_BIT_QUANT),
                    1: approximated(LOW_BIT_QUANT),
                },
                # None/16 post-training, 8 with qat (LinearQuantizer); check_recipe marks
                # activations 8 without qat as weights only.
                "activations": {
                    None: NATIVE,
                    16: NATIVE,
                    8: NATIVE,
                    4: unsupported("Core ML quantizes activations to 8 bits only"),
                    2: unsupported("Core ML quantizes activations to 8 bits only"),
                },
                "granularity": {"per_tensor": NATIVE, "per_channel": NATIVE, "per_block": NATIVE},
                "algorithm": {
                    "plain": NATIVE,
                    "lsq": unsupported("LinearQuantizer learns ranges with observers "
                                       "(fake-quant); no LSQ"),
                    "dorefa": unsupported("coremltools has no DoReFa quantizer"),
                    "pact": unsupported("coremltools has no PACT quantizer"),
                },
            },
        ),
        "prune": StepCapability(
            options={
                "structure": {
                    "unstructured": NATIVE,
                    "n:m": NATIVE,
                    "channel": unsupported(
                        "coremltools prunes weights in place (sparse storage); it has no "
                        "channel removal in optimize.coreml"
                    ),
                    "input_channel": unsupported(
                        "not mapped in this adapter: coremltools has no input-channel option "
                        "(its block pruning along one dim with a block as tall as the layer "
                        "could express it; not wired)"
                    ),
                    "block": unsupported(
                        "coremltools block pruning works along one axis (block_size, dim); "
                        "not mapped from a 2-D block in this adapter"
                    ),
                },
                "scope": {
                    "local": NATIVE,
                    "global": approximated(
                        "local: coremltools prunes each weight tensor to the target sparsity "
                        "(no global ranking across layers)"
                    ),
                },
                "criterion": {
                    "l1": NATIVE,
                    "level": NATIVE,
                    # for single weights |w| and w² rank the same
                    "l2": NATIVE,
                    "fpgm": unsupported("coremltools prunes by magnitude only"),
                    "taylor": unsupported("coremltools prunes by magnitude only"),
                    "random": unsupported("coremltools prunes by magnitude only"),
                },
            },
        ),
        "cluster": StepCapability(
            options={
                "init": {
                    "kmeans++": NATIVE,
                    "linear": NATIVE,  # palettize mode="uniform"
                    "random": unsupported("coremltools palettizes by k-means or a uniform LUT"),
                    "density": unsupported("coremltools palettizes by k-means or a uniform LUT"),
                },
                "granularity": {"per_tensor": NATIVE, "per_channel": NATIVE, "per_block": NATIVE},
            },
        ),
        "finetune": StepCapability(),
        "binarize": StepCapability(
            verdict=unsupported(
                "coremltools has no binarization (sign weights with a straight-through "
                "estimator); the closest is quantize weights: 1 or cluster bits: 1 (a 2-entry LUT)"
            )
        ),
        "distill": StepCapability(
            verdict=unsupported("coremltools has no knowledge-distillation API")
        ),
    },
)


def _next_kind(steps: list[Step], index: int) -> str | None:
    return steps[index + 1].kind if index + 1 < len(steps) else None


def routes(steps: list[Step]) -> list[str]:
    """Per step: COREML (post-training on the mlprogram), TORCH (optimize.torch) or TRAIN."""
    out: list[str] = []
    for i, step in enumerate(steps):
        explicit = getattr(step, "route", None)  # a future per-step switch, if the spec adds it
        if step.kind in ("finetune", "distill", "binarize"):
            out.append(TRAIN)
        elif explicit in (COREML, TORCH):
            out.append(str(explicit))
        elif isinstance(step, QuantizeStep):
            out.append(TORCH if step.method == "qat" else COREML)
        elif isinstance(step, PruneStep):
            # consecutive prune steps share one MagnitudePruner: one trains, all train
            group = prune_run(steps, i)
            training = any(getattr(steps[j], "schedule", None) is not None for j in group) \
                or _next_kind(steps, group[-1]) == "finetune"
            out.append(TORCH if training else COREML)
        elif isinstance(step, ClusterStep):
            out.append(TORCH if _next_kind(steps, i) == "finetune" else COREML)
        else:
            out.append(COREML)
    return out


def storage_bits(clusters: int) -> int | None:
    """Smallest Core ML LUT index width holding ``clusters`` entries (None: too many)."""
    for bits in PALETTE_BITS:
        if clusters <= 1 << bits:
            return bits
    return None


def _palette_kind(step: Step) -> str | None:
    """'cluster' for post-training LUT steps (incl. 1/2-bit quantize), 'linear', 'fp16'."""
    if isinstance(step, ClusterStep):
        return "cluster"
    if isinstance(step, QuantizeStep):
        if step.weights == 16:
            return "fp16"
        return "linear" if step.weights in (8, 4) else "cluster"
    if isinstance(step, PruneStep):
        return "prune"
    return None


def check_steps(steps: list[Step]) -> list[tuple[int, Verdict]]:
    """Cross-step rules of this adapter (see :meth:`CoremlAdapter.check_recipe`)."""
    route = routes(steps)
    out = _check_one_torch_stage(steps, route)
    seen_coreml: dict[str, int] = {}
    for i, step in enumerate(steps):
        out.extend(_check_order(i, steps, route))
        if isinstance(step, QuantizeStep):
            out.extend(_check_quantize(i, step, route[i]))
        if isinstance(step, ClusterStep):
            out.extend(_check_cluster(i, step, route[i]))
        if isinstance(step, PruneStep) and step.structure == "n:m" and step.n and step.m:
            implied = (step.m - step.n) / step.m
            if abs(implied - step.sparsity) > 1e-6:
                out.append((i, approximated(
                    f"n:m {step.n}:{step.m} prunes {implied:.2f} of each block; "
                    f"sparsity {step.sparsity} is ignored")))
        if route[i] == COREML:
            out.extend(_check_joint(i, _palette_kind(step), seen_coreml))
    return out


def _check_one_torch_stage(steps: list[Step], route: list[str]) -> list[tuple[int, Verdict]]:
    """One optimize.torch compression per recipe; consecutive prune steps are one."""
    out: list[tuple[int, Verdict]] = []
    torch_steps = [i for i, r in enumerate(route) if r == TORCH]
    if len(torch_steps) > 1:
        together = set(prune_run(steps, torch_steps[0])) or {torch_steps[0]}
        for i in torch_steps[1:]:
            if i not in together:
                out.append((i, unsupported(
                    "this adapter runs one training-time (optimize.torch) compression per "
                    "recipe (consecutive prune steps count as one)")))
    return out


def _check_order(i: int, steps: list[Step], route: list[str]) -> list[tuple[int, Verdict]]:
    """What may not follow a post-training (optimize.coreml) or a qat step."""
    r, step = route[i], steps[i]
    if r == TRAIN and step.kind == "finetune":
        if COREML in route[:i]:
            return [(i, unsupported(
                "after a post-training optimize.coreml step the weights live in the "
                "mlpackage and cannot be trained; put the finetune right after a prune or "
                "cluster step (then optimize.torch trains)"))]
        return []
    out: list[tuple[int, Verdict]] = []
    if r == TORCH and COREML in route[:i]:
        out.append((i, unsupported(
            "a training-time (optimize.torch) step cannot follow a post-training "
            "optimize.coreml step")))
    if r == COREML and any(
        isinstance(steps[j], QuantizeStep) and route[j] == TORCH for j in range(i)
    ):
        out.append((i, unsupported(
            "a LinearQuantizer (qat) model is exported as fake-quant; no optimize.coreml "
            "step after it")))
    return out


def _check_joint(i: int, kind: str | None, seen: dict[str, int]) -> list[tuple[int, Verdict]]:
    """coremltools' joint compression order (prune → palettize → quantize, each kind once);
    records this post-training step's kind in ``seen``."""
    out: list[tuple[int, Verdict]] = []
    if kind is not None and kind in seen:
        out.append((i, unsupported(
            f"two post-training {kind} steps in one recipe: coremltools compresses a "
            "weight once per kind")))
    if kind == "cluster" and "linear" in seen:
        out.append((i, unsupported(
            "coremltools cannot palettize weights that are already linearly quantized "
            "(joint compression goes prune → palettize → quantize)")))
    if kind == "prune" and ({"linear", "cluster"} & set(seen)):
        out.append((i, unsupported(
            "coremltools joint compression prunes first: put prune before "
            "palettize / quantize")))
    if kind == "linear" and "cluster" in seen:
        out.append((i, approximated(
            "joint compression: linear quantization applies to the palettization LUT "
            "entries (constexpr_blockwise_shift_scale on the LUT), not to the weights")))
    if kind is not None:
        seen[kind] = i
    return out


def _check_quantize(i: int, step: QuantizeStep, route: str) -> list[tuple[int, Verdict]]:
    out: list[tuple[int, Verdict]] = []
    if route == TORCH:
        if step.weights not in (8, 4):
            out.append((i, unsupported(
                "LinearQuantizer (qat) quantizes weights to 8 or 4 bits only")))
        if step.activations not in (8, None):
            out.append((i, unsupported("LinearQuantizer quantizes activations to 8 bits only")))
        if step.granularity == "per_block":
            out.append((i, unsupported(
                "LinearQuantizer quantizes per tensor or per channel, not per block")))
        return out
    if step.activations == 8:
        if step.method == "dynamic":
            out.append((i, approximated(
                "weights only: Core ML has no dynamic (run-time) activation quantization")))
        else:
            out.append((i, approximated(MACOS_ACTIVATIONS)))
    if step.weights in (2, 1) and step.granularity == "per_block":
        out.append((i, unsupported(
            "2/1-bit weights are done as uniform palettization, which has no per-block "
            "granularity (only per tensor or per grouped channel)")))
    return out


def _check_cluster(i: int, step: ClusterStep, route: str) -> list[tuple[int, Verdict]]:
    k = step.n_clusters
    bits = storage_bits(k)
    if bits is None:
        return [(i, unsupported(
            f"{k} clusters: a Core ML LUT has at most 256 entries (8-bit indices)"))]
    if route == TORCH:
        if k != 1 << bits:
            return [(i, unsupported(
                f"DKMPalettizer (training-time) uses 2^n_bits clusters with n_bits in "
                f"{PALETTE_BITS}; {k} clusters is not one of them"))]
        if step.init == "linear":
            return [(i, unsupported("DKMPalettizer initialises centroids by k-means++ only"))]
        return []
    if k != 1 << bits:
        return [(i, approximated(
            f"{k}-entry LUT stored with {bits}-bit indices (Core ML index widths are "
            f"{', '.join(map(str, PALETTE_BITS))} bits): size is that of {bits} bits"))]
    return []


class CoremlAdapter(Adapter):
    """coremltools 9: optimize.coreml (post-training) and optimize.torch (training-time)."""

    capabilities = CAPABILITIES

    def check_recipe(self, steps: list[Step]) -> list[tuple[int, Verdict]]:
        return check_steps(steps)

    def _compress(self, ctx: JobContext, plan: Plan) -> Artifacts:
        from adapters.coreml import _impl

        return _impl.compress(ctx, routes(ctx.recipe.steps))


ADAPTER = CoremlAdapter()
