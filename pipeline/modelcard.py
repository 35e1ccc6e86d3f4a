"""The model card: everything serving and evaluation need to know about a model, inside the ONNX file.

The card lives in the ONNX ``metadata_props`` under :data:`CARD_KEY` as JSON. It is the single source
of truth for class names, input size, colour order and offline accuracy: serving never re-declares them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.types import ModelCardError

CARD_KEY = "shadowcam.model_card"

# The graph contract (models/export.py writes it, pipeline/runtime.py relies on it):
#   input  "image":  uint8 (batch, H, W, 3) in the card's input_color order, at the card's input_size;
#                    scaling and mean/std normalisation happen inside the graph.
#   output "logits": float32 (batch, n_classes), raw.
#   output "probs":  float32 (batch, n_classes), softmax(logits / temperature): calibrated.
INPUT_NAME = "image"
LOGITS_NAME = "logits"
PROBS_NAME = "probs"
CARD_SCHEMA = 1


@dataclass
class ModelCard:
    class_names: list[str]
    input_size: list[int]  # [height, width]
    arch: str
    input_color: str = "RGB"  # colour order the uint8 input must have: RGB or BGR
    input_layout: str = "NHWC"
    input_dtype: str = "uint8"
    resize_interpolation: str = "area"  # cv2 interpolation name used when resizing camera frames
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    temperature: float = 1.0  # softmax temperature fitted on the validation set; the graph's "probs" output applies it
    atc_threshold: float | None = None  # Average Thresholded Confidence threshold fitted on the validation set
    atc_score: str = "max_confidence"  # score the ATC threshold applies to (pipeline.evaluation.estimate)
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    test_size: int = 0
    data_fingerprint: str = ""  # sha256 of the training manifest
    training_run_id: str = ""
    created_at: str = ""  # ISO 8601, UTC
    precision: str = "fp32"
    export_max_abs_diff: float | None = None  # ONNX Runtime vs torch on the verification batch
    export_tolerance: float | None = None
    opset: int | None = None
    name: str = ""
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # the validation split as the model saw it (softmax, image statistics): what production is compared with for
    # drift against training; a dict, read by pipeline.evaluation.reference.TrainingReference.from_dict
    training_reference: dict[str, Any] | None = None
    schema: int = CARD_SCHEMA

    def __post_init__(self) -> None:
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ModelCardError(f"model card class_names must be non-empty and unique, got {self.class_names!r}")
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ModelCardError(f"model card input_size must be [height, width] > 0, got {self.input_size!r}")
        if self.input_color not in ("RGB", "BGR"):
            raise ModelCardError(f"model card input_color must be RGB or BGR, got {self.input_color!r}")
        if not (self.temperature > 0):
            raise ModelCardError(f"model card temperature must be > 0, got {self.temperature!r}")

    # --- (de)serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model card") -> "ModelCard":
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("class_names", "input_size", "arch") if k not in d]
        if missing:
            raise ModelCardError(f"{where}: missing field(s) {', '.join(missing)}")
        extra = {k: v for k, v in d.items() if k not in known}
        kw = {k: v for k, v in d.items() if k in known}
        card = cls(**kw)
        card.extra.update(extra)
        return card

    @classmethod
    def from_json(cls, text: str, where: str = "model card") -> "ModelCard":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelCardError(f"{where}: model card is not valid JSON ({e})") from None
        return cls.from_dict(d, where)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def height(self) -> int:
        return int(self.input_size[0])

    @property
    def width(self) -> int:
        return int(self.input_size[1])


def read_card(path: str | Path) -> ModelCard:
    """Read the card from an ONNX file without loading the weights into a session."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelCardError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co
        raise ModelCardError(f"{path}: not a readable ONNX file ({e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if CARD_KEY not in props:
        raise ModelCardError(f"{path}: no shadowcam model card (metadata key {CARD_KEY!r}); export it with `shadowcam train`/`models.export`")
    return ModelCard.from_json(props[CARD_KEY], where=str(path))


def card_from_metadata(custom_metadata_map: dict[str, str], where: str) -> ModelCard:
    """Read the card from an ONNX Runtime session's ``get_modelmeta().custom_metadata_map``."""
    if CARD_KEY not in custom_metadata_map:
        raise ModelCardError(f"{where}: no shadowcam model card (metadata key {CARD_KEY!r})")
    return ModelCard.from_json(custom_metadata_map[CARD_KEY], where=where)


def write_card(model: Any, card: ModelCard) -> None:
    """Put the card into an in-memory ``onnx.ModelProto`` (replacing an older one)."""
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    for p in kept:
        model.metadata_props.append(p)
    entry = model.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = card.to_json()


def check_compatible(a: ModelCard, b: ModelCard, a_name: str = "incumbent", b_name: str = "shadow") -> None:
    """Incumbent and shadow must answer in the same label space, in the same order."""
    if list(a.class_names) != list(b.class_names):
        only_a = sorted(set(a.class_names) - set(b.class_names))
        only_b = sorted(set(b.class_names) - set(a.class_names))
        detail = f"only in {a_name}: {only_a}, only in {b_name}: {only_b}" if (only_a or only_b) else "same classes, different order"
        raise ModelCardError(
            f"{a_name} and {b_name} have different class lists ({detail}); "
            f"{a_name}={a.class_names} {b_name}={b.class_names}"
        )
