"""The Gradio app of ``cnnlab lab``: it only wires the page functions of `cnnlab.lab` to components.

Safe by default: it listens on 127.0.0.1 unless told otherwise; runs are picked from a list of the runs found under
the runs root (a run id that is not listed is refused), never typed as paths; uploads are limited in size; an error
in a page (a bad image, a wrong layer spec) is shown in the page and the server keeps running.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

__all__ = ["build_app", "check_address", "check_runs_root", "reachable_from_others", "serve"]

_DTYPES = ["float32", "float16", "bfloat16"]
_OPTIMIZERS = ["adam", "adamw", "momentum", "sgd"]
_CLASSIFY_TASKS = ("mnist", "transfer")
_SCAN_TASKS = ("mnist",)  # classifier runs the Scan page converts to fully convolutional networks
# A class name is a folder's name: one long word ("red_squares_..._width") stretched the top classes into one line
# scrolled sideways, the best class's name cut and its percentage out of sight. Names wrap anywhere instead.
_CSS = "#classify-top h2, #classify-top dt, #scan-shares h2, #scan-shares dt { overflow-wrap: anywhere; }"
# The drawing panel's words: what to do, and what each kind of model the Classify page lists makes of a drawing (its
# title named MNIST runs alone, and nothing said to pick the brush first or to press the button under the canvas).
_DRAWING_TITLE = "Draw a digit (for an MNIST run, or a segmentation run on the MNIST canvases)"
_DRAWING_HELP = (
    'Pick the brush at the left of the canvas (until then it reads "select the draw tool to start"), draw one digit, '
    "then press **Classify the drawing**: the model picked above classifies it as it would a photo. An MNIST run cuts "
    "the digit out and scales it to MNIST's 28x28, so any size will do; a segmentation run on the MNIST canvases "
    "takes the whole canvas at its own size and learnt digits 28 px tall, so draw small; a zoo model, a transfer run "
    "or a `train segment --data` run takes it as any other picture."
)


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the lab is local: no calls home
    try:
        import gradio
    except ImportError:
        raise CnnlabError('cnnlab lab needs the lab extra: pip install "cnnlab[lab]"') from None
    return gradio


def _shown_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user-input error into a message in the page that stays until it is closed (the server goes on either
    way): Gradio's default of 10 s took the reason away while every output still read "Error"."""
    import gradio

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        try:
            return function(*args)
        except CnnlabError as error:
            try:  # the page shows it in words: no traceback in the server's log for a user's input error
                shown = gradio.Error(toast_text(str(error)), duration=None, print_exception=False)
            except TypeError:  # a gradio older than the option (5.9) prints it as before
                shown = gradio.Error(toast_text(str(error)))
            raise shown from None

    return wrapper


def _image(path: Path | None) -> Any:
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as opened:
        return opened.convert("RGB")


def sentence(text: str) -> str:
    """A message that starts lower case, as a toast says it, as a sentence of its own (a list's note)."""
    return text[:1].upper() + text[1:]


def toast_text(text: str) -> str:
    """`text` as literal text in a Gradio toast, which renders its message as HTML: a message quotes what was typed
    (a layer string's ``<b>`` turned the rest of the toast bold) or a folder's name."""
    import html

    return html.escape(text, quote=False)


def markdown_text(text: str) -> str:
    """`text` as literal text inside Markdown: a class name is a folder's name, which may hold `<b>`, `*` or `[x](y)`
    (the caption rendered them: "<b>" in a class name turned the rest of the line bold)."""
    import html
    import re

    return html.escape(re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", text), quote=False)


def classification_caption(view: Any) -> str:
    """The line under the Classify page's results (Markdown): the class Grad-CAM explains, at which layer, and whose
    feature maps are shown; below it, the preprocessing the image got where the run records none."""
    return (
        f"Grad-CAM of '{markdown_text(view.explained)}' at `{view.cam_layer}`; feature maps of `{view.feature_layer}`"
        + (f" of {markdown_text(view.shown_member)}" if view.shown_member else "")
        + (" (a segmenter: classes by their share of the pixels)" if view.pixel_shares else "")
        # what was done to the image where no record of the run's says it (a run on the MNIST canvases), in the
        # words `cnnlab explain` prints
        + (f"\n\npreprocessing: {markdown_text(view.preprocessing)}" if view.preprocessing else "")
    )


def build_app(runs_root: str | os.PathLike[str], max_upload_bytes: int = 10 * 2**20, warm: bool = True) -> Any:
    """The app's `gradio.Blocks` (not started); with `warm`, the default zoo model is loaded already."""
    gr = _gradio()
    from cnnlab.lab.answers_page import answer_sheet
    from cnnlab.lab.budget_page import EXERCISE_SPEC, budget_view, memory_chart
    from cnnlab.lab.classify import (
        check_upload_size,
        classify,
        drawing_to_image,
        for_display,
        open_upload,
        pretrained_models,
        upload_note,
    )
    from cnnlab.lab.runs import (
        compare_curves,
        find_runs,
        resolve_run,
        run_details,
        saved_model_stamp,
        saved_runs,
        summarise,
        unreadable_run_folders,
        unreadable_task_folders,
    )
    from cnnlab.lab.scan_page import MAX_DOWNSCALED_PIXELS, MAX_PIXELS, scan_view, segment_view
    from cnnlab.tasks.explain import is_canvas_segmentation_run, load_subject
    from cnnlab.tasks.segment_predict import is_segmentation_run
    from cnnlab.train.saved import ENSEMBLE_SPEC, ensemble_members

    runs_root = Path(runs_root)

    def segmentation_runs() -> list[str]:  # runs of `train segment --data`: their preprocessing is recorded
        return [run_id for run_id, folder in find_runs(runs_root).items() if is_segmentation_run(folder)]

    def explained_segmentation_runs() -> list[str]:
        # those and the MNIST canvases' (`train segment` without --data), which `cnnlab explain` prepares as the
        # canvases are, saying so; predict, and so the Scan page, refuses them (no record for other images)
        return [run_id for run_id, folder in find_runs(runs_root).items()
                if is_segmentation_run(folder) or is_canvas_segmentation_run(folder)]  # fmt: skip

    def scan_choices() -> list[str]:
        # an ensemble has no single network to convert to a fully convolutional one
        return saved_runs(runs_root, _SCAN_TASKS, ensembles=False) + segmentation_runs()

    def unscanned_note() -> str | None:
        """Why the Scan page does not list the canvas segmentation runs and the MNIST ensembles that the Classify
        page offers (the list left them out unsaid, under the label "MNIST or segmentation run")."""
        canvas_runs = [run_id for run_id, folder in find_runs(runs_root).items() if is_canvas_segmentation_run(folder)]
        single = set(saved_runs(runs_root, _SCAN_TASKS, ensembles=False))
        ensembles = [run_id for run_id in saved_runs(runs_root, _SCAN_TASKS) if run_id not in single]
        notes = []
        if canvas_runs:
            # "Its network ... refuses it" was said of several runs too
            why = (
                "Its network scores every pixel already, so cnnlab fcn scan has nothing to convert, and it records no "
                "preparation for other images, so cnnlab predict, which segments here, refuses it; the Classify and "
                "explain page explains an image with it."
                if len(canvas_runs) == 1
                else "Their networks score every pixel already, so cnnlab fcn scan has nothing to convert, and they "
                "record no preparation for other images, so cnnlab predict, which segments here, refuses them; the "
                "Classify and explain page explains an image with any of them."
            )
            notes.append(
                f"Not listed: {', '.join(canvas_runs)}, trained on the MNIST canvases (cnnlab train segment without "
                f"--data). {why}"
            )
        if ensembles:
            kind = "an ensemble" if len(ensembles) == 1 else "ensembles"
            member = first_member(ensembles[0])
            notes.append(
                f"Not listed: {', '.join(ensembles)} ({kind} of MNIST networks: no single network to convert to a "
                "fully convolutional one); scan with one member on the command line"
                + (f" (cnnlab fcn scan {member} IMAGE)." if member else ".")
            )
        return " ".join(notes) or None

    def first_member(run_id: str) -> Path | None:
        try:
            return ensemble_members(resolve_run(runs_root, run_id) / ENSEMBLE_SPEC)[0]
        except (CnnlabError, OSError):  # gone since it was listed, or a record that loading it explains
            return None

    def no_scan_run() -> str:
        """What the Scan page says with no run to list, under its list and to an upload."""
        unscanned = unscanned_note()
        return (
            f"no run to scan under {runs_root}: the page takes a finished MNIST run of one network or a finished "
            f"`cnnlab train segment --data` run; train one with `cnnlab train mnist --recipe quick --output "
            f"{runs_root}` or `cnnlab train segment --data DIR --output {runs_root}`, then Refresh on the Runs page"
            + (f". {unscanned}" if unscanned else "")
        )

    def scan_list_note(scan_runs: list[str]) -> str | None:
        # an empty list said nothing until an image was uploaded (up to 10 MiB, for nothing)
        return unscanned_note() if scan_runs else sentence(no_scan_run())

    zoo = pretrained_models()

    def model_choices() -> list[str]:
        return zoo + saved_runs(runs_root, _CLASSIFY_TASKS) + explained_segmentation_runs()

    @functools.lru_cache(maxsize=4)
    def loaded(choice: str, stamp: tuple) -> Any:  # `stamp`: a run saved again is loaded again, not served stale
        if choice in zoo:
            return load_subject(choice)
        return load_subject(str(resolve_run(runs_root, choice)))

    def no_model() -> str:
        """What the Classify page says with no model to list, under its list and to a photo or drawing."""
        return (
            f"no model to classify with: no zoo model's pretrained weights are installed (`cnnlab zoo` marks "
            f"those a pip package holds) and no MNIST, transfer or segmentation run is under {runs_root}; "
            f"train one, e.g. `cnnlab train mnist --recipe quick --output {runs_root}`, then Refresh on the Runs "
            "page"
        )

    def model_list_note(models: list[str]) -> str | None:
        return None if models else sentence(no_model())  # said before a photo is uploaded for nothing

    def subject(choice: str | None) -> Any:
        if not choice:  # nothing to pick: it was "no run None under runs; pick one from the list", of an empty list
            raise CnnlabError(no_model())
        return loaded(choice, () if choice in zoo else saved_model_stamp(resolve_run(runs_root, choice)))

    # ------------------------------------------------------------------ handlers
    def on_budget(target: str, shape: str, batch: float | None, memory: str, dtype: str, optimizer: str) -> tuple:
        try:
            view = budget_view(target, shape, batch, memory, dtype, optimizer)
        except CnnlabError as error:
            # The reason stays in the page (a toast goes after seconds); the previous figures are cleared, not kept
            # beside a message saying these inputs could not be sized.
            gr.Warning(toast_text(str(error)))
            empty = gr.Dataframe(value=[], headers=["-"], label="")
            # as text: the message quotes what was typed, whose `*k3*` or `<b>` the Markdown rendered as markup
            return f"**Cannot size it:** {markdown_text(str(error))}", "", empty, empty, None, empty
        plan = view.plan
        return (
            "\n\n".join(markdown_text(note) for note in view.notes),  # what the command prints below its tables
            view.summary,
            gr.Dataframe(value=view.layers.rows, headers=view.layers.headers, label=view.layers.label),
            gr.Dataframe(value=view.memory.rows, headers=view.memory.headers, label=view.memory.title),
            memory_chart(view.report),
            gr.Dataframe(
                value=plan.rows if plan else [],
                headers=plan.headers if plan else ["remedy"],
                label=plan.title if plan else "give a memory size for the plan",
            ),
        )

    def show_classification(choice: str, image: Any, layer: str | None) -> tuple:
        view = classify(subject(choice), image, layer or None, top_k=5)
        return (
            for_display(image),  # as cnnlab read it (a transparent PNG on white), not as the browser draws it
            {name: probability for name, probability in view.top},
            view.gradcam,
            classification_caption(view),
            gr.Dropdown(choices=view.layers, value=view.feature_layer),
            view.feature_maps,
            view.filters,
        )

    @_shown_errors
    def on_upload(choice: str, path: str | None, layer: str | None) -> tuple:
        if not path:
            raise CnnlabError("upload a photo first")
        return show_classification(choice, open_upload(path, max_upload_bytes), layer)

    @_shown_errors
    def on_model(choice: str, path: str | None, drawing: dict | None = None, shown: str = "photo") -> tuple:
        # The layer list and the results belong to the previous model: the photo or drawing on show is classified
        # again with the new one (its own layers, the middle one chosen); with neither the page is cleared.
        if shown == "drawing" and drawing and drawing.get("composite") is not None:
            return show_classification(choice, drawing_to_image(drawing["composite"]), None)
        if not path:
            return classify_cleared()
        return show_classification(choice, open_upload(path, max_upload_bytes), None)

    def classify_cleared() -> tuple:  # every output, the layer list included (another model has other layers)
        return None, None, None, "", gr.Dropdown(choices=[], value=None), None, None

    def results_cleared() -> tuple:  # every output but the layer list, whose choice a new photo keeps
        photo, top, cam, caption, _layers, maps, filters = classify_cleared()
        return photo, top, cam, caption, maps, filters

    @_shown_errors
    def on_drawing(choice: str, drawing: dict | None, layer: str | None) -> tuple:
        if not drawing or drawing.get("composite") is None:
            raise CnnlabError("draw a digit on the canvas first")
        return show_classification(choice, drawing_to_image(drawing["composite"]), layer)

    @_shown_errors
    def on_layer(choice: str, path: str | None, drawing: dict | None, layer: str | None, shown: str) -> tuple:
        # Another layer's maps of what is on show: a drawing's were "upload a photo first", or the photo's results
        # in place of the drawing's.
        return on_drawing(choice, drawing, layer) if shown == "drawing" else on_upload(choice, path, layer)

    def runs_table() -> list[list[Any]]:
        rows = []
        for run_id, folder in find_runs(runs_root).items():
            line = summarise(run_id, folder)
            value = "-" if line.value is None else f"{line.value:.4f}"
            rows.append([line.run_id, line.task, line.recipe, line.date, line.metric, value])
        return rows

    def kept(choices: list[str], shown: str | None) -> str | None:
        """The choice on show while it is still listed, else the first of `choices`."""
        return shown if shown in choices else (choices[0] if choices else None)

    def run_figures(run_id: str | None) -> tuple:
        if not run_id:
            return gr.Image(value=None, visible=False), gr.Image(value=None, visible=False), None, ""
        details = run_details(runs_root, run_id)
        if details.unreadable:  # said, and left out: one broken PNG failed the whole Runs page on load
            gr.Warning(toast_text(f"{run_id}: cannot show {'; '.join(details.unreadable)}"))
        figures = (details.learning_curves, details.confusion_matrix, details.mistakes)
        # A figure the run does not have is hidden, not shown as an empty frame.
        labels = (details.curves_label, "confusion matrix", details.mistakes_label)  # an ensemble's curves are a
        shown = (gr.Image(value=_image(path), visible=path is not None, label=label)  # member's
                 for path, label in zip(figures, labels, strict=True))  # fmt: skip
        return (*shown, details.config)

    @_shown_errors
    def on_refresh_runs(shown: str | None, first: str | None, second: str | None, model: str | None,
                        scan_run: str | None) -> tuple:  # fmt: skip
        # On every page load as well as on Refresh: runs trained after the lab started are listed.
        choices, models, scan_runs = list(find_runs(runs_root)), model_choices(), scan_choices()
        on_show = kept(choices, shown)
        return (
            gr.Dataframe(value=runs_table()),
            gr.Dropdown(choices=choices, value=on_show),
            gr.Dropdown(choices=choices, value=first if first in choices else None),
            gr.Dropdown(choices=choices, value=second if second in choices else None),
            gr.Dropdown(choices=models, value=kept(models, model), info=model_list_note(models)),
            gr.Dropdown(choices=scan_runs, value=kept(scan_runs, scan_run), info=scan_list_note(scan_runs)),
            *run_figures(on_show),
            runs_note(bool(choices)),
        )

    def runs_note(listed: bool) -> Any:
        unreadable = unreadable_task_folders(runs_root) + unreadable_run_folders(runs_root)
        if unreadable:  # a symbolic link loop or a link to a folder that is gone was left out unsaid
            text = (
                "Not listed, as this user cannot read them: "
                + ", ".join(f"`{Path(runs_root) / task}` ({reason})" for task, reason in unreadable)
                + ". Give this user read permission (or mend the link), then Refresh."
            )
        elif not listed:  # an empty table said nothing of where runs come from
            text = (
                f"No runs under `{runs_root}` yet: a run is a `<task>/<name>/` folder a train command writes, such as "
                f"`cnnlab train mnist --recipe quick --output {runs_root}` (about a minute on a CPU); then Refresh."
            )
        else:
            text = ""
        return gr.Markdown(value=text, visible=bool(text))

    def on_answers() -> tuple:
        # On every page load: a sheet written after the lab started is shown once the page is reloaded.
        text, figures = answer_sheet(runs_root)
        gallery = [(_image(figure), caption) for figure, caption in figures]
        return text, gr.Gallery(value=gallery, visible=bool(gallery))

    @_shown_errors
    def on_run(run_id: str) -> tuple:
        return run_figures(run_id)

    @_shown_errors
    def on_compare(first: str, second: str) -> Any:
        if not first or not second:
            raise CnnlabError("pick two runs to compare")
        return compare_curves(runs_root, first, second)

    @_shown_errors
    def on_scan(run_id: str, path: str | None) -> tuple:
        if not run_id:
            raise CnnlabError(no_scan_run())
        if not path:
            raise CnnlabError("upload an image to scan")
        check_upload_size(path, max_upload_bytes)
        folder = resolve_run(runs_root, run_id)
        # The mask and the pixel shares are a segmentation run's only: hidden for a scan, the heatmap takes the row.
        if is_segmentation_run(folder):
            masks = segment_view(folder, path)
            return masks.overlay, gr.Image(value=masks.colour, visible=True), gr.Label(value=masks.share, visible=True)
        return scan_view(folder, path), gr.Image(value=None, visible=False), gr.Label(value=None, visible=False)

    def scan_cleared() -> tuple:
        return None, gr.Image(value=None, visible=False), gr.Label(value=None, visible=False)

    @_shown_errors
    def on_scan_run(run_id: str | None, path: str | None) -> tuple:
        # Another run picked: the image on show is scanned again with it (as the Classify page does on a model
        # change); with no image, the page stays cleared.
        return on_scan(run_id, path) if run_id and path else scan_cleared()

    # ------------------------------------------------------------------ layout
    with gr.Blocks(title="cnnlab lab") as app:
        gr.Markdown(f"# cnnlab lab\nRuns root: `{runs_root}`")
        with gr.Tab("Answers", id="answers"):
            sheet = gr.Markdown(elem_id="answers-sheet")
            sheet_gallery = gr.Gallery(label="figures of the sheet", columns=3, interactive=False, visible=False)
            app.load(on_answers, [], [sheet, sheet_gallery])
        with gr.Tab("Budget", id="budget"):
            with gr.Row():
                target = gr.Textbox(
                    label="zoo model, or layer strings (one per line)",
                    placeholder=EXERCISE_SPEC,
                    lines=4,
                    elem_id="budget-target",
                )
                with gr.Column():
                    shape = gr.Textbox(label="input CxHxW (empty: the model's)", placeholder="3x200x300",
                                       elem_id="budget-input")  # fmt: skip
                    # no precision: Gradio would round 2.7 to 3 unseen; no minimum: Gradio refused 0 in a toast gone
                    # after 10 s ("Value 0 is less than minimum value 1."), every output left reading "Error". The
                    # page refuses both in words that stay (`check_batch`).
                    batch = gr.Number(label="batch", value=1, elem_id="budget-batch")
                    memory = gr.Textbox(label="memory for the plan (e.g. 8GiB)", elem_id="budget-memory")
                with gr.Column():
                    dtype = gr.Dropdown(_DTYPES, value="float32", label="dtype")
                    optimizer = gr.Dropdown(_OPTIMIZERS, value="adam", label="optimizer")
                    size_button = gr.Button("Size it", variant="primary", elem_id="budget-run")
            budget_status = gr.Markdown(elem_id="budget-status")
            summary = gr.Textbox(label="summary", interactive=False, elem_id="budget-summary")
            layer_rows = gr.Dataframe(label="layers", interactive=False, elem_id="budget-layers")
            with gr.Row():
                memory_rows = gr.Dataframe(label="memory", interactive=False)
                chart = gr.Plot(label="memory breakdown")
            plan_rows = gr.Dataframe(label="largest batch per remedy", interactive=False, elem_id="budget-plan")
            size_button.click(
                on_budget,
                [target, shape, batch, memory, dtype, optimizer],
                [budget_status, summary, layer_rows, memory_rows, chart, plan_rows],
            )

        with gr.Tab("Classify and explain", id="classify"):
            with gr.Row():
                listed_models = model_choices()
                model = gr.Dropdown(
                    listed_models,
                    value=zoo[0] if zoo else None,
                    label="model (zoo or run)",
                    info=model_list_note(listed_models),
                )
                layer = gr.Dropdown([], label="feature-map layer", allow_custom_value=False)
            with gr.Row():
                with gr.Column():
                    # A file, not gr.Image: Gradio would decode an image upload itself, refusing a broken one with
                    # its own message (naming its temporary path) and dropping a PNG's transparency before cnnlab's
                    # loader puts it on white, as every command does.
                    upload = gr.File(label="photo", type="filepath", elem_id="classify-upload")
                    # said before a photo is picked: Gradio refuses a larger one in the browser, in its own words
                    gr.Markdown(upload_note(max_upload_bytes), elem_id="classify-upload-limit")
                    photo = gr.Image(label="the image classified", interactive=False, elem_id="classify-photo")
                cam = gr.Image(
                    label="Grad-CAM of the class named below",
                    interactive=False,
                    elem_id="classify-gradcam",
                )
                top = gr.Label(num_top_classes=5, label="top classes", elem_id="classify-top")
            caption = gr.Markdown()
            with gr.Row():
                maps = gr.Image(label="feature maps (most active channels)", interactive=False)
                filters = gr.Image(label="first-layer filters", interactive=False)
            with gr.Accordion(_DRAWING_TITLE, open=False):
                gr.Markdown(_DRAWING_HELP, elem_id="classify-sketch-help")
                sketch = gr.Sketchpad(label="digit", elem_id="classify-sketch")
                sketch_button = gr.Button("Classify the drawing")
            outputs = [photo, top, cam, caption, layer, maps, filters]
            shown = gr.State("photo")  # what the results are of: the uploaded photo or the drawing
            results = [photo, top, cam, caption, maps, filters]
            # The results on show go first: a photo or a model that fails left the previous one's classes, Grad-CAM
            # and caption under the new choice.
            upload.upload(results_cleared, None, results).then(on_upload, [model, upload, layer], outputs).success(
                lambda: "photo", None, shown
            )
            model.change(classify_cleared, None, outputs).then(on_model, [model, upload, sketch, shown], outputs)
            layer.input(on_layer, [model, upload, sketch, layer, shown], outputs)
            sketch_button.click(results_cleared, None, results).then(
                on_drawing, [model, sketch, layer], outputs
            ).success(lambda: "drawing", None, shown)

        with gr.Tab("Runs", id="runs"):
            refresh = gr.Button("Refresh")
            unreadable_note = gr.Markdown(visible=False, elem_id="runs-unreadable")
            table = gr.Dataframe(
                headers=["run", "task", "recipe", "date", "headline metric", "value"],
                interactive=False,
                elem_id="runs-table",
            )
            chosen_run = gr.Dropdown([], label="run (newest first)", elem_id="runs-choice")  # listed on load
            with gr.Row():
                curves = gr.Image(label="learning curves", interactive=False, elem_id="runs-curves")
                confusion = gr.Image(label="confusion matrix", interactive=False)
            mistakes = gr.Image(label="misclassified / highest-loss images", interactive=False)
            config = gr.Code(label="config.yaml", language="yaml")
            with gr.Row():
                first = gr.Dropdown([], label="compare")
                second = gr.Dropdown([], label="with")
                compare_button = gr.Button("Compare curves")
            comparison = gr.Plot(label="the two runs' curves; an ensemble's: each member's")
            chosen_run.change(on_run, [chosen_run], [curves, confusion, mistakes, config])
            compare_button.click(on_compare, [first, second], [comparison])

        with gr.Tab("Scan and segment", id="scan"):
            scan_runs = scan_choices()
            gr.Markdown(
                "An MNIST run, converted to a fully convolutional network, scores every 28x28 window of a large image; "
                "a segmentation run of `cnnlab train segment --data` paints its classes."
            )
            scan_run = gr.Dropdown(
                scan_runs,
                value=scan_runs[0] if scan_runs else None,
                label="MNIST or segmentation run",
                info=scan_list_note(scan_runs),
            )
            scan_upload = gr.File(label="large image", type="filepath", elem_id="scan-upload")  # cnnlab reads it
            pixels = (
                f"{MAX_PIXELS // 2**20} MP ({MAX_DOWNSCALED_PIXELS // 2**20} MP for a segmentation run trained with "
                "`--max-side`)"
            )
            gr.Markdown(upload_note(max_upload_bytes, pixels), elem_id="scan-upload-limit")
            with gr.Row():
                heatmap = gr.Image(label="class heatmap, or the masks over the image", interactive=False)
                colour_mask = gr.Image(label="mask (segmentation runs)", interactive=False, visible=False)
                shares = gr.Label(label="share of the pixels per class", visible=False, elem_id="scan-shares")
            scanned = [heatmap, colour_mask, shares]
            # The figures of the previous image or run go first: one that cannot be scanned, or a run that refuses
            # the image, left them on show under the new choice.
            scan_upload.upload(scan_cleared, None, scanned).then(on_scan, [scan_run, scan_upload], scanned)
            scan_run.change(scan_cleared, None, scanned).then(on_scan_run, [scan_run, scan_upload], scanned)
            scan_upload.clear(scan_cleared, None, scanned)

        # The runs are listed (the newest on show) when the page opens, and again on Refresh.
        listing = [chosen_run, first, second, model, scan_run]
        runs_page = [table, *listing, curves, confusion, mistakes, config, unreadable_note]
        app.load(on_refresh_runs, listing, runs_page)
        refresh.click(on_refresh_runs, listing, runs_page)
    if warm and zoo:
        # Load the default model and run it once (torch builds its kernels on the first call): the first photo is
        # then answered in well under a second instead of about five.
        from PIL import Image

        classify(subject(zoo[0]), Image.new("RGB", (64, 64), (128, 128, 128)), top_k=1)
    return app


def serve(
    runs_root: str | os.PathLike[str] = "runs",
    port: int = 7860,
    host: str = "127.0.0.1",
    max_upload_mb: int = 10,
    warm: bool = True,
) -> None:
    """Build the app and serve it until interrupted.

    Args:
        runs_root: the folder whose ``<task>/<name>/`` runs the Runs, Classify and Scan pages list.
        port: the TCP port.
        host: the address to listen on (127.0.0.1: this machine only).
        max_upload_mb: the largest upload accepted.
        warm: load the default zoo model before serving, so the first photo is answered at once.

    Raises:
        CnnlabError: the port is taken on that address (another lab, say), or cannot be used there; the runs root
            is a file.
    """
    check_address(host, port)  # before the app is built and the model warmed: seconds, for nothing
    check_runs_root(runs_root)
    from cnnlab.lab.runs import remove_stale_scratch

    remove_stale_scratch()  # the figure folders of labs killed outright (SIGKILL), which could not remove their own
    max_bytes = max_upload_mb * 2**20
    app = build_app(runs_root, max_bytes, warm)
    try:
        app.queue(default_concurrency_limit=1).launch(  # one CPU-bound request at a time
            server_name=host,
            server_port=port,
            max_file_size=max_bytes,
            show_error=True,
            quiet=True,
            footer_links=["api", "gradio", "settings"],  # Gradio's own "runs" link would be mistaken for the Runs page
            css=_CSS,
        )
    except OSError:
        # Taken while the app was built and warmed (seconds: two labs started together): said as above, not as
        # Gradio's "Cannot find empty port ... set the GRADIO_SERVER_PORT environment variable".
        check_address(host, port)
        raise


def check_address(host: str, port: int) -> None:
    """Refuse an address the lab cannot listen on, saying why and naming the option that changes it (Gradio's own
    message points at its environment variable and `launch()` arguments, which a command-line user does not have).

    Raises:
        CnnlabError: a --host that is not a name or address of this machine, a port another program holds, or a
            privileged port.
    """
    import errno
    import socket

    if ":" in host:  # Gradio builds its own URL as http://HOST:PORT, which an IPv6 literal breaks (an httpx traceback)
        raise CnnlabError(
            f"--host {host}: the lab cannot serve on an IPv6 address; use 127.0.0.1 (this machine only), 0.0.0.0 "
            "(every network) or an IPv4 address or name of this machine"
        )
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:  # it said "another program may hold it" for a host that does not exist
        raise CnnlabError(
            f"--host {host}: not an address or name this machine can resolve ({error.strerror or error}); use "
            "127.0.0.1 (this machine only), 0.0.0.0 (every network) or one of this machine's addresses"
        ) from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            if error.errno == errno.EADDRNOTAVAIL:
                raise CnnlabError(
                    f"cannot listen on {host}:{port} ({reason}): {host} is not an address of this machine; use "
                    "127.0.0.1, 0.0.0.0 or one of its own addresses"
                ) from None
            if error.errno == errno.EACCES and port < 1024:
                raise CnnlabError(
                    f"cannot listen on {host}:{port} ({reason}): ports below 1024 need administrator rights; pass "
                    "--port 7860 or another above 1023"
                ) from None
            raise CnnlabError(
                f"cannot listen on {host}:{port} ({reason}); another program, perhaps another lab, "
                f"may hold it: pass another --port, such as --port {port + 1 if port < 65535 else 7860}"
            ) from None


def reachable_from_others(host: str) -> bool:
    """Whether listening on `host` lets other machines reach the lab: anything but a name or address of this
    machine's loopback interface (``localhost``, 127.0.0.1, 127.0.0.2 ...)."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return True  # `check_address` refuses it anyway
    return not addresses or not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def check_runs_root(runs_root: str | os.PathLike[str]) -> bool:
    """Whether the runs root exists (a new user's ``runs`` may not yet: the pages then list no runs).

    Raises:
        CnnlabError: when it names a file, a folder that cannot be read, or a run's or a task's folder
            (`cnnlab.tasks.runs_root.misplaced_root`).
    """
    from cnnlab.tasks.runs_root import misplaced_root

    path = Path(runs_root)
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"--runs {runs_root} is a file; pass the folder the train commands write to (runs)")
    if not path.is_dir():
        return False
    try:  # else every page listed no runs, unsaid: the listing reads nothing it cannot open
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as error:
        raise CnnlabError(
            f"--runs {runs_root} cannot be read ({error.strerror or error}); pass a runs folder this user can read, "
            "or give it read permission"
        ) from None
    reason = misplaced_root(path)
    if reason is not None:
        raise CnnlabError(reason)
    return True
