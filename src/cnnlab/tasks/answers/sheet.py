"""answers.md from the invocation's results: formatting only, no arithmetic of its own.

Every number printed here is a value of the results dict (or a value scaled for display: x100 for a percentage,
/1e6 for MB or millions, /1e9 for GB or billions, /60 for minutes), so that `untraced_numbers` can check the sheet
against the JSON that the same invocation wrote. Numbers inside `code spans`, fenced blocks and link targets
(commands, layer specs, file names) are not evidence and are not checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from cnnlab.tasks.answers.measure import MEASURED_HERE

QUESTIONS = {
    1: "What are the advantages of a CNN over a fully connected network for image classification?",
    2: 'A CNN has three convolutional layers with 3x3 kernels, stride 2 and "same" padding, producing 100, 200 and '
    "400 feature maps from 200x300 RGB images. How many parameters does it have, and how much RAM does it need to "
    "predict one image and to train on a mini-batch of 50 images (32-bit floats)?",
    3: "If your GPU runs out of memory while training a CNN, what are five things you could try to solve the problem?",
    4: "Why add a max pooling layer rather than a convolutional layer with the same stride?",
    5: "When would you add a local response normalisation (LRN) layer?",
    6: "What are the main innovations in AlexNet, as compared to LeNet-5? What about the main innovations in "
    "GoogLeNet, ResNet, SENet, Xception and EfficientNet?",
    7: "What is a fully convolutional network, and how do you turn a dense layer into a convolutional one?",
    8: "What is the main technical difficulty of semantic segmentation?",
    9: "Build a CNN from scratch and reach the highest accuracy you can on MNIST.",
    10: "Use transfer learning for large image classification: your own images, a pretrained model, a new head.",
}
TITLES = {
    1: "CNN vs fully connected",
    2: "Parameters and RAM of a three-layer CNN",
    3: "Out of GPU memory: the remedies",
    4: "Max pooling vs strided convolution",
    5: "Local response normalisation",
    6: "The innovations of the classic architectures",
    7: "Fully convolutional networks",
    8: "Why semantic segmentation is hard",
    9: "MNIST from scratch",
    10: "Transfer learning",
}


# ---------------------------------------------------------------------------------------------- formatting
def n(value: float | int) -> str:
    """An integer with thousands separators."""
    return f"{round(value):,}"


def pct(value: float, digits: int = 2) -> str:
    """A fraction as a percentage."""
    return f"{value * 100:.{digits}f}%"


def mb(value: float) -> str:
    """Bytes as MB (10^6 bytes)."""
    return f"{value / 1e6:,.1f} MB"


def gb(value: float) -> str:
    """Bytes as GB (10^9 bytes)."""
    return f"{value / 1e9:.2f} GB"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _experiment_command(name: str, e: dict[str, Any]) -> str:
    """The Reproduce line of an experiment's answer (a run read from --runs before results.json recorded its
    settings: the command its report.md names)."""
    if e["settings"] is None:
        return f"Reproduce: the command in `{e['folder']}/report.md`"
    return f"Reproduce: `cnnlab experiment {name} {_settings(e['settings'])}`"


def _settings(settings: dict[str, Any]) -> str:
    flags = []
    for key, value in settings.items():
        if value is not None:
            flags.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(flags)


# ---------------------------------------------------------------------------------------------- sections
def _experiment_table(rows: list[dict[str, Any]], extra: tuple[str, str, Callable[[Any], str]] | None = None) -> str:
    header = ["condition", "parameters", "MACs / image", "test accuracy", "ms / step"]
    if extra:
        header.insert(4, extra[0])
    body = []
    for row in rows:
        accuracy = pct(row["test_accuracy_mean"])
        if row["seeds"] > 1:
            accuracy += f" ± {row['test_accuracy_std'] * 100:.2f}"
        cells = [row["condition"], n(row["params"]), n(row["macs"]), accuracy, f"{row['ms_per_step']:.2f}"]
        if extra:
            cell = extra[2](row[extra[1]])
            if row["seeds"] > 1 and f"{extra[1]}_std" in row:
                cell += f" ± {row[f'{extra[1]}_std'] * 100:.2f}"
            cells.insert(4, cell)
        body.append(cells)
    return table(header, body)


def _experiment_source(name: str, evidence: dict[str, Any]) -> str:
    return (
        f"Evidence: experiment {name}, {evidence['source']} (`{evidence['folder']}/report.md`; mean ± std over seeds; "
        "differences are claimed only under the noise rule of docs/EXPERIMENTS.md)."
    )


def _experiment_blocks(name: str, e: dict[str, Any], extra: tuple[str, str, Callable[[Any], str]]) -> Iterator[str]:
    """Source, table (with one more column), conclusion and command of an experiment's answer."""
    yield _experiment_source(name, e)
    yield _experiment_table(e["rows"], extra)
    yield f"Conclusion of the experiment: {e['conclusion']}"
    yield _experiment_command(name, e)


# What the figures the sheet links to show (their alt text was the file name, and no caption said it).
_FIGURE_CAPTIONS = {
    "robustness_shift.png": "Test accuracy of the CNN and of the dense net against how far the test digits are "
    "shifted, in pixels (mean over right, left, down and up, and over seeds)",
    "sample_efficiency.png": "Test accuracy of the CNN and of the dense net against the number of training images "
    "(mean over seeds)",
    "fcn_scan.png": "The converted network scanned over a canvas of MNIST test digits larger than its input, its "
    "outputs shifted and stitched so that windows lie closer than its stride: first panel, the most likely class of "
    "each window where its probability is at least one half; the others, each class's probability per window",
}


def verdict(v: dict[str, Any]) -> str:
    """One comparison as the noise rule judged it (`measure.noise_verdict`): a difference is stated only where the
    rule calls it measurable; an overlap is said to be within the noise, with the seeds it was judged on."""
    pair = f"{v['a']} vs {v['b']}, {v['quantity']}"
    gap = f"{v['gap'] * 100:.2f} points"
    seeds = f"{v['seeds']} seed{'s' if v['seeds'] != 1 else ''}"
    if not v["estimable"]:
        return f"{pair}: {gap} apart, no difference claimed from {seeds}"
    if not v["measurable"]:
        return f"{pair}: within noise on {seeds} ({gap} apart, noise {v['noise'] * 100:.2f})"
    higher = v["a"] if v["difference"] > 0 else v["b"]
    return f"{pair}: {higher} higher by {gap} (noise {v['noise'] * 100:.2f}, {seeds})"


def _verdicts(e: dict[str, Any]) -> str:
    return "; ".join(verdict(v) for v in e["verdicts"])


def section_1(e: dict[str, Any]) -> Iterator[str]:
    cnn, dense = e["rows"][0], e["rows"][1]
    layer = e["dense_equivalent"]
    # the figure compares networks of the same parameter count: it tests the prior, not the count
    figure = (
        " The sample-efficiency figure below compares the CNN with a dense net of the same parameter count as the "
        "training set grows: what it tests is that prior, not the count."
        if any(plot.endswith("sample_efficiency.png") for plot in e["plots"])
        else ""
    )
    yield (
        f"**Short answer.** A convolutional layer connects each unit to a small window only and shares its weights "
        f"across all positions, so it needs far fewer parameters: the first layer of exercise 2 has "
        f"{n(layer['conv_params'])}; a dense layer with the same input and output sizes would need "
        f"{n(layer['dense_params'])}. Fewer parameters leave less to learn from the same images. A feature learned in "
        "one place is detected anywhere in the image, and stacked layers build larger features out of small local "
        f"ones, the prior that nearby pixels belong together.{figure} Made fully convolutional (exercise 7), a CNN "
        "also takes any image size. Measured here at equal parameter "
        f"count ({n(cnn['params'])} vs {n(dense['params'])}): the CNN reaches {pct(cnn['test_accuracy_mean'])} test "
        f"accuracy, the dense net {pct(dense['test_accuracy_mean'])}; shifted by {e['shifts'][-1]} pixels, the CNN "
        f"keeps {pct(e['shift_rows'][0]['accuracy'][-1])} and the dense net {pct(e['shift_rows'][1]['accuracy'][-1])}. "
        f"Under the noise rule: {_verdicts(e)}."
    )
    yield _experiment_source("cnn-vs-dense", e)
    yield _experiment_table(e["rows"])
    yield table(
        ["shift (pixels)", *(row["condition"] for row in e["shift_rows"])],
        [[shift, *(pct(row["accuracy"][i]) for row in e["shift_rows"])] for i, shift in enumerate(e["shifts"])],
    )
    yield f"Conclusion of the experiment: {e['conclusion']}"
    for plot in e["plots"]:
        caption = _FIGURE_CAPTIONS.get(plot.rsplit("/", 1)[-1], "")
        yield f"![{caption}]({plot})\n\n_{caption}._" if caption else f"![figure]({plot})"
    yield _experiment_command("cnn-vs-dense", e)


def section_2(e: dict[str, Any]) -> Iterator[str]:
    training, inference = e["training_textbook"], e["inference"]
    yield (
        f"**Short answer.** {n(e['params'])} parameters: {n(e['weights'])} weights and {n(e['biases'])} biases. "
        f"Predicting one image needs about {mb(inference['total_bytes'])} (the {mb(inference['params_bytes'])} of "
        f"parameters plus the largest two consecutive layers' outputs, {mb(inference['working_set_bytes'])}). "
        f"Training on a batch of {e['batch']} keeps every layer's output for backpropagation: counted as the book "
        f"counts (layer outputs, input batch and parameters) {mb(e['training_book_bytes'])}; the gradients and Adam's "
        f"state it leaves out bring that to {mb(training['total_bytes'])}, and PyTorch's real peak, traced and then "
        f"measured in one training step, is {mb(e['training_measured_peak_bytes'])}."
    )
    rows = [
        [row["layer"], row["in_channels"], f"{row['out_height']} x {row['out_width']} x {row['maps']}",
         f"{row['kernel']}·{row['kernel']}·{row['in_channels']}·{row['maps']} = {n(row['weights'])}",
         n(row["biases"]), n(row["params"])]
        for row in e["layers"]
    ]  # fmt: skip
    rows.append(["total", "", "", n(e["weights"]), n(e["biases"]), f"**{n(e['params'])}**"])
    yield table(["layer", "input maps", "output (h x w x maps)", "weights", "biases", "parameters"], rows)
    yield table(
        ["memory, training on a batch", "size", "what it holds"],
        [
            ["layer outputs", mb(training["activations_bytes"]), "every layer's output, kept for the backward pass"],
            ["input batch", mb(training["inputs_bytes"]), f"{e['batch']} images"],
            ["parameters", mb(training["params_bytes"]), f"{n(e['params'])} x {e['bytes_per_float']} bytes"],
            ["**textbook total**", f"**{mb(e['training_book_bytes'])}**", "the three above, as the book adds them up"],
            ["gradients", mb(training["grads_bytes"]), "one per parameter"],
            ["Adam state", mb(training["optimizer_bytes"]), "two moments per parameter"],
            ["with gradients and Adam state", mb(training["total_bytes"]), "the textbook total plus the two above"],
            ["traced peak (PyTorch)", mb(e["training_realistic_peak_bytes"]),
             "what autograd really saves, plus gradients being formed during the backward pass"],
            ["measured peak", mb(e["training_measured_peak_bytes"]),
             f"one real training step (measured / traced = {e['measured_over_estimate']:.4f})"],
        ],
    )  # fmt: skip
    slips = e["slips"]
    second = e["second_layer"]
    yield (
        "**Where answers go wrong.** The published answer sets give these totals (quoted). The first two slips, "
        "applied to the layer spec, reproduce the claim exactly; the third cannot be rebuilt, and its wrong terms are "
        "checked one by one:\n\n"
        f"- {n(slips['times_ten']['claim'])}: {slips['times_ten']['slip']}. Ten times the weights is "
        f"{n(slips['times_ten']['reproduced'])}, the claim exactly.\n"
        f"- {n(slips['reversed']['claim'])}: {slips['reversed']['slip']}. Counted that way: "
        + " + ".join(n(row["params"]) for row in e["reversed_layers"])
        + f" = {n(slips['reversed']['reproduced'])}, the claim exactly.\n"
        f"- {n(slips['dense_and_misadd']['claim'])}: {slips['dense_and_misadd']['slip']}. The check: "
        f"({second['kernel']}·{second['kernel']}·{second['in_channels']})·{second['maps']} = "
        f"{n(second['weights'])}, not "
        f"{n(second['written_as'])}; the question has no dense layer, and the biases add {n(e['biases'])}.\n"
        f"- RAM answers that count parameters only ({mb(e['params_only_bytes'])}) miss "
        f"{pct(e['params_only_missed_share'], 1)} of what one training step of batch {e['batch']} really "
        "holds: the layer outputs kept for backpropagation dominate."
    )
    yield "Step by step, as `cnnlab budget --explain` prints it:\n\n```\n" + e["explained"].strip() + "\n```"
    spec = " ".join(f'"{line}"' for line in e["spec"])
    size = "x".join(str(v) for v in e["input"])
    yield f"Reproduce: `cnnlab budget --input {size} --batch {e['batch']} --measure --explain {spec}`"


_REMEDY_COST = {
    "as configured": "nothing: the batch you can afford without changes",
    "bf16 mixed precision": "needs bf16 hardware support; a little accuracy risk on some models",
    "gradient checkpointing": "about one more forward pass of compute per step",
    "SGD (no optimizer state)": "Adam's two moment copies dropped; SGD may need more tuning",
    "all three": "the costs of all three",
}


def section_3(e: dict[str, Any]) -> Iterator[str]:
    best = max(e["remedies"], key=lambda remedy: remedy["max_batch"])
    configured = e["remedies"][0]
    yield (
        f"**Short answer.** Reduce the mini-batch size (and accumulate gradients to keep the effective batch), use "
        "16-bit floats (bf16 mixed precision), trade compute for memory with gradient checkpointing, drop optimizer "
        "state (SGD instead of Adam), reduce the model (fewer or smaller layers, a larger stride early on, a smaller "
        f"input) or spread it over several GPUs. For {e['model']} at {'x'.join(map(str, e['input']))} on "
        f"{e['memory']} ({gb(e['memory_bytes'])}), the planner finds a largest batch of {configured['max_batch']} as "
        f"configured (fp32, Adam) and {best['max_batch']} with {best['remedy']} ({best['vs_configured']:.2f}x)."
    )
    rows = [
        [r["remedy"], r["max_batch"], f"{r['vs_configured']:.2f}x", mb(r["fixed_bytes"]), mb(r["per_sample_bytes"]),
         r["accumulation_steps_for_batch"], _REMEDY_COST.get(r["remedy"], "")]
        for r in e["remedies"]
    ]  # fmt: skip
    yield table(
        ["remedy", "largest batch", "vs as configured", "fixed", "per sample",
         f"accumulation steps for batch {e['batch']}", "what it costs"],
        rows,
    )  # fmt: skip
    yield (
        f"Training at batch {e['batch']} as configured peaks at {gb(e['training_peak_bytes'])} "
        f"({'fits' if e['fits'] else 'does not fit'} in {e['memory']}, {gb(e['memory_bytes'])}). The peak is a fixed "
        "part (weights, optimizer state, and the gradients formed by the time of the peak: not all of them, as it "
        "comes during the backward pass) plus a part per sample (saved activations), so the largest batch follows "
        "from one line per remedy."
    )
    yield f"Reproduce: `cnnlab budget {e['model']} --batch {e['batch']} --memory {e['memory']}`"


def section_4(e: dict[str, Any]) -> Iterator[str]:
    rows = {row["condition"]: row for row in e["rows"]}
    pool = rows.get("max-pool", e["rows"][0])
    yield (
        "**Short answer.** A max pooling layer has no parameters and costs few operations, and it keeps the strongest "
        "activation of each window, which is the usual argument for some invariance to small shifts. A strided "
        "convolution learns how to downsample, at the price of parameters and compute. Measured here: the pooled "
        f"network has {n(pool['params'])} parameters in all. Under the noise rule (mean over seeds; a difference is "
        f"claimed only when larger than the noise): {_verdicts(e)}."
    )
    yield from _experiment_blocks("pool-vs-stride", e, ("1-px shifted accuracy", "shifted_accuracy_mean", pct))


def section_5(e: dict[str, Any]) -> Iterator[str]:
    yield (
        "**Short answer.** LRN makes the most strongly activated neurons inhibit neurons at the same position in "
        "neighbouring feature maps, encouraging maps to specialise. You would add it in the lower layers, after the "
        "ReLU, so that the upper layers build on a wider range of low-level features: AlexNet put it after its first "
        "two convolutions. Later networks dropped it for batch normalisation. Measured here on one small network "
        "with no normalisation, LRN or batch norm (a difference is claimed only when larger than the noise): "
        f"{_verdicts(e)}."
    )
    yield from _experiment_blocks("lrn-vs-bn", e, ("val accuracy after epoch 1", "val_after_epoch_1", pct))


def _published_cell(row: dict[str, Any]) -> str:
    if row.get("params_note"):  # LeNet-5: cnnlab's count of its own variant, which no publication gives
        return "none (see below)"
    return n(row["published_params"]) if row["published_params"] else "-"


def section_6(e: dict[str, Any]) -> Iterator[str]:
    verdict = "every count equals" if e["all_match"] else "not every count equals"
    noted = [row for row in e["rows"] if row.get("params_note")]
    have = "have" if len(noted) > 1 else "has"
    exception = f"; {', '.join(row['model'] for row in noted)} {have} none, see below the table" if noted else ""
    yield (
        f"**Short answer.** Each architecture's named block, below, with its parameters counted now from cnnlab's "
        f"implementation ({verdict} the reference implementation's{exception}) and its multiply-accumulates per image."
    )
    yield table(
        ["model", "parameters (counted)", "reference implementation", "MMACs / image", "innovation",
         "where in cnnlab"],
        [
            [f"{r['model']} ({'x'.join(map(str, r['input']))})", n(r["params"]), _published_cell(r),
             f"{r['macs'] / 1e6:,.1f}", r["innovation"], f"`{r['innovation_code']}`"]
            for r in e["rows"]
        ],
    )  # fmt: skip
    for row in noted:
        yield f"{row['model']}: {n(row['params'])} parameters, {row['params_note']}."
    layouts = e["alexnet_layouts"]
    yield from _alexnet_layouts(layouts)
    size = "x".join(map(str, layouts["two_tower_input"]))
    yield (
        "Reproduce: `cnnlab zoo`, then `cnnlab zoo show NAME` for the stages of one model. The paper's AlexNet as "
        f'layer strings: `cnnlab budget --input {size} "{layouts["two_tower_spec"]}"`.'
    )


def _alexnet_layouts(layouts: dict[str, Any]) -> Iterator[str]:
    """Which AlexNet the table counted: the two layouts, the paper's built from its layer sizes, its quoted figure."""
    quote = layouts["paper_quote"]
    same = (
        "the zoo's `alexnet_2012` has the same count"
        if layouts["spec_matches_zoo"]
        else f"the zoo's `alexnet_2012` has {n(layouts['two_tower_params'])}"
    )
    yield (
        f"**Which AlexNet.** `alexnet` is {layouts['one_tower']}: {n(layouts['one_tower_params'])} parameters. The "
        f"2012 paper's network is {layouts['two_tower']}. Built now from the paper's layer sizes as layer strings, it "
        f"has {n(layouts['two_tower_spec_params'])} parameters ({same}); the same layers without the groups would "
        f"have {n(layouts['ungrouped_params'])}, so the two towers save {n(layouts['saved_by_towers'])}. The paper "
        f'itself says "{quote["claim"]}" (quoted: {quote["source"]}).'
    )


def section_7(e: dict[str, Any]) -> Iterator[str]:
    yield (
        "**Short answer.** A fully convolutional network has no dense layers, so it accepts any input size and "
        "outputs a map of predictions, one per window. A dense layer on a h x w x c input becomes a convolution with "
        'an h x w kernel, c input channels, one filter per unit and "valid" padding, holding the same weights; '
        "later dense layers become 1 x 1 convolutions. Measured on the MNIST CNN of exercise 9: dense layers "
        f"converted: {e['dense_layers_converted']}; parameters {n(e['params_before'])} before and "
        f"{n(e['params_after'])} after; largest "
        f"difference of the logits on {n(e['images'])} test digits {e['max_abs_difference']:.2e} (logits up to "
        f"{e['max_abs_logit']:.1f}), the same class for {pct(e['same_prediction_share'])} of them. On a "
        f"{e['double_input'][0]} x {e['double_input'][1]} input it outputs a {e['double_input_grid'][0]} x "
        f"{e['double_input_grid'][1]} grid of predictions: one per {e['window']}-pixel window, every {e['stride']} "
        "pixels, in one pass"
        + (
            f" (the last row and column of windows reach {e['window_overhang']} pixels past the edge)."
            if e.get("window_overhang")
            else "."
        )
    )
    caption = _FIGURE_CAPTIONS["fcn_scan.png"]
    yield f"![{caption}]({e['heatmap']})\n\n_{caption}._"
    yield f"Evidence: the MNIST run `{e['folder']}`, {e['source']}."
    yield f"Reproduce: `cnnlab fcn convert {e['run_dir']}`, then `cnnlab fcn scan {e['run_dir']} IMAGE`"


def _boundary_f1(value: float | None) -> str:
    """A boundary F1 at three places, or "-" where it was not measurable (None: no class boundary to score, as
    `cnnlab.report.segmentation.boundary_f1_text` prints it)."""
    return "-" if value is None else f"{value:.3f}"


def section_8(e: dict[str, Any]) -> Iterator[str]:
    ceilings = e["ceilings"]
    coarse, fine = ceilings[0], ceilings[-1]
    yield (
        "**Short answer.** Each prediction must be made per pixel, but the strides and pooling that give a CNN its "
        "receptive field and its economy also throw spatial resolution away. A network that predicts at output "
        f"stride {coarse['stride']} sees a {coarse['grid'][0]} x {coarse['grid'][1]} grid on a "
        f"{e['canvas_size'][0]} x {e['canvas_size'][1]} canvas: even with perfect coarse scores, bilinear upsampling "
        f"reaches a digit mIoU of {coarse['miou']:.3f} and a boundary F1 of {_boundary_f1(coarse['boundary_f1'])}, "
        f"against {fine['miou']:.3f} and {_boundary_f1(fine['boundary_f1'])} at full resolution. Skip connections "
        "(FCN-16s, FCN-8s) and U-Net's decoder bring the resolution back."
    )
    yield (
        f"Ceilings on {n(e['canvases'])} test canvases of MNIST digits (the true class shares of each cell, upsampled "
        f"bilinearly; boundary F1 with a {e['tolerance_px']}-pixel tolerance):"
    )
    yield table(
        ["model", "output stride", "score grid", "best digit mIoU", "best pixel accuracy", "best boundary F1"],
        [
            [c["model"], c["stride"], f"{c['grid'][0]} x {c['grid'][1]}", f"{c['miou']:.3f}",
             pct(c["pixel_accuracy"]), _boundary_f1(c["boundary_f1"])]
            for c in ceilings
        ],
    )  # fmt: skip
    if e["trained"]:
        yield "Trained models on the same kind of canvases (test split, read from their run folders):"
        yield table(
            ["run", "architecture", "parameters", "test digit mIoU", "test boundary F1"],
            [[f"`{t['folder']}`", t["arch"], n(t["params"]) if t["params"] else "-", f"{t['miou']:.3f}",
              _boundary_f1(t["boundary_f1"])] for t in e["trained"]],
        )  # fmt: skip
    else:
        yield (
            "No trained segmentation run was given; pass `--runs DIR` with runs of `cnnlab train segment --recipe "
            "fcn32s|fcn8s|unet`, or use `--full`."
        )
    if any(row["boundary_f1"] is None for row in [*ceilings, *e["trained"]]):
        yield "A boundary F1 of - was not measurable: no class boundary among the labelled mask pixels, none predicted."
    yield "Reproduce: `cnnlab train segment --recipe fcn32s`, `--recipe fcn8s`, `--recipe unet`"


def section_9(e: dict[str, Any]) -> Iterator[str]:
    sets = e["answer_sets"]
    if e["above_answer_sets"]:
        verdict = (
            f"above the published answer sets' {pct(sets['low'], 1)}-{pct(sets['high'], 1)} (quoted): "
            f"{n(e['test_errors'])} "
            f"errors on {n(e['test_images'])} test digits where {pct(sets['high'], 1)} means "
            f"{n(e['errors_at_answer_sets_high'])}"
        )
    else:
        verdict = f"not above the published answer sets' {pct(sets['low'], 1)}-{pct(sets['high'], 1)} (quoted)"
    # a run read from --runs or by an earlier invocation may have been trained elsewhere: its report.md names where
    where = "on this machine" if e["source"] == MEASURED_HERE else "on the machine its report.md names"
    seconds = f", trained in {e['train_seconds']:.0f} s {where}" if e.get("train_seconds") else ""
    yield (
        f"**Short answer.** Recipe `{e['recipe']}` ({e['recipe_summary']}) reaches {pct(e['test_accuracy'])} test "
        f"accuracy{seconds}: {verdict}. The test set was read once, after training; the validation split chose "
        "everything else."
    )
    yield f"Evidence: `{e['folder']}/report.md`, {e['source']}."
    yield f"Reproduce: `cnnlab train mnist --recipe {e['recipe']}`"


def section_10(e: dict[str, Any]) -> Iterator[str]:
    record = e["record"]
    wrong = e["pipelines"][1:]
    yield (
        "**Short answer.** Load a pretrained model, replace its classifier with one for your classes, train the new "
        "head (then, optionally, the top blocks) with the lower layers frozen, and preprocess every image exactly "
        f"as the weights were trained. The one answer that reached {pct(e['mismatched_answer_accuracy'], 0)} "
        f"(quoted) got the last step wrong. {e['model']} expects inputs normalised with mean "
        f"{record['mean'][0]:.3f} and std {record['std'][0]:.3f}; with other preprocessing the same model on the same "
        "photos says: "
        + "; ".join(
            f"{row['preprocessing']}: {row['agrees_with_record']} of {len(e['photos'])} top-1 classes unchanged"
            for row in wrong
        )
        + "."
    )
    yield table(
        ["photo", *(row["preprocessing"] for row in e["pipelines"])],
        [
            [name, *(f"{row['predictions'][i]['label']} ({pct(row['predictions'][i]['probability'], 1)})"
                     for row in e["pipelines"])]
            for i, name in enumerate(e["photos"])
        ],
    )  # fmt: skip
    if e["transfer_runs"]:
        yield "Transfer runs on real data (test split, evaluated once; read from their run folders):"
        yield table(
            ["run", "data", "recipe", "test images", "accuracy", "balanced accuracy", "without view averaging",
             "defective vs not", "wall time (all sessions)"],
            [[f"`{r['folder']}`", r["data"], r["recipe"], r["test_images"], pct(r["accuracy"], 1),
              pct(r["balanced_accuracy"], 1) if r["balanced_accuracy"] is not None else "-",
              pct(r["single_view_accuracy"], 1) if r["single_view_accuracy"] is not None else "-",
              pct(r["binary_accuracy"], 1) if r["binary_accuracy"] is not None else "-",
              f"{r['total_wall_minutes']:.1f} min" if r["total_wall_minutes"] is not None else "unknown"]
             for r in e["transfer_runs"]],
        )  # fmt: skip
    else:
        install = "" if e["elpv_available"] else "`pip install elpv-dataset` (solar-cell images that work offline), "
        yield (
            f"No transfer run was measured for this answer: {install}rerun with `--full`, or pass `--runs DIR` holding "
            "`cnnlab train transfer` runs."
        )
    yield (
        "Reproduce: `cnnlab predict --model efficientnet_lite0 PHOTO.jpg`; `cnnlab train transfer --data elpv` "
        "(or `--data YOUR_FOLDER`)"
    )


SECTIONS: dict[int, Callable[[dict[str, Any]], Iterator[str]]] = {
    1: section_1, 2: section_2, 3: section_3, 4: section_4, 5: section_5,
    6: section_6, 7: section_7, 8: section_8, 9: section_9, 10: section_10,
}  # fmt: skip


def render(results: dict[str, Any]) -> str:
    """The whole sheet from the results dict that `cnnlab.tasks.answers.run_answers` writes as answers.json."""
    meta = results["meta"]
    lines = [
        f"# Answers to the CNN exercises (Géron, Hands-On ML, chapter {meta['chapter']}), measured",
        "",
        f"Written by `{meta['command']}` on {meta['date']} ({meta['hardware']}), mode `{meta['mode']}`, in "
        f"{meta['minutes']:.1f} min. Every number below was computed by the invocation named under its answer (this "
        "one, unless the answer says it was read back from an earlier, interrupted one into the same folder) or read "
        "from a run folder it names; answers.json holds them all. Figures quoted from published answer sets or papers "
        "are marked as quoted. MB and GB are decimal units (a million and a billion bytes); a memory limit is shown "
        "as typed (GiB: binary), beside its size in GB.",
        "",
    ]
    if meta["mode"] == "quick":
        lines += [
            "> Quick measurements: small subsets and short trainings, so that the sheet is written in minutes. The "
            "experiments' differences are judged under the noise rule; `cnnlab answers --full` measures them at full "
            "size.",
            "",
        ]
    for key in sorted(results["exercises"], key=int):
        number = int(key)
        evidence = results["exercises"][key]
        lines += [f"## Exercise {number}. {TITLES[number]}", "", f"**Question.** {QUESTIONS[number]}", ""]
        if "error" in evidence:
            lines += [f"Not measured in this invocation: {evidence['error']}", ""]
            continue
        for block in SECTIONS[number](_as_read_back(evidence) if evidence.get("read_back") else evidence):
            lines += [block, ""]
        by = evidence.get("measured_by", {})
        when = f" by `{by['command']}` on {by['date']}" if by else ""
        again = " (read back by this invocation: it had been measured into the same folder earlier)"
        lines += [f"_Measured in {evidence['seconds']:.0f} s{when}{again if evidence.get('read_back') else ''}._", ""]
    return "\n".join(lines)


def unrenderable(number: int, evidence: dict[str, Any]) -> str:
    """Why this version cannot render exercise `number` from `evidence` ("" when it can): evidence an earlier cnnlab
    wrote lacks what a later answer prints (exercise 2's training_book_bytes), and reading it back stopped the whole
    sheet with a KeyError after every other exercise had been measured."""
    if not isinstance(evidence.get("seconds"), int | float):  # render's footer prints it
        return "no seconds"
    try:
        for _ in SECTIONS[number](evidence):
            pass
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        return f"{type(error).__name__}: {error}"
    return ""


def _as_read_back(evidence: dict[str, Any]) -> dict[str, Any]:
    """Evidence this invocation read back from answers.json, its source told as such: a continued sheet said
    "measured in this invocation" of numbers an earlier invocation (the one named under the answer) had measured."""
    source = evidence.get("source")
    if not isinstance(source, str) or "in this invocation" not in source:
        return evidence
    return {**evidence, "source": source.replace("in this invocation", "by the earlier invocation named below")}


# ---------------------------------------------------------------------------------------------- tracing
_CODE = re.compile(r"```.*?```|`[^`]*`|\]\([^)]*\)", re.DOTALL)
# "exercise 9" names an exercise of the chapter, it measures nothing: exercise 7's answer refers to exercise 9's MNIST
# CNN, and a sheet without exercise 9 (`answers -e 7`) was refused as printing an untraced 9
_EXERCISE_NAME = re.compile(r"\b[Ee]xercise \d+\b")
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:e([+-]\d+))?(?:x(?![\w-])|(?![\w-]))")
_SCALES = (1.0, 100.0, 1e-6, 1e-9, 1 / 60, 1e3)


def _json_numbers(value: Any, found: list[float], texts: set[str]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        found.append(float(value))
    elif isinstance(value, str):
        texts.update(match.group(0) for match in _NUMBER.finditer(value))
    elif isinstance(value, dict):
        for key, item in value.items():
            _json_numbers(key, found, texts)
            _json_numbers(item, found, texts)
    elif isinstance(value, list | tuple):
        for item in value:
            _json_numbers(item, found, texts)


def untraced_numbers(markdown: str, results: dict[str, Any]) -> list[str]:
    """Numbers of `markdown` (outside code, link targets and exercise names) that no value of `results` accounts for.

    A number is accounted for when it appears verbatim in a string of `results`, or equals a numeric value of
    `results`, scaled by one of the display scales, rounded to the decimals shown.
    """
    values: list[float] = []
    texts: set[str] = set()
    _json_numbers(json.loads(json.dumps(results, default=str)), values, texts)
    candidates = sorted({v * scale for v in values for scale in _SCALES})
    prose = _EXERCISE_NAME.sub(" ", _CODE.sub(" ", markdown))
    missing = []
    for match in _NUMBER.finditer(prose):
        text = match.group(0)
        if text in texts:
            continue
        integer, fraction, exponent = match.group(1), match.group(2) or "", match.group(3)
        shown = float(integer.replace(",", "") + fraction + (f"e{exponent}" if exponent else ""))
        digits = len(fraction) - 1 if fraction else 0
        tolerance = 0.5 * 10.0**-digits * (10.0 ** int(exponent) if exponent else 1.0) + 1e-9
        if not any(abs(candidate - shown) <= tolerance for candidate in _nearby(candidates, shown, tolerance)):
            missing.append(text)
    return missing


def _nearby(candidates: list[float], value: float, tolerance: float) -> list[float]:
    import bisect

    low = bisect.bisect_left(candidates, value - tolerance)
    high = bisect.bisect_right(candidates, value + tolerance)
    return candidates[low:high]
