"""The ML path: one model spec drives features, labels, training, ONNX export and live scoring."""
