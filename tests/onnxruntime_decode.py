"""Decodes along a given prefix with onnxruntime, as the model contract says (models/README.md):
encoder once; per slot: decoder(state, prev_value) -> (query, next_state), logits = keys @ query.
Also runs onnx.checker on both graphs. Reads a JSON job on stdin, prints the logits as JSON."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

job = json.load(sys.stdin)
d = job["dir"]
manifest = json.load(open(f"{d}/manifest.json"))
for spec in (manifest["encoder"], manifest["decoder"]):
    onnx.checker.check_model(onnx.load(f"{d}/{spec['file']}"), full_check=True)

enc = ort.InferenceSession(f"{d}/{manifest['encoder']['file']}")
dec = ort.InferenceSession(f"{d}/{manifest['decoder']['file']}")
n = len(job["candidate_dense"])
feeds = {
    "context_dense": np.array([job["context_dense"]], np.float32),
    "context_categorical": np.array([job["context_ids"]], np.int64),
    "candidate_dense": np.array(job["candidate_dense"], np.float32).reshape(n, -1),
    "candidate_categorical": np.array(job["candidate_ids"], np.int64).reshape(n, -1),
    "upstream": np.array(job["upstream"], np.float32).reshape(n, -1),
}
names = manifest["encoder"]["inputs"]
outs = dict(zip(["keys", "values", "state"], enc.run(
    [manifest["encoder"]["outputs"][r] for r in ("keys", "values", "state")],
    {names[role]: value for role, value in feeds.items() if role in names})))
state, prev = outs["state"], np.zeros_like(outs["state"])
logits = []
for chosen in job["prefix"]:
    query, state = dec.run(
        [manifest["decoder"]["outputs"][r] for r in ("query", "next_state")],
        {manifest["decoder"]["inputs"]["state"]: state, manifest["decoder"]["inputs"]["prev_value"]: prev})
    logits.append((outs["keys"] @ query[0]).tolist())
    prev = outs["values"][chosen:chosen + 1]
json.dump(logits, sys.stdout)
