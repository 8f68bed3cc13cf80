"""The Gradio page: the image with drawn visual prompts on the left, the task, the prompt and the
answer on the right, examples of every task below. Every action is a named endpoint, so
``gradio_client`` can drive the page as a person does.

Endpoints: ``/run`` (the Run button: image and drawings, task, prompt, drawing kind, threshold, scores
→ overlay, status, caption, chat, instances, downloads), ``/new_chat``, ``/remove_drawings``,
``/categories`` (the model's known categories in the prompt syntax) and ``/segment`` (for scripts:
an image file and JSON points or boxes, no drawing).
"""

# no ``from __future__ import annotations``: Gradio reads the /segment endpoint's type hints at run
# time (its FileData image is what makes gradio_client upload the file)
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio import FileData
from PIL import Image, ImageDraw

from ..processing import png_bytes, write_atomically
from ..tasks.routing import AUTO
from .session import (
    DEFAULT_THRESHOLD,
    DRAWING_KINDS,
    Answer,
    Demo,
    DemoError,
    Request,
    Session,
    result_json,
)

logger = logging.getLogger("xsam.demo")
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
EXAMPLE_INK = (45, 140, 255, 255)
"""The colour of the examples' drawn prompts (blue: the example scenes' objects are mostly warm)."""
SESSION_SECONDS = 3600
"""A session's cached image encoding and chat are dropped this long after its last use."""

TASKS = {
    AUTO: ("Auto", "The task is chosen from what you give: drawings, categories, a phrase, a question."),
    "generic": ("Generic segmentation", "Categories: `ins: circle, star; sem: sky, grass` (see below)."),
    "open_vocab": ("Open-vocabulary", "Any category names, in the same syntax as generic segmentation."),
    "referring": ("Referring", "A phrase naming one object: `the large red hexagon`."),
    "reasoning": ("Reasoning", "A question whose answer is an object: `Which shape has six sides?`"),
    "gcg": ("Grounded caption", "No prompt: a caption whose phrases are segmented."),
    "interactive": ("Interactive", "Draw one point, box, scribble or mask: that object is segmented."),
    "vgd": ("Visual grounding", "Draw one or more regions: every object like them is segmented."),
    "chat": ("Chat", "Ask about the image; the conversation continues until you start a new chat."),
}
DRAWING_HELP = (
    "Draw with the brush on the image. **points**: every dot is a point (click); **boxes**: each layer "
    "is one box, its drawing's extent (drag across the object); **scribbles** and **masks**: each "
    "layer is one region (a new layer from the layer menu for each further region). Undo, the eraser "
    "or *Remove drawings* take them away."
)
CATEGORY_HELP = (
    "Generic segmentation takes categories in one line: `ins:` before the countable things "
    "(each one found separately), `sem:` before the stuff (one region per category), e.g. "
    "`ins: person, dog; sem: sky, grass`. Both give panoptic segmentation, only `ins:` instance "
    "segmentation, only `sem:` semantic segmentation. Plain names count as `ins:`."
)


def build_demo(demo: Demo, *, work_dir: Path, log_dir: Path | None = None) -> gr.Blocks:
    """The page around ``demo``; downloads and example drawings go to ``work_dir`` (temporary),
    requests are kept in ``log_dir`` when given."""
    examples = example_rows(work_dir / "examples")
    with gr.Blocks(title="X-SAM demo", delete_cache=(600, SESSION_SECONDS)) as page:
        session = gr.State(Session(), time_to_live=SESSION_SECONDS, delete_callback=Session.forget)
        gr.Markdown(f"# X-SAM: any segmentation\nModel: `{demo.model_name}`. {TASKS[AUTO][1]}")
        with gr.Row():
            with gr.Column():
                editor, drawing, remove = _image_column()
            with gr.Column():
                controls = _controls(demo)
                outputs = _outputs()
        gr.Examples(
            examples,
            inputs=[editor, controls["task"], controls["prompt"], drawing],
            label="Examples: click one to fill the image, the task and the prompt",
            examples_per_page=len(examples),
        )
        _wire(demo, editor, drawing, remove, controls, outputs, session, work_dir, log_dir)
    return page


def _image_column() -> tuple[gr.ImageEditor, gr.Radio, gr.Button]:
    editor = gr.ImageEditor(
        label="Image: upload, paste or take a photo, then draw prompts on it",
        elem_id="image",
        type="numpy",
        image_mode="RGBA",
        format="png",  # lossless: an image handed back and forth keeps its pixels (and its encoding)
        sources=("upload", "webcam", "clipboard"),
        layers=True,
        transforms=(),
        brush=gr.Brush(default_size=10, colors=["#2d8cff", "#ff2d2d", "#ffd21f"], color_mode="fixed"),
        height=520,
    )
    with gr.Row():
        drawing = gr.Radio(list(DRAWING_KINDS), value="points", label="Read drawings as", elem_id="drawing")
        remove = gr.Button("Remove drawings", elem_id="remove-drawings")
    gr.Markdown(DRAWING_HELP)
    return editor, drawing, remove


def _controls(demo: Demo) -> dict[str, Any]:
    choices = [(name, key) for key, (name, _) in TASKS.items()]
    controls: dict[str, Any] = {
        "task": gr.Dropdown(choices, value=AUTO, label="Task", elem_id="task"),
        "task_help": gr.Markdown(TASKS[AUTO][1], elem_id="task-help"),
        "prompt": gr.Textbox(label="Prompt", elem_id="prompt", lines=2, placeholder="optional with Auto"),
    }
    with gr.Accordion("Categories: how to ask for generic segmentation", open=False):
        gr.Markdown(CATEGORY_HELP)
        controls["categories"] = gr.Button(
            "Insert the categories this model knows" if demo.vocabulary_text() else "This model lists none",
            interactive=bool(demo.vocabulary_text()),
            elem_id="insert-categories",
        )
    with gr.Row():
        controls["threshold"] = gr.Slider(0, 1, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold")
        controls["scores"] = gr.Checkbox(value=True, label="Scores on the picture")
    with gr.Row():
        controls["run"] = gr.Button("Run", variant="primary", elem_id="run")
        controls["new_chat"] = gr.Button("New chat", elem_id="new-chat")
    return controls


def _outputs() -> dict[str, Any]:
    return {
        "status": gr.Markdown(elem_id="status"),
        "picture": gr.Image(label="Result", elem_id="result", type="pil", format="png", interactive=False),
        "caption": gr.HighlightedText(
            label="Caption (each grounded phrase in its mask's colour)",
            elem_id="caption",
            show_legend=False,
            visible=False,
        ),
        "chat": gr.Chatbot(label="Chat", elem_id="chat", height=260, visible=False),
        "instances": gr.Dataframe(
            headers=["#", "label or phrase", "score", "area (px)"],
            elem_id="instances",
            interactive=False,
            label="Instances",
        ),
        "downloads": gr.File(
            label="Downloads: the result (JSON, COCO RLE masks) and the overlay (PNG)",
            file_count="multiple",
            elem_id="downloads",
            interactive=False,
        ),
    }


def _wire(
    demo: Demo,
    editor: gr.ImageEditor,
    drawing: gr.Radio,
    remove: gr.Button,
    controls: dict[str, Any],
    outputs: dict[str, Any],
    session: gr.State,
    work_dir: Path,
    log_dir: Path | None,
) -> None:
    def run(editor_value, task, text, kind, threshold, scores, state, progress=gr.Progress()):  # noqa: B008
        request = Request(*_editor_parts(editor_value), task, text or "", kind, float(threshold), scores)
        answer = _answered(demo, state, request, progress)
        files = _downloads(answer, work_dir)
        if log_dir is not None:
            _log(log_dir, request, answer)
        return (
            answer.status,
            answer.picture,
            gr.HighlightedText(
                value=answer.caption or None, color_map=answer.colours, visible=bool(answer.caption)
            ),
            gr.Chatbot(value=_messages(state.chat), visible=bool(state.chat)),
            answer.rows,
            files,
            state,
        )

    def new_chat(state: Session) -> tuple[Any, str, Session]:
        state.chat = []
        return gr.Chatbot(value=[], visible=False), "A new chat: the next question starts afresh.", state

    controls["run"].click(
        run,
        inputs=[
            editor,
            controls["task"],
            controls["prompt"],
            drawing,
            controls["threshold"],
            controls["scores"],
            session,
        ],
        outputs=[
            outputs["status"],
            outputs["picture"],
            outputs["caption"],
            outputs["chat"],
            outputs["instances"],
            outputs["downloads"],
            session,
        ],
        api_name="run",
    )
    controls["new_chat"].click(
        new_chat, inputs=session, outputs=[outputs["chat"], outputs["status"], session], api_name="new_chat"
    )
    remove.click(_without_drawings, inputs=editor, outputs=editor, api_name="remove_drawings")
    controls["categories"].click(
        lambda: demo.vocabulary_text(), outputs=controls["prompt"], api_name="categories"
    )
    controls["task"].change(
        lambda task: TASKS.get(task, ("", ""))[1],
        inputs=controls["task"],
        outputs=controls["task_help"],
        api_visibility="private",
    )

    def segment(
        image: FileData,
        task: str = AUTO,
        text: str = "",
        points: str = "",
        boxes: str = "",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> dict[str, Any]:
        """For scripts: one image file (``handle_file(path)``: the client uploads it) and JSON
        ``points`` ``[[x, y], ...]`` or ``boxes`` ``[[x0, y0, x1, y1], ...]``; returns the prediction
        with COCO RLE masks."""
        return _segment(demo, image["path"], task, text, points, boxes, threshold)

    gr.api(segment, api_name="segment")


def _answered(demo: Demo, state: Session, request: Request, progress: Any) -> Answer:
    try:
        return demo.answer(state, request, progress)
    except DemoError as error:
        raise gr.Error(str(error), print_exception=False) from None
    except Exception:
        logger.exception("the demo failed on a request")
        raise gr.Error("the demo failed on this request; the server log has the details") from None


def _segment(
    demo: Demo, image: str, task: str, text: str, points: str, boxes: str, threshold: float
) -> dict[str, Any]:
    try:
        prompts = {name: json.loads(value) for name, value in (("points", points), ("boxes", boxes)) if value}
    except json.JSONDecodeError as error:
        raise gr.Error(f"points and boxes must be JSON lists ({error})", print_exception=False) from None
    request = Request(image, (), task, text, threshold=float(threshold), prompts=prompts)
    answer = _answered(demo, Session(), request, None)
    return {**answer.result, "status": answer.status}


def _editor_parts(value: dict[str, Any] | None) -> tuple[Any, list[np.ndarray]]:
    """The background image and the drawn layers of the editor's value."""
    if not value or value.get("background") is None:
        return None, []
    background = np.asarray(value["background"])
    if background.ndim == 3 and background.shape[2] == 4:
        background = background[..., :3]
    return background, [np.asarray(layer) for layer in value.get("layers") or [] if layer is not None]


def _without_drawings(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value or value.get("background") is None:
        return None
    return {"background": value["background"], "layers": [], "composite": value["background"]}


def _messages(chat: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = []
    for question, answer in chat:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def _downloads(answer: Answer, work_dir: Path) -> list[str]:
    """The result JSON and the overlay PNG, in a fresh folder of ``work_dir`` (older than a session's
    lifetime are removed)."""
    expired = time.time() - SESSION_SECONDS
    for old in work_dir.glob("result-*"):
        if old.stat().st_mtime < expired:
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="result-", dir=work_dir))
    write_atomically(folder / "result.json", result_json(answer).encode())
    write_atomically(folder / "overlay.png", png_bytes(answer.picture))
    return [str(folder / "result.json"), str(folder / "overlay.png")]


def _log(log_dir: Path, request: Request, answer: Answer) -> None:
    """Keep the request (image, overlay, a JSON line) in ``log_dir/<date>/``."""
    day = log_dir / time.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
    write_atomically(day / f"{stem}-input.png", png_bytes(Image.fromarray(np.asarray(request.image))))
    write_atomically(day / f"{stem}-output.png", png_bytes(answer.picture))
    line = {"time": stem, "task": request.task, "prompt": request.text, "status": answer.status}
    with open(day / "requests.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")


# ----------------------------------------------------------------------------------------- examples
def example_rows(folder: Path) -> list[list[Any]]:
    """One example per bundled request: ``[editor value, task, prompt, drawing kind]``; the visual
    prompts of interactive and VGD examples are drawn into layer images in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = json.loads((EXAMPLES / "examples.json").read_text())
    rows = []
    for example in listing["examples"]:
        image = EXAMPLES / example["image"]
        size = Image.open(image).size
        for index, request in enumerate(example["requests"]):
            layers, kind = _example_layers(request, size, folder / f"{image.stem}-{index}")
            value = {"background": str(image), "layers": layers, "composite": str(image)}
            text = request.get("text") or request.get("categories") or ""
            rows.append([value, request["task"], text, kind])
    return rows


def _example_layers(request: dict[str, Any], size: tuple[int, int], stem: Path) -> tuple[list[str], str]:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if request.get("points"):
        for x, y in request["points"]:
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=EXAMPLE_INK)
        kind = "points"
    elif request.get("boxes"):
        for x0, y0, x1, y1 in request["boxes"]:
            draw.rectangle((x0, y0, x1, y1), outline=EXAMPLE_INK, width=4)
        kind = "boxes"
    else:
        return [], "points"
    path = stem.with_suffix(".png")
    layer.save(path)
    return [str(path)], kind
