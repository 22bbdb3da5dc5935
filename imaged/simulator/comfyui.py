"""LiblibAI's ComfyUI line (`/api/generate/comfyui/app`): the emulator knows one published demo workflow and
makes the images its EmptyLatentImage node asks for.

A submit is `{"templateUuid"?: TEMPLATE, "generateParams": {"workflowUuid": WORKFLOW_UUID, "<node id>":
{"class_type"?, "inputs": {...}}, ...}}`: only the inputs a published workflow shows may change; links between
nodes may not. The demo workflow, in ComfyUI API format (links left out):

| node | class_type             | inputs (defaults)                                                           |
| 3    | KSampler               | seed (random), steps 20, cfg 7.0, sampler_name euler, scheduler normal, denoise 1.0 |
| 4    | CheckpointLoaderSimple | ckpt_name sd_xl_base_1.0.safetensors                                        |
| 5    | EmptyLatentImage       | width 1024, height 1024, batch_size 1 (1..4): the images made               |
| 7    | CLIPTextEncode         | text "blurry, low quality" (negative)                                       |
| 8    | VAEDecode              | -                                                                           |
| 9    | SaveImage              | filename_prefix ComfyUI: the output node, `images[].nodeId` "9", `outputName` "images" |
| 12   | CLIPTextEncode         | text "a beautiful landscape" (positive)                                     |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .liblibai_params import Job, LiblibError, invalid, missing

APP_PATH = "/api/generate/comfyui/app"
STATUS_PATHS = ("/api/generate/comfy/status", "/api/generate/comfyui/status")
"""The documented status path and the spelling one 2026 client uses; both are served."""
TEMPLATE = "4df2efa0f18d46dc9758803e478eb51c"
"""The ComfyUI line's templateUuid (optional in the body)."""
WORKFLOW_UUID = "2f22c5a6e3a44b1b8d7a4b4a5e4a6d0e"
"""The one published workflow the emulator knows."""
POINTS_PER_IMAGE = 12
OUTPUT_NODE, OUTPUT_NAME = "9", "images"
POSITIVE_NODE, SAMPLER_NODE = "12", "3"
SEED_MAX = 2**64 - 1


@dataclass(frozen=True)
class Node:
    class_type: str
    inputs: dict[str, Any]
    """The inputs the published workflow shows, with their defaults (None: chosen at run time)."""
    links: tuple[str, ...] = ()
    """Inputs wired to other nodes: part of the graph, not changeable."""


WORKFLOW = {
    "3": Node(
        "KSampler",
        {
            "seed": None,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
        ("model", "positive", "negative", "latent_image"),
    ),
    "4": Node("CheckpointLoaderSimple", {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
    "5": Node("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}),
    "7": Node("CLIPTextEncode", {"text": "blurry, low quality"}, ("clip",)),
    "8": Node("VAEDecode", {}, ("samples", "vae")),
    "9": Node("SaveImage", {"filename_prefix": "ComfyUI"}, ("images",)),
    "12": Node("CLIPTextEncode", {"text": "a beautiful landscape"}, ("clip",)),
}
RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("KSampler", "seed"): (0, SEED_MAX),
    ("KSampler", "steps"): (1, 10000),
    ("KSampler", "cfg"): (0.0, 100.0),
    ("KSampler", "denoise"): (0.0, 1.0),
    ("EmptyLatentImage", "width"): (16, 16384),
    ("EmptyLatentImage", "height"): (16, 16384),
    ("EmptyLatentImage", "batch_size"): (1, 4),
}
INTEGERS = frozenset({"seed", "steps", "width", "height", "batch_size"})


def parse(body: dict[str, Any]) -> Job:
    """Check a ComfyUI submit against the demo workflow; raises LiblibError (100000/100050/100120)."""
    template = body.get("templateUuid") or TEMPLATE
    if template != TEMPLATE:
        raise LiblibError(100120, f"template does not exist: {template}")
    params = body.get("generateParams")
    if params is None:
        raise missing("generateParams")
    if not isinstance(params, dict):
        raise invalid("generateParams", "must be a JSON object")
    workflow = params.get("workflowUuid")
    if workflow is None or workflow == "":
        raise missing("workflowUuid")
    if workflow != WORKFLOW_UUID:
        raise invalid(
            "workflowUuid",
            f"{workflow!r} is not a published workflow (the emulator knows only its demo workflow "
            f"{WORKFLOW_UUID})",
        )
    values = {node_id: dict(node.inputs) for node_id, node in WORKFLOW.items()}
    for node_id, change in params.items():
        if node_id == "workflowUuid":
            continue
        node = WORKFLOW.get(node_id)
        if node is None:
            raise invalid(f"node {node_id}", f"is not a node of workflow {WORKFLOW_UUID}")
        if not isinstance(change, dict):
            raise invalid(f"node {node_id}", "must be an object {class_type, inputs}")
        if change.get("class_type", node.class_type) != node.class_type:
            raise invalid(f"{node_id}.class_type", f"must be {node.class_type}")
        inputs = change.get("inputs", {})
        if not isinstance(inputs, dict):
            raise invalid(f"{node_id}.inputs", "must be an object")
        for name, value in inputs.items():
            _check(node_id, node, name, value)
            values[node_id][name] = value
    latent = next(values[i] for i, node in WORKFLOW.items() if node.class_type == "EmptyLatentImage")
    seed = values[SAMPLER_NODE]["seed"]
    return Job(
        "comfy",
        "comfy",
        TEMPLATE,
        str(values[POSITIVE_NODE]["text"]),
        int(latent["width"]),
        int(latent["height"]),
        int(latent["batch_size"]),
        None if seed is None else int(seed),
        extras={"workflow": WORKFLOW_UUID, "node_id": OUTPUT_NODE, "output_name": OUTPUT_NAME},
    )


def _check(node_id: str, node: Node, name: str, value: Any) -> None:
    where = f"{node_id}.inputs.{name}"
    if name in node.links:
        raise invalid(where, "links two nodes: only a node's published inputs may change")
    if name not in node.inputs:
        raise invalid(where, f"is not an input of {node.class_type}")
    bounds = RANGES.get((node.class_type, name))
    if bounds is not None:
        integral = name in INTEGERS
        numeric = isinstance(value, int) or (isinstance(value, float) and not integral)
        if not numeric or isinstance(value, bool) or not bounds[0] <= value <= bounds[1]:
            kind = "an integer" if integral else "a number"
            raise invalid(where, f"must be {kind} in [{bounds[0]}, {bounds[1]}]")
    elif not isinstance(value, str):
        raise invalid(where, "must be a string")
