"""The one onnxruntime yardstick: the harness and what it reads from an ONNX graph."""
