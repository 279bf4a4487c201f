"""Training: prepared datasets of talking-head video (lip crops, landmarks, aligned audio) and the training loop."""
