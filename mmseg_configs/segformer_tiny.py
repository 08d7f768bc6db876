# CPU-sized SegFormer: a one-block-per-stage MiT with 16/32/64/128 channels and a 32-channel MLP head.
_base_ = ['./_base_/models/segformer_mit-b0.py']
model = dict(
    backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, dropout_ratio=0.0))
