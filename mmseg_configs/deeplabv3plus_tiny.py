# CPU-sized DeepLabV3+: ResNet-18-D8 at 1/4 width, 32-channel ASPP with dilations scaled to the 8x16 feature map
# of a 64x128 input (1, 12, 24, 36 would sample only padding there), 8-channel low-level branch, no auxiliary head.
_base_ = ['./_base_/models/deeplabv3plus_r50-d8.py']
model = dict(
    backbone=dict(depth=18, base_channels=16, stem_channels=16),
    decode_head=dict(
        in_channels=128, channels=32, dilations=(1, 2, 4, 6), c1_in_channels=16, c1_channels=8,
        dropout_ratio=0.0),
    auxiliary_head=None)
