# PSPNet with a dilated ResNet-50-D8 (mmseg's `pspnet_r50-d8`), BN, no download.
_base_ = ['./resnet50-d8.py']
model = dict(decode_head=dict(type='PSPHead', in_channels=2048, in_index=3, pool_scales=(1, 2, 3, 6)))
