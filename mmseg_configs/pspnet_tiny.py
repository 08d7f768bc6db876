# CPU-sized PSPNet: a ResNet-18-D8 at 1/4 width (stages of 16/32/64/128 channels), a 32-channel PPM head,
# no auxiliary head. Meant for 64x128 synthetic images (feature map 8x16).
_base_ = ['./_base_/models/pspnet_r50-d8.py']
model = dict(
    backbone=dict(depth=18, base_channels=16, stem_channels=16),
    decode_head=dict(in_channels=128, channels=32, dropout_ratio=0.0),
    auxiliary_head=None)
