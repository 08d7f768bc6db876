# DeepLabV3+ with a dilated ResNet-50-D8 (mmseg's `deeplabv3plus_r50-d8`), BN, no download.
_base_ = ['./resnet50-d8.py']
model = dict(
    decode_head=dict(
        type='DepthwiseSeparableASPPHead',
        in_channels=2048,
        in_index=3,
        dilations=(1, 12, 24, 36),
        c1_in_channels=256,
        c1_channels=48))
