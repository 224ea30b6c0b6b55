"""FLOPs and HBM bytes of an XLA program, with loops counted as many times as they run.

XLA's own `Compiled.cost_analysis()` visits each computation once, so the body of a `while` loop (every
`lax.scan` over layers, every micro-batch or attention-block loop, the decode loop) is counted for one
iteration only: for a 28-layer scanned model it reports about 1/28 of the FLOPs. This module reads HLO
text — `lowered.as_text(dialect="hlo")` before optimisation, or `compiled.as_text()` after — finds each
loop's trip count, and sums over the call graph from the entry computation. Count FLOPs on the program
before optimisation (global, with dots that name their batch dimensions: XLA:TPU rewrites batched dots
into dilated convolutions whose windows are mostly padding, which this module would overcount) and HBM
bytes on the optimised per-device program (its fusions decide the traffic):

- FLOPs: `dot` (2 x output elements x contracted size) and `convolution` (TPU lowers dots to
  convolutions: 2 x output elements x input features x window) wherever they sit, including inside
  fusions. Elementwise work is ignored (it is bandwidth, not FLOPs, on every accelerator we target).
  Custom calls (Pallas kernels) are opaque and counted as 0 FLOPs; `opaque_custom_calls` lists them.
- bytes: for every top-level instruction of a non-fused computation (fusions, copies, collectives,
  dots ...), its operand and output bytes — the HBM traffic model of XLA's cost analysis. A fusion that
  only slices (dynamic-slice) or updates in place (dynamic-update-slice) a large operand is charged the
  slice, not the whole buffer, as XLA does for those ops; likewise a gather is charged the rows it reads
  and a scatter the rows it writes.
- trip counts: the `known_trip_count` XLA records when it has one; otherwise the loop condition's
  `counter < constant` comparison, with the counter's initial value read from the loop's input tuple.
  A loop that can also exit early (the sampler's decode loop: "step < max_new_tokens and not all
  done") is counted at that bound, i.e. as if every row ran to the length cap. A condition without such
  a comparison is counted once and listed in `unknown_loops`.
"""
from __future__ import annotations

import dataclasses
import math
import re

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
                "s64": 8, "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
                "f8e5m2fnuz": 1, "bf16": 2, "f16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "token": 0}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+)(?: \((.*)\) -> (.*))? \{\s*$")
_INSTR = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.*)$")
_FREE = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "add-dependency", "domain",
         "get-dimension-size", "copy-done", "slice-done", "all-gather-done", "all-reduce-done",
         "collective-permute-done", "async-done", "send-done", "recv-done"}

# custom calls that move or relabel data (no arithmetic): not reported as opaque
_LAYOUT_CALLS = {"ConcatBitcast", "AllocateBuffer", "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
                 "MoveToHost", "MoveToDevice", "LayoutConstraint", "annotate_device_placement"}


@dataclasses.dataclass
class HloCost:
    flops: float
    bytes_accessed: float
    loops: list[tuple[str, int]]  # (while instruction, trip count used), outermost first
    unknown_loops: list[str]
    opaque_custom_calls: list[str]


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape string (arrays and tuples of arrays; layouts ignored)."""
    return sum(_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _ARRAY.findall(_strip_layouts(shape)))


def _dims(shape: str) -> list[int]:
    found = _ARRAY.findall(_strip_layouts(shape))
    return [int(d) for d in found[0][1].split(",") if d] if found else []


def _strip_layouts(shape: str) -> str:
    return re.sub(r"\{[^{}]*\}", "", shape)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets/braces/parentheses."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur and "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _parse_instr(line: str) -> _Instr | None:
    m = _INSTR.match(line)
    if not m:
        return None
    root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
    if rest.startswith("("):  # tuple shape: up to the matching parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = rest[: i + 1], rest[i + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
        while shape.count("{") > shape.count("}"):  # a layout with spaces
            more, _, rest = rest.partition(" ")
            shape += " " + more
    m2 = re.match(r"([\w\-]+)\((.*)$", rest)
    if not m2:
        return None
    opcode, tail = m2.group(1), m2.group(2)
    depth, i = 1, 0
    for i, ch in enumerate(tail):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            break
    args, attrs = tail[:i], tail[i + 1:]
    operands = [a.split()[-1].lstrip("%") for a in _split_top(args) if a.split()]
    return _Instr(name, shape, opcode, operands, attrs, root)


def parse_module(text: str) -> tuple[dict[str, list[_Instr]], dict[str, dict[str, str]], str]:
    """(computation name -> instructions, computation name -> {value name -> shape}, entry name)."""
    comps: dict[str, list[_Instr]] = {}
    shapes: dict[str, dict[str, str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = m.group(2)
                if m.group(1):
                    entry = current
                comps[current], shapes[current] = [], {}
                for param in _split_top(m.group(3) or ""):
                    pname, _, pshape = param.partition(":")
                    shapes[current][pname.strip().lstrip("%")] = pshape.strip()
            continue
        if line.startswith("}"):
            current = None
            continue
        ins = _parse_instr(line)
        if ins is not None:
            comps[current].append(ins)
            shapes[current][ins.name] = ins.shape
    if not entry:
        raise ValueError("hlo_cost: no ENTRY computation in the HLO text (pass compiled.as_text())")
    return comps, shapes, entry


def _attr(attrs: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=%?([\w.\-]+)", attrs)
    return m.group(1) if m else None


def _int_list(attrs: str, key: str) -> list[int]:
    m = re.search(rf"\b{key}=\{{([0-9,]*)\}}", attrs)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def _dot_flops(ins: _Instr, table: dict[str, str]) -> float:
    out = math.prod(_dims(ins.shape))
    lhs = _dims(table.get(ins.operands[0], ""))
    contracted = math.prod(lhs[d] for d in _int_list(ins.attrs, "lhs_contracting_dims") if d < len(lhs))
    return 2.0 * out * contracted


def _conv_flops(ins: _Instr, table: dict[str, str]) -> float:
    out = math.prod(_dims(ins.shape))
    rhs = _dims(table.get(ins.operands[1], ""))
    m = re.search(r"dim_labels=[^_]*_([0-9a-z]+)->", ins.attrs)
    if not m or len(m.group(1)) != len(rhs):
        return 0.0
    labels = m.group(1)
    per_output = math.prod(rhs[i] for i, c in enumerate(labels) if c != "o")
    groups = int(_attr(ins.attrs, "feature_group_count") or 1)
    return 2.0 * out * per_output / groups


def _trip_count(ins: _Instr, comps, instrs_by_name: dict[str, _Instr]) -> int | None:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
    if known:
        return int(known.group(1))
    cond = comps.get(_attr(ins.attrs, "condition") or "", [])
    by_name = {c.name: c for c in cond}
    for c in cond:
        if c.opcode != "compare" or "direction=LT" not in c.attrs or len(c.operands) != 2:
            continue
        a, b = (by_name.get(o) for o in c.operands)
        if a is None or b is None or a.opcode != "get-tuple-element" or b.opcode != "constant":
            continue
        value = re.match(r"(-?\d+)$", b.operands[0]) if b.operands else None
        bound = int(value.group(1)) if value else None
        if bound is None:
            continue
        index = int(_attr(a.attrs, "index") or 0)
        init = 0
        source = instrs_by_name.get(ins.operands[0]) if ins.operands else None
        if source is not None and source.opcode == "tuple" and index < len(source.operands):
            init_ins = instrs_by_name.get(source.operands[index])
            if init_ins is not None and init_ins.opcode == "constant" and init_ins.operands:
                m = re.match(r"(-?\d+)", init_ins.operands[0])
                init = int(m.group(1)) if m else 0
        return max(bound - init, 0)
    return None


def _fusion_bytes(ins: _Instr, fused: list[_Instr], table: dict[str, str], fused_table: dict[str, str]) -> float:
    """Operand + output bytes of a fusion, charging sliced / updated-in-place operands only their slice."""
    params = {}  # fused parameter name -> operand index
    for f in fused:
        if f.opcode == "parameter":
            m = re.match(r"(\d+)", f.operands[0]) if f.operands else None
            if m:
                params[f.name] = int(m.group(1))
    uses: dict[str, list[_Instr]] = {}
    for f in fused:
        for o in f.operands:
            uses.setdefault(o, []).append(f)
    total = shape_bytes(ins.shape)
    for pname, idx in params.items():
        if idx >= len(ins.operands):
            continue
        full = shape_bytes(table.get(ins.operands[idx], ""))
        users = uses.get(pname, [])
        if users and all(u.opcode in ("dynamic-slice", "gather") and u.operands[0] == pname for u in users):
            total += sum(shape_bytes(u.shape) for u in users)  # only the slices / gathered rows are read
        elif users and all(u.opcode in ("dynamic-slice", "dynamic-update-slice") and u.operands[0] == pname
                           for u in users) and any(u.opcode == "dynamic-update-slice" for u in users):
            # updated in place (an accumulator: read a slice, write a slice): the output already counted the
            # whole buffer, so charge the slices read and the updates written instead
            read = sum(shape_bytes(u.shape) for u in users if u.opcode == "dynamic-slice")
            update = sum(shape_bytes(fused_table.get(u.operands[1], "")) for u in users
                         if u.opcode == "dynamic-update-slice")
            total += read + 2 * update - full
        else:
            total += full
    return max(total, 0.0)


def hlo_cost(text: str, breakdown: dict | None = None) -> HloCost:
    """FLOPs and bytes of the program in `text`, loops multiplied out. `breakdown`, if given, receives
    bytes per (computation, instruction) with multiplicities — to see where the traffic is."""
    comps, shapes, entry = parse_module(text)
    flops_of: dict[str, float] = {}
    loops: list[tuple[str, int]] = []
    unknown: list[str] = []
    opaque: list[str] = []

    def own_flops(comp: str) -> float:
        """FLOPs of dots/convolutions in `comp` and the fusions it calls (not loops: those are multiplied)."""
        if comp in flops_of:
            return flops_of[comp]
        total = 0.0
        for ins in comps.get(comp, []):
            if ins.opcode == "dot":
                total += _dot_flops(ins, shapes[comp])
            elif ins.opcode == "convolution":
                total += _conv_flops(ins, shapes[comp])
            elif ins.opcode == "fusion":
                total += own_flops(_attr(ins.attrs, "calls") or "")
        flops_of[comp] = total
        return total

    def walk(comp: str, mult: float) -> tuple[float, float]:
        flops, nbytes = 0.0, 0.0
        before, last = 0.0, ""
        instrs = comps.get(comp, [])
        by_name = {i.name: i for i in instrs}
        for ins in instrs:
            if breakdown is not None and nbytes != before and not last.endswith((":while", ":call", ":conditional")):
                breakdown[(comp, last)] = breakdown.get((comp, last), 0.0) + nbytes - before
            before, last = nbytes, ins.name + ":" + ins.opcode
            op = ins.opcode
            if op == "dot":
                flops += mult * _dot_flops(ins, shapes[comp])
            elif op == "convolution":
                flops += mult * _conv_flops(ins, shapes[comp])
            elif op == "fusion":
                callee = _attr(ins.attrs, "calls") or ""
                flops += mult * own_flops(callee)
                nbytes += mult * _fusion_bytes(ins, comps.get(callee, []), shapes[comp], shapes.get(callee, {}))
                continue
            elif op == "while":
                trips = _trip_count(ins, comps, by_name)
                if trips is None:
                    unknown.append(ins.name)
                    trips = 1
                loops.append((ins.name, trips))
                f, b = walk(_attr(ins.attrs, "body") or "", mult * trips)
                flops, nbytes = flops + f, nbytes + b
                continue
            elif op == "call":
                f, b = walk(_attr(ins.attrs, "to_apply") or "", mult)
                flops, nbytes = flops + f, nbytes + b
                continue
            elif op == "conditional":
                m = re.search(r"branch_computations=\{([^}]*)\}", ins.attrs)
                branches = [b.strip().lstrip("%") for b in m.group(1).split(",")] if m else []
                costs = [walk(b, mult) for b in branches]
                if costs:
                    f, b = max(costs)
                    flops, nbytes = flops + f, nbytes + b
                continue
            elif op == "custom-call":
                target = (re.search(r'custom_call_target="([^"]+)"', ins.attrs) or [None, ins.name])[1]
                if target not in _LAYOUT_CALLS:
                    opaque.append(target)
            if op in _FREE:
                continue
            if op == "dynamic-update-slice":
                nbytes += mult * 2 * shape_bytes(shapes[comp].get(ins.operands[1], ""))
            elif op == "dynamic-slice":
                nbytes += mult * 2 * shape_bytes(ins.shape)
            elif op == "gather":  # the gathered rows and the indices, not the whole operand
                nbytes += mult * (2 * shape_bytes(ins.shape) + shape_bytes(shapes[comp].get(ins.operands[1], "")))
            elif op == "scatter":  # in place: the updates (read, written) and the indices
                nbytes += mult * (2 * shape_bytes(shapes[comp].get(ins.operands[-1], ""))
                                  + shape_bytes(shapes[comp].get(ins.operands[1], "")))
            else:
                nbytes += mult * (shape_bytes(ins.shape) + sum(shape_bytes(shapes[comp].get(o, ""))
                                                               for o in ins.operands))
        if breakdown is not None and instrs and nbytes != before and not last.endswith(
                (":while", ":call", ":conditional")):
            breakdown[(comp, last)] = breakdown.get((comp, last), 0.0) + nbytes - before
        return flops, nbytes

    flops, nbytes = walk(entry, 1.0)
    return HloCost(flops, nbytes, loops, unknown, opaque)
