#!/usr/bin/env python3
"""Independent numpy figures for `lora-dist analyze` and its PNG writer (tests only).

  analysis_reference.py analyze BASE ADAPTER1 [ADAPTER2]  -> JSON on stdout
      For every adapted matrix: ||dW||_F, the top-r singular values of dW = scale*B@A (np.linalg.svd
      of the full matrix), the energy fractions, ||U^T W V||_F on dW's top-r directions, W's own
      top-r figure, ||W||_F and the amplification; with two adapters, phi(i, j) of A's right- and
      B's left-singular vectors. W comes from the base's GPT-2 Conv1D tensors ([in, out], transposed).
  analysis_reference.py png FILE  -> JSON {width, height, rgb} after checking signature, CRCs and zlib
"""
import json
import struct
import sys
import zlib

import numpy as np


def load(path):
    from safetensors.numpy import load_file
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    return {k: v.astype(np.float64) for k, v in load_file(path).items()}, meta


def base_weight(base, layer, target, d):
    p = f"transformer.h.{layer}." if f"transformer.h.{layer}.attn.c_attn.weight" in base else f"h.{layer}."
    if target in ("q", "k", "v"):
        i = "qkv".index(target)
        w = base[p + "attn.c_attn.weight"][:, i * d:(i + 1) * d]
    else:
        w = base[p + {"o": "attn.c_proj.weight", "mlp_in": "mlp.c_fc.weight", "mlp_out": "mlp.c_proj.weight"}[target]]
    return w.T  # Conv1D [in, out] -> [out, in]


def phi(u1, u2):
    out = []
    for i in range(1, u1.shape[1] + 1):
        out.append([float(np.linalg.norm(u1[:, :i].T @ u2[:, :j], "fro") ** 2 / min(i, j)) for j in range(1, u2.shape[1] + 1)])
    return out


def analyze(base_path, adapter_paths):
    base, _ = load(base_path)
    adapters = []
    for p in adapter_paths:
        t, meta = load(p)
        cfg = json.loads(meta["lora"])
        bcfg = json.loads(meta["base"])["config"]
        r = cfg["rank"]
        scale = cfg["alpha"] / (np.sqrt(r) if cfg.get("rsLoRA") else r)
        adapters.append((t, cfg, bcfg, scale))
    deltas = []
    for k, (t, cfg, bcfg, scale) in enumerate(adapters):
        r = cfg["rank"]
        d = bcfg["nEmbd"]
        for layer in range(bcfg["nLayer"]):
            for target in cfg["targets"]:
                a, b = t[f"lora.h.{layer}.{target}.A"], t[f"lora.h.{layer}.{target}.B"]
                w = base_weight(base, layer, target, d)
                dw = scale * b @ a
                u, s, vt = np.linalg.svd(dw)
                sr = s[:r]
                e = np.cumsum(sr ** 2) / np.sum(sr ** 2)
                proj = np.linalg.norm(u[:, :r].T @ w @ vt[:r].T, "fro")
                own = np.sqrt(np.sum(np.linalg.svd(w, compute_uv=False)[:r] ** 2))
                deltas.append({"adapter": k, "layer": layer, "target": target, "figures": {
                    "deltaNorm": float(np.linalg.norm(dw, "fro")), "singularValues": [float(x) for x in sr],
                    "energy": [float(x) for x in e], "weightNorm": float(np.linalg.norm(w, "fro")),
                    "projectionOnDelta": float(proj), "projectionOnOwnTop": float(own),
                    "amplification": float(np.linalg.norm(dw, "fro") / proj)}})
    sims = []
    if len(adapters) == 2:
        (t1, c1, b1, _), (t2, c2, _, _) = adapters
        for layer in range(b1["nLayer"]):
            for target in c1["targets"]:
                if target not in c2["targets"]:
                    continue
                k = f"lora.h.{layer}.{target}"
                va = [np.linalg.svd(t[k + ".A"], full_matrices=False)[2].T for t in (t1, t2)]
                ub = [np.linalg.svd(t[k + ".B"], full_matrices=False)[0] for t in (t1, t2)]
                sims.append({"layer": layer, "target": target, "matrix": "A", "phi": phi(*va)})
                sims.append({"layer": layer, "target": target, "matrix": "B", "phi": phi(*ub)})
    return {"deltaW": deltas, "similarity": sims}


def png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        n, = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind}"
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, color, interlace) == (8, 2, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rgb = []
    for y in range(height):
        assert raw[y * stride] == 0, "unexpected filter"
        rgb += list(raw[y * stride + 1:(y + 1) * stride])
    return {"width": width, "height": height, "rgb": rgb}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "analyze":
        print(json.dumps(analyze(sys.argv[2], sys.argv[3:])))
    elif mode == "png":
        print(json.dumps(png(sys.argv[2])))
    else:
        sys.exit(f"unknown mode {mode}")
