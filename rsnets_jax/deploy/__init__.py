"""Deployment: a trained RS-Net as files that run without rsnets_jax, and what runs them.

`fold` (BatchNorm folded into the convolutions of one resolution), `formats` (the export
formats, each with its writer, file suffix, runtime and accuracy: JAX artifact, ONNX, int8 ONNX),
`onnx_graph` (the jaxpr-to-ONNX translation) and `int8` (onnxruntime's static quantization),
`export` (the files and manifest.json), `manifest` (reading it back, a resolution's function, the
resolution that fits a budget), `profile` (measured latency) and `predict` (classify photos). This
room imports `models`, `data` and `checkpoints`, never `train`.
"""
