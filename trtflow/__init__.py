"""trtflow: PyTorch models to validated, benchmarked ONNX Runtime and TensorRT engines.

The package must stay importable by the TensorRT-side Python (which may be 3.9 and has no torch
or onnx): heavy dependencies are imported inside the functions that need them.
"""
__version__ = "0.1.0"
