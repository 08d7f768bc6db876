# UPerNet with a ResNet-50 (output stride 32, FPN-style head; mmseg's `upernet_r50`), BN, no download.
_base_ = ['./resnet50-d8.py']
model = dict(
    backbone=dict(dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2)),
    decode_head=dict(type='UPerHead', in_channels=[256, 512, 1024, 2048], in_index=[0, 1, 2, 3],
                     pool_scales=(1, 2, 3, 6)))
