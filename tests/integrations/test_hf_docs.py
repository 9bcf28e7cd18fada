"""docs/huggingface.md's example runs as written, and TensorBoard receives the chtorch scalars."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tensorboard")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="transformers.Trainer needs accelerate"
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "huggingface.md"


def test_huggingface_doc_example_runs_and_tensorboard_gets_chtorch_scalars() -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/huggingface.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    callback, sp, out = namespace["callback"], namespace["sp"], namespace["out"]
    assert callback.sparsity.update_count >= 2 and abs(callback.sparsity.density() - 0.1) < 0.01
    assert len(sp.layer_names) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 blocks
    events = list(out.glob("runs/**/events.out.tfevents.*"))
    assert events, "TensorBoardCallback wrote no event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/chtorch/density", "train/chtorch/itop", "train/chtorch/active_neurons", "train/chtorch/regrown"):
        assert tag in tags, (tag, sorted(tags))
    density = {e.step: e.value for e in acc.Scalars("train/chtorch/density")}
    # logged at every logging step (2, 4, 6, 8), the first one included: nothing arrives one log late
    assert sorted(density) == [2, 4, 6, 8]
    assert density[8] == pytest.approx(callback.sparsity.density(), abs=1e-6)
