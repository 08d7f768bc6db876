"""Segmentation models: mmseg configs -> segmentors (builder), Lightning training (lightning_module, train),
DP-SGD (dp) and the outputs released to attackers (release). Submodules are imported explicitly: mmseg is slow
to import and not every caller needs it."""
