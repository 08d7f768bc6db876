# CPU-sized UPerNet: ResNet-18 at 1/4 width (16/32/64/128 channels at strides 4/8/16/32), a 32-channel UPer head,
# no auxiliary head.
_base_ = ['./_base_/models/upernet_r50.py']
model = dict(
    backbone=dict(depth=18, base_channels=16, stem_channels=16),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, dropout_ratio=0.0),
    auxiliary_head=None)
