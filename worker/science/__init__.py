"""Metric science: evaluation on human judgements (BAPPS 2AFC/JND), training the linear heads,
feature analysis, ONNX export and HDR (OpenEXR) input. Engine commands live in `worker.science.cli`."""
