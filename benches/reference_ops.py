"""Runs the reference's step timer unchanged and counts the operators of one decode step per batch.

The count is of the second step of each `generate` call, which the timer leaves out of its median
as warm-up, so the timing is untouched: every ATen operator call PyTorch's profiler records in
`Dia._decoder_step` (nested calls included, as our bench counts them through libtorch's
record-function callbacks). Prints the timer's output, then `{"ops_per_step": {batch: n}}`.

Usage: python reference_ops.py REFERENCE_STEP_PY DIA_SRC CONFIG_JSON [the timer's options]
"""
import json
import runpy
import sys
import types

timer, args = sys.argv[1], sys.argv[2:]
sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # as the timer does
sys.path.insert(0, args[0])
from dia.model import Dia  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

FUNCTION_SCOPE = 0  # at::RecordScope::FUNCTION: operator calls, not user ranges
ops_per_step = {}
current = {"batch": 0, "step": 0}
generate, decoder_step = Dia.generate, Dia._decoder_step


def counted_generate(self, text, *a, **k):
    current.update(batch=len(text) if isinstance(text, list) else 1, step=0)
    return generate(self, text, *a, **k)


def counted_decoder_step(self, *a, **k):
    current["step"] += 1
    if current["step"] != 2:
        return decoder_step(self, *a, **k)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = decoder_step(self, *a, **k)
    ops_per_step[current["batch"]] = sum(1 for e in prof.events() if e.scope == FUNCTION_SCOPE)
    return out


Dia.generate, Dia._decoder_step = counted_generate, counted_decoder_step
sys.argv = [timer, *args]
runpy.run_path(timer, run_name="__main__")
print(json.dumps({"ops_per_step": ops_per_step}))
