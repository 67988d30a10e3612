"""Deployment of a Z-Reward model (docs/design.md §9): ONNX export, runtimes, serving artefacts.

Modules (each imported on use; optional dependencies are imported inside the functions that need them):

* :mod:`.onnx` — ``export_onnx``: a validated, self-describing ONNX folder (fp32 or fp16), ``zreward
  export onnx``, through optimum-onnx (:mod:`.optimum_config`, transformers 4.57) or torch.onnx.
* :mod:`.ort` — ``OrtScorer``: the ``onnx`` backend of ``load_scorer`` (ONNX Runtime, CPU or CUDA with IO
  binding).
* :mod:`.tensorrt` — engine build with one optimization profile per text-length bucket, engine cache,
  ``TensorRTScorer``: the ``tensorrt`` backend, ``zreward export tensorrt``.
* :mod:`.triton_repo` — Triton Inference Server model repository writer, ``zreward export triton-repo``.

docs/export.md is the user guide.
"""
